"""The README and docs/ keep their promises: the commands they give run, the README's
Python examples run as written, and every file and link they name exists."""

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# The two commands a fresh machine runs, exactly as the README gives them.
BENCH_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[bench]" '
                 '&& python -m bench')
TEST_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" '
                '&& pytest -q -n auto --maxprocesses 4 --dist loadscope')


def _text(page):
    """The page without HTML comments (placeholders, notes to editors)."""
    return re.sub(r"<!--.*?-->", "", page.read_text(), flags=re.S)


def _blocks(page, lang):
    return re.findall(rf"^```{lang}\n(.*?)^```", _text(page), flags=re.S | re.M)


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def _run(args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, **kwargs)


def test_the_two_commands_are_given_and_their_extras_exist():
    text = README.read_text()
    assert BENCH_COMMAND in text
    assert TEST_COMMAND in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    names = {extra: {re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0].lower() for dep in deps}
             for extra, deps in extras.items()}
    # python -m bench runs pytest-benchmark under pytest; the plot needs matplotlib.
    assert {"tensorflow", "keras", "pytest", "pytest-benchmark", "matplotlib"} <= names["bench"]
    assert {"tensorflow", "keras", "pytest"} <= names["test"]
    for extra in re.findall(r'pip install -e "\.\[([\w-]+)\]"', "\n".join(_text(p) for p in PAGES)):
        assert extra in extras, f"pip install -e \".[{extra}]\": no such extra in pyproject.toml"
    # `pytest -q` from the root finds the tests.
    testpaths = project["tool"]["pytest"]["ini_options"]["testpaths"]
    assert all((ROOT / path).is_dir() for path in testpaths)


def _flags(command):
    """The --options used with `python -m <command>` anywhere in the README or docs."""
    flags = set()
    for page in PAGES:
        for line in _text(page).splitlines():
            for use in re.findall(rf"python -m {command}\b([^`|\n]*)", line):
                # options after the script (`train.py --epochs 10`) are the script's
                use = re.split(r"\S+\.py\b|\bscript\b|(?<!\S)-m(?!\S)", use)[0]
                flags.update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", use))
    return flags


@pytest.mark.parametrize("command", ["bench", "fastrnn"])
def test_help_runs_and_knows_every_option_the_docs_use(command):
    result = _run(["-m", command, "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()
    used = _flags(command)
    assert command == "fastrnn" or {"--full", "--suite", "--device"} <= used
    unknown = sorted(flag for flag in used if flag not in result.stdout)
    assert not unknown, f"python -m {command} --help does not know {unknown}"


def test_readme_python_examples_run(tmp_path):
    # Each block runs in a fresh namespace, in one process (TensorFlow starts once), from
    # a folder outside the checkout, as a user's notebook would run it. A block that
    # patches Keras is unpatched before the next one.
    blocks = _blocks(README, "python")
    assert len(blocks) >= 3, "the README shows a layer, the patch and the kernels"
    script = textwrap.dedent("""
        import sys
        blocks = {blocks!r}
        for number, source in enumerate(blocks, 1):
            try:
                exec(compile(source, f"README.md python block {{number}}", "exec"), {{}})
            except BaseException:
                print(f"README.md python block {{number}} failed:\\n{{source}}", file=sys.stderr)
                raise
            if "fastrnn" in sys.modules and "fastrnn._patch" in sys.modules:
                sys.modules["fastrnn"].unpatch()
        print("ran", len(blocks), "blocks")
    """).format(blocks=blocks)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"ran {len(blocks)} blocks" in result.stdout


def _slug(heading):
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"^```.*?^```", "", _text(page), flags=re.S | re.M)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: broken links {broken}"


# A path in backticks: folders and files of the checkout, e.g. `kernels/runtime/abi.py`, `bench/`.
_PATH = re.compile(r"`((?:\.\./)?[\w-]+/(?:[\w.-]+/)*[\w.-]*|[\w-]+\.(?:py|md|toml|png|json))`")


def _checkout_file_names():
    """Every file name (and folder name, with a slash) in the checkout, outside hidden
    folders (.git, .venv) and caches."""
    names = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "__pycache__"]
        names.update(files)
        names.update(d + "/" for d in subfolders)
    return names


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_files_named_exist(page):
    missing = []
    names = None
    for name in _PATH.findall(_text(page)):
        if (ROOT / name).exists() or (page.parent / name).exists():
            continue
        if not name.startswith("../") and "/" not in name.rstrip("/"):
            # a bare file name (`cpu.py`) is found anywhere in the checkout
            names = _checkout_file_names() if names is None else names
            if name in names:
                continue
        missing.append(name)
    assert not missing, f"{page.name} names files that do not exist: {missing}"


def test_every_fastrnn_environment_variable_is_documented():
    sources = [p for folder in ("fastrnn", "kernels", "tests", "bench")
               for p in (ROOT / folder).rglob("*.py")]
    used = set()
    for source in sources:
        used.update(re.findall(r"\bFASTRNN_[A-Z0-9_]+", source.read_text()))
    api = (ROOT / "docs" / "api.md").read_text()
    undocumented = sorted(name for name in used if f"`{name}`" not in api)
    assert not undocumented, f"docs/api.md does not document {undocumented}"
