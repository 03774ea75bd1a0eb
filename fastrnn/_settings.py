"""Process-wide settings: which CPU route the layers take, and compiling ahead of time.

The route: "native" (TensorFlow ops registered through the C API, the default where
they can be set up), "numpy_function" (the kernels called through tf.numpy_function),
or "auto" (native, else numpy_function with one warning saying why). The environment
variable FASTRNN_ROUTE sets it for a process; `set_route` for the rest of a session
(layers traced from then on). The GPU route is chosen by a layer's `device`.
"""

import sys
import time

DTYPES = ("float32", "float64")


def set_route(route):
    """Choose the layers' CPU route: "auto", "native" or "numpy_function"."""
    from fastrnn.ops import recurrence

    recurrence.set_route(route)


def get_route():
    from fastrnn.ops import recurrence

    return recurrence.get_route()


def _names(value, allowed, argname):
    if isinstance(value, str):
        value = [value]
    try:
        value = [str(v).lower() for v in value]
    except TypeError:
        raise TypeError(f"{argname} must be a name or a list of names from {allowed}, "
                        f"got {value!r}") from None
    bad = [v for v in value if v not in allowed]
    if bad or not value:
        raise ValueError(f"{argname} must name some of {allowed}, got {value!r}")
    return value


def warmup(cells=None, dtypes=("float32",), kernels=False, verbose=True):
    """Compile (or load from Numba's disk cache) what the layers will run, ahead of
    time: for a Docker image or a CI job, so that the first training step does not
    wait. A machine's first warm-up compiles (tens of seconds a cell and dtype);
    later ones, in any process, load the cache in about a second.

    Args:
        cells: some of "gru", "lstm", "simple_rnn", "mingru" (default, None: every
            cell described in fastrnn/ops/native/cells.py).
        dtypes: some of "float32", "float64".
        kernels: also the direct-call launchers (`fastrnn.kernels.*`) and the
            numpy_function route, besides the native TensorFlow ops.
        verbose: print one line per cell and dtype, with the seconds it took.

    Returns:
        {(cell, dtype): seconds}.
    """
    import numpy as np

    from fastrnn.ops.native.cells import CELLS

    cells = _names(list(CELLS) if cells is None else cells, tuple(CELLS), "cells")
    dtypes = _names(dtypes, DTYPES, "dtypes")
    from fastrnn.ops import route

    native = route._native_module() if route.get_route() != "numpy_function" else None
    timings = {}
    for cell in cells:
        for dtype in dtypes:
            start = time.perf_counter()
            if native is not None:
                native.ops(cell, dtype)  # GRU: its reset_after=True cores
                if cell == "gru":  # and reset_after=False's, which are its own
                    native.ops(cell, dtype, reset_after=False)
            if kernels or native is None:
                _run_kernels(cell, np.dtype(dtype))
            timings[(cell, dtype)] = time.perf_counter() - start
            if verbose:
                print(f"fastrnn.warmup: {cell} {dtype} ready in {timings[(cell, dtype)]:.1f} s",
                      file=sys.stderr, flush=True)
    return timings


def _run_kernels(cell, dtype):
    """One tiny forward and backward through the direct kernels of `cell`."""
    import numpy as np

    from fastrnn import kernels as k

    x = np.ones((2, 3, 2), dtype)
    d_out = np.ones((2, 3, 2), dtype)
    if cell == "gru":
        for reset_after, bias in ((True, np.ones((2, 6), dtype)), (False, np.ones(6, dtype))):
            out, h, saved = k.gru_forward(x, None, np.ones((2, 6), dtype),
                                          np.ones((2, 6), dtype), bias, reset_after=reset_after)
            k.gru_backward(saved, d_out, h)
    elif cell == "lstm":
        out, h, c, saved = k.lstm_forward(x, None, None, np.ones((2, 8), dtype),
                                          np.ones((2, 8), dtype), np.ones(8, dtype))
        k.lstm_backward(saved, d_out, h, c)
    elif cell == "simple_rnn":
        out, h, saved = k.simple_rnn_forward(x, None, np.ones((2, 2), dtype),
                                             np.ones((2, 2), dtype), np.ones(2, dtype))
        k.simple_rnn_backward(saved, d_out, h)
    else:
        out, h, saved = k.mingru_forward(x, None, np.ones((2, 4), dtype), np.ones(4, dtype))
        k.mingru_backward(saved, d_out, h)
