"""Helpers for the CUDA kernel tests: kernels run under Numba's simulator by default (NumPy arrays, tiny shapes), on a
real GPU with CuPy arrays when FASTRNN_TEST_GPU=1 (see tests/conftest.py)."""

import numpy as np
import pytest
from conftest import GPU_MODE

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[test]')")

if GPU_MODE:
    import cupy

    from fastrnn.kernels import gpu_available

    if not gpu_available():
        raise RuntimeError("FASTRNN_TEST_GPU=1 but no CUDA GPU is usable (CuPy + numba-cuda)")


def to_device(a):
    """NumPy -> the array type the CUDA kernels take in this mode."""
    if a is None or not isinstance(a, np.ndarray):
        return a
    return cupy.asarray(a) if GPU_MODE else a


def to_host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()


def on_device(fn):
    """Wrap a CUDA launcher: NumPy in and out, device arrays in between."""

    def wrapped(*args, **kwargs):
        args = [to_device(a) for a in args]
        kwargs = {k: to_device(v) for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        return tuple(to_host(r) if not hasattr(r, "__dataclass_fields__") else r for r in result)

    return wrapped
