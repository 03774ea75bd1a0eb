"""Public kernel entry points: NumPy arrays run the CPU kernels, CuPy arrays the CUDA ones.

The CUDA modules (and numba.cuda, CuPy) are imported only when a CuPy array
arrives, so the CPU path never needs them. A backward call follows its `saved`.

Small CPU calls (below kernels._parts.ONE_THREAD_WORK) run with a one-thread
OpenBLAS, see `_one_thread`.
"""

import functools
import importlib

from . import _blas, _cuda, _parts


def _cuda_function(cell, name):
    reason = _cuda.missing_reason()
    if reason is not None:
        raise RuntimeError(f"{name} got CuPy arrays, but {reason}")
    return getattr(importlib.import_module(f"{__package__}.{cell}.cuda"), name)


def _work(x, kernel):
    """A call's work (kernels._parts.work) from x's [B, T, I] (either order of B and T)
    and the kernel [I, G*H]; None when they are not arrays of those ranks (the
    kernel's own checks then raise their errors)."""
    if getattr(x, "ndim", 0) != 3 or getattr(kernel, "ndim", 0) != 2:
        return None
    try:
        return _parts.work(*(int(n) for n in x.shape), int(kernel.shape[1]))
    except (TypeError, ValueError):
        return None


def _rows(x, batch_axis):
    return x.shape[batch_axis] if getattr(x, "ndim", 0) == 3 else None


def _one_thread(function, work, rows, *args, **kwargs):
    """function(*args, **kwargs), with OpenBLAS held at one thread for a small call.

    A small call's products are too small for two threads to pay (SimpleRNN B32 T15
    forward+backward 0.28 ms with OpenBLAS' two threads, 0.22 ms with one; GRU 0.78
    -> 0.62 ms), and a multi-threaded product waits for a second core that another
    library's spinning thread pool may hold: right after a PyTorch call the same
    SimpleRNN call took 2.8 ms with two OpenBLAS threads and 0.29 ms with one.
    Calls made while someone else holds a limit, or inside `_parts.unsplit` (the
    Keras layers, which choose their threads themselves), are left alone. `rows`: the
    batch of a recurrence with a per-step product, else None (see _parts.few_rows).
    """
    if not _parts.one_thread(work, rows):
        return function(*args, **kwargs)
    _blas.hold_threads(1)
    try:
        return function(*args, **kwargs)
    finally:
        _blas.release_threads()


def forward(cpu_function, cell, kernel_at=None, recurrent=False):
    """Wrap a CPU forward so that a CuPy `x` (first argument) goes to <cell>.cuda.
    `kernel_at`: the position of the `kernel` argument after x, for the call's work;
    `recurrent`: the cell has a per-step recurrent product (see _parts.few_rows)."""
    name = cpu_function.__name__

    @functools.wraps(cpu_function)
    def dispatch(x, *args, **kwargs):
        if _cuda.is_cupy_array(x):
            return _cuda_function(cell, name)(x, *args, **kwargs)
        if kernel_at is None:
            return cpu_function(x, *args, **kwargs)
        kernel = args[kernel_at] if len(args) > kernel_at else kwargs.get("kernel")
        return _one_thread(cpu_function, _work(x, kernel), _rows(x, 0) if recurrent else None,
                           x, *args, **kwargs)

    return dispatch


def backward(cpu_function, cell, recurrent=False):
    """Wrap a CPU backward so that a `saved` from a CUDA forward goes to <cell>.cuda.
    `recurrent` as for `forward` (its saved x is time-major, [T, B, I])."""
    name = cpu_function.__name__

    @functools.wraps(cpu_function)
    def dispatch(saved, *args, **kwargs):
        if type(saved).__module__.endswith(".cuda"):
            return _cuda_function(cell, name)(saved, *args, **kwargs)
        x = getattr(saved, "x_tm", getattr(saved, "x_p", None))
        return _one_thread(cpu_function, _work(x, getattr(saved, "kernel", None)),
                           _rows(x, 1) if recurrent else None, saved, *args, **kwargs)

    return dispatch
