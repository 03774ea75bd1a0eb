"""kernels.runtime.cache: cached code is recompiled when a file it was compiled from changes,
not only when the file of the cached function itself does."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fastrnn.kernels.runtime import cache as _cache

ROOT = Path(__file__).resolve().parents[2]

CALLER = """
from numba import njit

from callee import value


@njit(cache=True)
def caller():
    return value() + 1
"""


def _run(tree, cache_dir, register):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tree)!r})
        from fastrnn.kernels.runtime import cache as _cache
        if {register!r}:
            _cache.add_tree({str(tree)!r}, depends=())
        import caller
        print(caller.caller(), sum(caller.caller.stats.cache_hits.values()))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    value, hits = done.stdout.split()
    return int(value), int(hits)


def test_a_changed_callee_recompiles_its_cached_caller(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "caller.py").write_text(CALLER)
    (tree / "callee.py").write_text("from numba import njit\n\n\n@njit\ndef value():\n    return 1\n")
    cache = tmp_path / "cache"
    assert _run(tree, cache, True) == (2, 0)    # compiled, cached
    assert _run(tree, cache, True) == (2, 1)    # loaded
    (tree / "callee.py").write_text("from numba import njit\n\n\n@njit\ndef value():\n    return 5\n")
    assert _run(tree, cache, True) == (6, 0)    # the callee changed: compiled again
    assert _run(tree, cache, True) == (6, 1)


def test_the_stamp_covers_the_kernels_and_for_the_ops_their_folder_too(tmp_path):
    assert _cache.INSTALLED  # on the Numba this was tested on (0.68.1)
    kernels = Path(_cache.__file__).parent.parent  # kernels/runtime/cache.py
    core = _cache.stamp_for(str(kernels / "gru" / "cpu.py"))
    assert core == (_cache.tree_hash(str(kernels)),)
    assert _cache.stamp_for(str(tmp_path / "elsewhere.py")) is None
    import fastrnn.ops._capi as capi  # registers fastrnn/ops

    ops = Path(capi.__file__).parent
    assert _cache.stamp_for(str(ops / "native" / "_shell.py")) == (core[0], _cache.tree_hash(str(ops)))
    # The hash follows the contents of every file of the tree.
    tree = tmp_path / "t"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("x = 1\n")
    (tree / "sub" / "b.py").write_text("y = 1\n")
    before = _cache.tree_hash(str(tree))
    (tree / "sub" / "b.py").write_text("y = 2\n")
    assert _cache.tree_hash(str(tree)) != before
