"""kernels.runtime.abi: cores called through their table slots, compiled by a helper process.

Each check runs in a fresh interpreter with its own empty Numba cache, so what
it sees compiled or loaded is its own doing.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code, cache_dir, **env):
    """Run code in a fresh interpreter with an empty Numba cache; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), **env})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_helper_compiles_the_next_core_while_this_process_compiles_its_own(tmp_path):
    # An unbound slot: the call runs nothing and reports it (the callers' errors).
    # Then the forward core compiles here; the backward one, asked for aside, is
    # compiled by the helper and loaded here from the cache it filled.
    out = run_python("""
        import numpy as np
        from numba import njit
        from fastrnn.kernels.runtime import abi as _abi
        from fastrnn.kernels.mingru import cpu

        @njit
        def call_unbound(args):
            return cpu._forward_by_name(np.float32, args)

        print("unbound", call_unbound(np.ones(4, np.int64)))
        _abi.ensure("mingru_forward", np.float32, aside=("mingru_backward",))
        _abi.ensure("mingru_backward", np.float32)
        bound = _abi._bound
        print("forward loaded", bound[("mingru_forward", "f32")].cache_hits)
        print("backward loaded", bound[("mingru_backward", "f32")].cache_hits)
        x = np.ones((2, 3, 2), np.float32)
        from fastrnn import kernels
        out, h, saved = kernels.mingru_forward(x, None, np.ones((2, 4), np.float32),
                                               np.zeros(4, np.float32))
        dx = kernels.mingru_backward(saved, np.ones_like(out), h)[0]
        print("finite", bool(np.isfinite(out).all() and np.isfinite(dx).all()))
    """, tmp_path)
    assert out.split("\n")[:4] == ["unbound False", "forward loaded 0", "backward loaded 1",
                                   "finite True"], out


def test_a_core_is_compiled_once_by_whichever_process_claims_it(tmp_path):
    # This process and the helper claim a core before compiling it (an exclusive
    # file in a directory of their own): ensure_all takes the cores the helper has
    # not started (here the forward one, once the helper has started the backward
    # one), waits for the one it has, and the helper skips what this process
    # claimed. The claims' directory is gone afterwards.
    temp = tmp_path / "temp"
    temp.mkdir()
    out = run_python("""
        import os, tempfile, time
        import numpy as np
        from fastrnn.kernels.runtime import abi as _abi
        from fastrnn.kernels.mingru import cpu

        claims = tempfile.mkdtemp()
        print("claims", _abi._claim(claims, "prepare"), _abi._claim(claims, "prepare"))
        _abi.compile_here(["float64", claims, _abi._modules["prepare"] + ":prepare"])
        print("skipped", ("prepare", "f64") not in _abi._bound, os.path.exists(claims))
        _abi._start_aside(["mingru_backward", "mingru_forward"], "f32")
        helper = _abi._aside[("mingru_backward", "f32")]
        deadline = time.time() + 120
        while helper.state.get("mingru_backward") is None and time.time() < deadline:
            time.sleep(0.05)
        _abi.ensure_all(["mingru_forward", "mingru_backward"], np.float32)
        bound = _abi._bound
        print("forward loaded", bound[("mingru_forward", "f32")].cache_hits)
        print("backward loaded", bound[("mingru_backward", "f32")].cache_hits)
        print("helpers left", len(_abi._aside), helper.process.wait(60) is not None)
        print("left behind", os.listdir(tempfile.gettempdir()))
    """, tmp_path, TMPDIR=str(temp))
    assert out.split("\n")[:7] == ["claims True False", "skip prepare", "skipped True False",
                                   "forward loaded 0", "backward loaded 1",
                                   "helpers left 0 True", "left behind []"], out


def test_ensure_all_compiles_the_rest_aside(tmp_path):
    # Cores asked for with no helper running (the op cfuncs came from the cache, so
    # their compile started none): the first one compiled here cold starts a helper
    # for the others (which one compiles the backward core then depends on timing).
    out = run_python("""
        import numpy as np
        from fastrnn.kernels.runtime import abi as _abi
        from fastrnn.kernels.mingru import cpu

        start = _abi._start_aside
        _abi._start_aside = lambda names, suffix: (print("aside", names), start(names, suffix))
        _abi.ensure_all(["mingru_forward", "mingru_backward"], np.float32)
        print("bound", [name for name, _ in _abi.bound()])
    """, tmp_path)
    assert out.split("\n")[:2] == ["aside ['mingru_backward']",
                                   "bound ['mingru_backward', 'mingru_forward']"], out


def test_without_a_helper_everything_compiles_here(tmp_path):
    # Switched off (FASTRNN_COMPILE_ASIDE=0), or a helper that dies at once: the
    # process compiles the core itself and nothing waits.
    out = run_python("""
        import sys
        import numpy as np
        from fastrnn.kernels.runtime import abi as _abi

        print("enabled", _abi.aside_enabled())
        sys.executable = "/bin/false"  # a helper that fails at once
        _abi._start_aside(["prepare"], "f64")
        _abi.ensure("prepare", np.float64)
        print("prepare loaded", _abi._bound[("prepare", "f64")].cache_hits)
        print("helpers left", len(_abi._aside))
    """, tmp_path, FASTRNN_COMPILE_ASIDE="0")
    assert out.split("\n")[:3] == ["enabled False", "prepare loaded 0", "helpers left 0"], out


def test_the_kernels_imported_twice_share_one_core_table():
    # The kernels folder imported under a second name beside fastrnn.kernels (a
    # checkout on sys.path): two copies of _abi, one symbol. Each copy's cores
    # must land in the table the compiled callers read (the second import once
    # replaced it with an empty one, and every call failed). Numba's usual cache.
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from fastrnn import kernels as first
        sys.path.insert(0, {str(ROOT)!r})
        import kernels as second
        assert second.runtime.abi is not first.runtime.abi
        x = np.ones((2, 3, 2), np.float32)
        for k in (first, second, first):
            out, h, saved = k.mingru_forward(x, None, np.ones((2, 4), np.float32),
                                             np.zeros(4, np.float32))
            dx = k.mingru_backward(saved, np.ones_like(out), h)[0]
            assert np.isfinite(out).all() and np.isfinite(dx).all()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
