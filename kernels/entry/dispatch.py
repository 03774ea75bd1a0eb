"""Public kernel entry points: NumPy arrays run the CPU kernels, CuPy arrays the CUDA ones.

The CUDA modules (and numba.cuda, CuPy) are imported only when a CuPy array
arrives, so the CPU path never needs them. A backward call follows its `saved`.

Small CPU calls (below kernels.batch.parts.ONE_THREAD_WORK) run with a one-thread
OpenBLAS, see `_one_thread`.

An empty batch (x of shape [0, T, I]; under tf.distribute a replica gets one when
the last batch does not split evenly) is answered here, for NumPy and CuPy alike,
without running a kernel: its arguments are checked as the launchers check them,
the outputs are empty ([0, T, H], [0, H]) and `saved` is an `EmptySaved`, whose
backward returns empty batch-row gradients and zero weight gradients. An empty
time or feature axis stays an error.
"""

import functools
import importlib
import inspect
import numpy as np

from ..blas import binding as _blas
from ..gpu import cuda as _cuda
from ..batch import parts as _parts
from ..checks import validate as v
from .saved import GATES, STATES, EmptySaved, array_module_of, bias_shape, empty_saved


_KERNELS = __package__.rpartition(".")[0]  # kernels (or fastrnn.kernels)


def _cuda_function(cell, name):
    reason = _cuda.missing_reason()
    if reason is not None:
        raise RuntimeError(f"{name} got CuPy arrays, but {reason}")
    return getattr(importlib.import_module(f"{_KERNELS}.{cell}.cuda"), name)


def _work(x, kernel):
    """A call's work (kernels.batch.parts.work) from x's [B, T, I] (either order of B and T)
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
    signature = inspect.signature(cpu_function)

    @functools.wraps(cpu_function)
    def dispatch(x, *args, **kwargs):
        if _empty_batch(x):
            return _EMPTY_FORWARD[cell if cell != "scan" else name](
                signature.bind(x, *args, **kwargs))
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
    signature = inspect.signature(cpu_function)

    @functools.wraps(cpu_function)
    def dispatch(saved, *args, **kwargs):
        empty = _as_empty(saved, cell, recurrent)
        if empty is not None:
            return empty.backward(signature.bind(saved, *args, **kwargs))
        if type(saved).__module__.endswith(".cuda"):
            return _cuda_function(cell, name)(saved, *args, **kwargs)
        x = getattr(saved, "x_tm", getattr(saved, "x_p", None))
        return _one_thread(cpu_function, _work(x, getattr(saved, "kernel", None)),
                           _rows(x, 1) if recurrent else None, saved, *args, **kwargs)

    return dispatch


# The empty batch (its `saved`: kernels.entry.saved.EmptySaved). -----------------------


def _empty_batch(x):
    return (isinstance(x, np.ndarray) or _cuda.is_cupy_array(x)) and getattr(
        x, "ndim", None) == 3 and x.shape[0] == 0


def _as_empty(saved, cell, recurrent):
    """`saved` as an EmptySaved when it is one, or a cell's own `saved` over an empty
    batch (rebuilt so by a framework, e.g. minGRU's restore_saved); else None."""
    if type(saved) is EmptySaved:
        if saved.cell != cell:
            raise TypeError(f"saved must be the `saved` returned by {cell}_forward, got the "
                            f"one of {saved.cell}_forward (over an empty batch)")
        return saved
    x = getattr(saved, "x_tm", getattr(saved, "x_p", None))
    if cell not in GATES or getattr(x, "ndim", 0) != 3 or x.shape[1 if recurrent else 0] or (
            type(saved).__module__.split(".")[-2] != cell):
        return None  # not empty, or not this cell's (its backward's own check says so)
    time, features = (x.shape[0], x.shape[2]) if recurrent else (x.shape[1], x.shape[2])
    return empty_saved(cell, x.reshape(0, time, features), saved.kernel,
                       getattr(saved, "recurrent_kernel", None), saved.has_bias,
                       getattr(saved, "reset_after", True))


def _empty_recurrence(cell, bound):
    """forward over x [0, T, I]: the launchers' checks, then empty outputs."""
    bound.apply_defaults()
    a = bound.arguments
    xp = array_module_of(a["x"])
    if cell == "gru" and not isinstance(a["reset_after"], (bool, np.bool_)):
        raise TypeError(f"reset_after must be a bool, got {a['reset_after']!r}")
    if cell == "mingru" and a["method"] not in ("auto", "sequential", "blelloch"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'blelloch', got "
                         f"{a['method']!r}")
    x = v.check_x(a["x"], xp, empty_batch=True)
    reset_after = a.get("reset_after", True)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, a["kernel"], a.get("recurrent_kernel"), GATES[cell], a["bias"],
        lambda h: bias_shape(cell, h, reset_after), xp)
    if cell != "mingru" and recurrent_kernel is None:
        raise TypeError("recurrent_kernel must be an array, got None")
    for state in STATES[cell]:
        v.check_state(a[f"{state}0"], f"{state}0", 0, units, x.dtype, xp)
    if "activation" in a:
        v.activation_code(a["activation"])
    if "recurrent_activation" in a:
        v.activation_code(a["recurrent_activation"], "recurrent_activation")
    v.check_mask(a["mask"], 0, x.shape[1], xp)
    if "recurrent_mask" in a:
        v.check_recurrent_mask(a["recurrent_mask"], 0, kernel.shape[1], x.dtype, xp)
    empty = xp.empty((0, units), x.dtype)
    return (xp.empty((0, x.shape[1], units), x.dtype), *[empty.copy() for _ in STATES[cell]],
            empty_saved(cell, x, kernel, recurrent_kernel, bias is not None, reset_after))


def _check_empty_scan(bound, names):
    bound.apply_defaults()
    a = bound.arguments
    if a["method"] not in ("auto", "sequential", "blelloch"):
        raise ValueError(f"method must be one of ('auto', 'sequential', 'blelloch'), got "
                         f"{a['method']!r}")
    xp = array_module_of(a[names[0]])
    first = v.float_array(a[names[0]], names[0], xp=xp)
    if 0 in first.shape[1:]:
        raise ValueError(f"{names[0]} must have shape [batch, time, units] with time and units "
                         f">= 1 (an empty batch is allowed), got shape {first.shape}")
    second = v.float_array(a[names[1]], names[1], first.dtype, xp)
    v.expect_shape(second, names[1], first.shape, f"matching {names[0]}")
    v.check_state(a["h0"], "h0", 0, first.shape[2], first.dtype, xp)
    return xp, first, a


def _empty_scan(bound):
    xp, a, _ = _check_empty_scan(bound, ("a", "b"))
    return xp.empty(a.shape, a.dtype)


def _empty_scan_backward(bound):
    xp, a, args = _check_empty_scan(bound, ("a", "h"))
    v.check_grad(args["d_h"], "d_h", a.shape, a.dtype, xp)
    return xp.zeros(a.shape, a.dtype), xp.zeros(a.shape, a.dtype), xp.zeros(
        (0, a.shape[2]), a.dtype)


_EMPTY_FORWARD = {
    **{cell: functools.partial(_empty_recurrence, cell) for cell in GATES},
    "linear_scan": _empty_scan,
    "linear_scan_backward": _empty_scan_backward,
}
