"""The linear recurrence h_t = a_t * h_{t-1} + b_t on the CPU, two ways.

sequential: parallel over batch rows (prange), a plain loop over time inside,
    vectorized over the H channels. One pass over memory; the fastest whenever
    there are at least as many rows as cores.
blelloch: the work-efficient parallel scan at chunk granularity. Time is cut
    into chunks; (1) up-sweep: every chunk, in parallel, scans itself from a
    zero state and reduces its coefficients to one product; (2) the chunk
    carries are scanned in order (one step per chunk); (3) down-sweep: every
    chunk, in parallel, adds its incoming carry times the running product of
    its coefficients. About twice the memory traffic, but parallel over time,
    so it wins when rows are fewer than cores and T is long.

Both run forward (h_t from h_{t-1}) or in reverse with the coefficient shifted
by one, which is what the backward pass needs:
    g_t = d_t + a_{t+1} * g_{t+1}.
"""

import numpy as np
from numba import get_num_threads, njit, prange

from ..fastmath.common import OPTIONS



@njit(parallel=True, **OPTIONS)
def _sequential(a, b, h0, out, reverse):
    # forward: out_t = a_t * out_{t-1} + b_t (out_{-1} = h0)
    # reverse: out_t = b_t + a_{t+1} * out_{t+1} (out_T = h0, a_T read as 1)
    batch, time, units = a.shape
    for r in prange(batch):
        carry = h0[r].copy()
        if not reverse:
            for t in range(time):
                at, bt, ot = a[r, t], b[r, t], out[r, t]
                for j in range(units):
                    carry[j] = at[j] * carry[j] + bt[j]
                    ot[j] = carry[j]
        else:
            for t in range(time - 1, -1, -1):
                bt, ot = b[r, t], out[r, t]
                if t + 1 < time:
                    at = a[r, t + 1]
                    for j in range(units):
                        carry[j] = at[j] * carry[j] + bt[j]
                else:
                    for j in range(units):
                        carry[j] = carry[j] + bt[j]
                for j in range(units):
                    ot[j] = carry[j]


@njit(parallel=True, **OPTIONS)
def _blelloch(a, b, h0, out, reverse, chunk):
    batch, time, units = a.shape
    n_chunks = (time + chunk - 1) // chunk
    prods = np.empty((batch, n_chunks, units), a.dtype)
    carries = np.empty((batch, n_chunks, units), a.dtype)
    # Up-sweep: each chunk scans itself from zero and reduces its coefficients.
    for job in prange(batch * n_chunks):
        r, c = job // n_chunks, job % n_chunks
        lo, hi = c * chunk, min(time, (c + 1) * chunk)
        acc = np.zeros(units, a.dtype)
        prod = np.ones(units, a.dtype)
        for i in range(hi - lo):
            t = lo + i if not reverse else time - 1 - (lo + i)
            bt, ot = b[r, t], out[r, t]
            if not reverse:
                at = a[r, t]
                for j in range(units):
                    acc[j] = at[j] * acc[j] + bt[j]
                    prod[j] *= at[j]
            elif t + 1 < time:
                at = a[r, t + 1]
                for j in range(units):
                    acc[j] = at[j] * acc[j] + bt[j]
                    prod[j] *= at[j]
            else:
                for j in range(units):
                    acc[j] = acc[j] + bt[j]
            for j in range(units):
                ot[j] = acc[j]
        prods[r, c] = prod
    # Carries: the state entering each chunk, in order.
    for r in prange(batch):
        state = h0[r].copy()
        for c in range(n_chunks):
            carries[r, c] = state
            last = min(time, (c + 1) * chunk) - 1
            t_last = last if not reverse else time - 1 - last
            for j in range(units):
                state[j] = prods[r, c, j] * state[j] + out[r, t_last, j]
    # Down-sweep: add carry * (running product of coefficients) inside each chunk.
    for job in prange(batch * n_chunks):
        r, c = job // n_chunks, job % n_chunks
        lo, hi = c * chunk, min(time, (c + 1) * chunk)
        run = carries[r, c].copy()
        for i in range(hi - lo):
            t = lo + i if not reverse else time - 1 - (lo + i)
            ot = out[r, t]
            if not reverse:
                at = a[r, t]
                for j in range(units):
                    run[j] *= at[j]
                    ot[j] += run[j]
            else:
                if t + 1 < time:
                    at = a[r, t + 1]
                    for j in range(units):
                        run[j] *= at[j]
                for j in range(units):
                    ot[j] += run[j]


METHODS = ("auto", "sequential", "blelloch")


def choose_method(batch, time):
    """Sequential unless at least two cores per batch row would otherwise idle.

    Measured on 2 cores (bench/test_mingru.py::test_scan, H=128), Blelloch lost at
    every B16 length by 1.5-2.2x and at B1 up to T=16384 (1.50 against 1.05 ms); at
    B1 T=65536 it won one run (6.2 against 7.2 ms) and lost the next (7.3 against
    5.1 ms). It moves about twice the bytes, so it needs at least two idle cores
    per row to pay off: on 2 cores the rule always picks sequential; the Blelloch
    branch for many-core machines is not yet measured.
    """
    threads = get_num_threads()
    return "blelloch" if 2 * batch <= threads // 2 and time >= 16384 else "sequential"


def run_scan(a, b, init, out, reverse, method="auto", chunk=256):
    batch, time, _ = a.shape
    if method == "auto":
        method = choose_method(batch, time)
    if method == "sequential":
        _sequential(a, b, init, out, reverse)
    else:
        _blelloch(a, b, init, out, reverse, chunk)
    return out


def _check_scan_args(a, b, h0, names=("a", "b")):
    from ..checks import validate as v

    a = v.float_array(a, names[0])
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"{names[0]} must have shape [batch, time, units] with sizes >= 1, "
                         f"got shape {a.shape}")
    b = v.float_array(b, names[1], a.dtype)
    v.expect_shape(b, names[1], a.shape, f"matching {names[0]}")
    h0 = v.check_state(h0, "h0", a.shape[0], a.shape[2], a.dtype)
    return a, b, h0


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def linear_scan(a, b, h0=None, *, method="auto"):
    """h_t = a_t * h_{t-1} + b_t over time, for every batch row and channel.

    Args:
        a, b: [B, T, H] float32 or float64 (one dtype).
        h0: [B, H] initial state, or None for zeros.
        method: "sequential", "blelloch" or "auto" (picks the faster, see module doc).

    Returns:
        h [B, T, H].

    Example:
        >>> import numpy as np
        >>> from fastrnn import kernels
        >>> a = np.full((1, 4, 1), 0.5); b = np.ones((1, 4, 1))
        >>> kernels.linear_scan(a, b)[0, :, 0]
        array([1.   , 1.5  , 1.75 , 1.875])
    """
    _check_method(method)
    a, b, h0 = _check_scan_args(a, b, h0)
    return run_scan(a, b, h0, np.empty_like(a), False, method)


def linear_scan_backward(a, h, h0, d_h, *, method="auto"):
    """Gradients of linear_scan: returns da, db, dh0 for upstream d_h [B, T, H].

    `h` is linear_scan's output and `h0` its initial state (None for zeros).
    The reverse scan g_t = d_h_t + a_{t+1} g_{t+1} gives db = g, da_t = g_t h_{t-1},
    dh0 = a_0 g_0.
    """
    _check_method(method)
    a, h, h0 = _check_scan_args(a, h, h0, ("a", "h"))
    from ..checks import validate as v

    d_h = v.check_grad(d_h, "d_h", a.shape, a.dtype)
    g = run_scan(a, d_h, np.zeros_like(h0), np.empty_like(a), True, method)
    da = g.copy()
    da[:, 1:] *= h[:, :-1]
    da[:, 0] *= h0
    return da, g, a[:, 0] * g[:, 0]
