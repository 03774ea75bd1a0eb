"""Every CUDA kernel compiled for real with numba.cuda.compile_ptx, for sm_80 and sm_90.

The simulator runs kernels as Python and accepts code that Numba's CUDA
compiler would reject (or would type differently); this compiles each kernel
for both float types with the argument types the launchers pass. It runs in
a subprocess because the simulator, once on, replaces numba.cuda for the
whole process. No GPU is needed, only NVVM (numba-cuda[cu13] in the test extra).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[test]')")

MODULES = ["simple_rnn", "gru", "lstm", "mingru", "scan"]
CAPABILITIES = [(8, 0), (9, 0)]

SCRIPT = """
import importlib, json, sys
from fastrnn.kernels.gpu import cuda as _cuda
result = {}
for module in %r:
    kernels = importlib.import_module("fastrnn.kernels." + module + ".cuda").KERNELS
    for cc in %r:
        for name, ptx in _cuda.compile_ptx(kernels, cc).items():
            result[module + "." + name + "@sm_%%d%%d" %% cc] = {
                "f64": ptx.count(".f64"), "target": ".target sm_%%d%%d" %% cc in ptx,
                "entry": ".entry" in ptx}
json.dump(result, sys.stdout)
""" % (MODULES, CAPABILITIES)


def _expected_names():
    import importlib

    names = []
    for module in MODULES:
        specs = importlib.import_module(f"fastrnn.kernels.{module}.cuda").KERNELS.specs
        for name in specs:
            for dtype in ("float32", "float64"):
                for cc in CAPABILITIES:
                    names.append(f"{module}.{name}[{dtype}]@sm_{cc[0]}{cc[1]}")
    return names


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    if proc.returncode != 0:
        if "DynamicLibNotFoundError" in proc.stderr or "NvvmSupportError" in proc.stderr:
            pytest.skip("NVVM/NVRTC not found: install numba-cuda[cu13] (the test extra does)")
        raise AssertionError(f"compile_ptx failed:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", _expected_names())
def test_kernel_compiles_to_ptx(compiled, name):
    assert name in compiled, f"{name} was not compiled"
    info = compiled[name]
    assert info["entry"] and info["target"], info
    if "[float32]" in name:
        # A float64 constant or libm call in a float32 kernel would silently
        # promote its arithmetic to float64, a fraction of float32 speed on GPUs.
        assert info["f64"] == 0, f"{name} has {info['f64']} float64 instructions"
    else:
        assert info["f64"] > 0


def test_nothing_unexpected_compiled(compiled):
    assert sorted(compiled) == sorted(_expected_names())
