"""kernels/ imports in layers: no module imports, at top level or inside a function,
a module that imports it back (directly or through others)."""

import ast
import os

import fastrnn.kernels

ROOT = os.path.dirname(fastrnn.kernels.__file__)


def _module_names():
    names = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                names[rel.removesuffix(".__init__") if rel != "__init__" else ""] = (
                    os.path.join(folder, f))
    return names


def _imports(name, path, known):
    """The kernels modules that module `name` imports (relative imports only)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package.split(".") if package else []
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
        candidates = [target] if node.module else []
        candidates += [".".join(filter(None, [target, a.name])) for a in node.names]
        found |= {c for c in candidates if c in known and c != name}
    return found


def test_the_kernels_import_graph_has_no_cycle():
    names = _module_names()
    graph = {n: _imports(n, p, names) for n, p in names.items()}
    state = {}

    def visit(n, path):
        if state.get(n) == "done":
            return
        assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
        state[n] = "open"
        for m in sorted(graph[n]):
            visit(m, path + [n])
        state[n] = "done"

    for n in sorted(graph):
        visit(n, [])
    # The helpers the issue named: validation below the `saved` plumbing below dispatch.
    assert "entry.dispatch" not in graph["checks.validate"]
    assert "entry.dispatch" not in graph["entry.saved"]
    assert graph["checks.validate"] == set()


# kernels/' folders from the bottom up: a module imports from its own folder or the
# folders before it, never from one after it.
LAYERS = ["runtime", "checks", "gpu", "blas", "batch", "fastmath", "scan",
          "gru", "lstm", "mingru", "simple_rnn", "entry", ""]


def test_the_kernels_folders_depend_only_downward():
    names = _module_names()
    assert {n.partition(".")[0] for n in names} == set(LAYERS)  # every folder has a layer
    for name, path in names.items():
        level = LAYERS.index(name.partition(".")[0])
        for target in _imports(name, path, names):
            assert LAYERS.index(target.partition(".")[0]) <= level, (
                f"kernels.{name} imports kernels.{target}, a layer above it")
