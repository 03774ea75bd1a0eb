"""Public kernel entry points: NumPy arrays run the CPU kernels, CuPy arrays the CUDA ones.

The CUDA modules (and numba.cuda, CuPy) are imported only when a CuPy array
arrives, so the CPU path never needs them. A backward call follows its `saved`.
"""

import functools
import importlib

from . import _cuda


def _cuda_function(cell, name):
    reason = _cuda.missing_reason()
    if reason is not None:
        raise RuntimeError(f"{name} got CuPy arrays, but {reason}")
    return getattr(importlib.import_module(f"{__package__}.{cell}.cuda"), name)


def forward(cpu_function, cell):
    """Wrap a CPU forward so that a CuPy `x` (first argument) goes to <cell>.cuda."""
    name = cpu_function.__name__

    @functools.wraps(cpu_function)
    def dispatch(x, *args, **kwargs):
        if _cuda.is_cupy_array(x):
            return _cuda_function(cell, name)(x, *args, **kwargs)
        return cpu_function(x, *args, **kwargs)

    return dispatch


def backward(cpu_function, cell):
    """Wrap a CPU backward so that a `saved` from a CUDA forward goes to <cell>.cuda."""
    name = cpu_function.__name__

    @functools.wraps(cpu_function)
    def dispatch(saved, *args, **kwargs):
        if type(saved).__module__.endswith(".cuda"):
            return _cuda_function(cell, name)(saved, *args, **kwargs)
        return cpu_function(saved, *args, **kwargs)

    return dispatch
