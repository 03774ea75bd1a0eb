"""Helpers for the CUDA kernel tests: kernels run under Numba's simulator by default (NumPy arrays, tiny shapes), on a
real GPU with CuPy arrays when FASTRNN_TEST_GPU=1 (see tests/conftest.py)."""

import sys

import numpy as np
import pytest
from conftest import GPU_MODE

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[test]')")


def _shared_arrays_allocated_once():
    """Make the simulator's `cuda.shared.array` allocate a block's array once.

    Numba's simulator (numba-cuda 0.30) runs a block's threads as Python threads,
    and each thread's first `cuda.shared.array(...)` looks the array up in a dict
    by its call site and, when absent, creates and stores it: a check, then a set,
    with no lock (FakeCUDAShared.array). Two threads that interleave between the
    two get two different arrays, and the block then runs on split shared memory.
    The Blelloch scan kernels (the only ones with shared memory) failed their
    reference checks now and then because of it: one CI run in this project, and
    one in ten runs of their 43 cases on a loaded machine. Counting the splits
    (a second array made for a call site) showed them at every failure; with
    the check and the set made atomic there are none.
    The call site is found as the simulator finds it (the caller's file and line)."""
    import threading
    import traceback

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "allocated_once", False):
        return
    original = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)  # no lookup by call site
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1])[0:2]
        with lock:
            if caller not in self._allocations:
                self._allocations[caller] = np.empty(shape, dtype)
            return self._allocations[caller]

    array.allocated_once = True
    shared.array = array


if not GPU_MODE:
    _shared_arrays_allocated_once()

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
