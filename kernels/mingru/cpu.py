"""minGRU forward and backward on the CPU.

    z_t = sig(x_t W_z + b_z),  h~_t = x_t W_h + b_h
    h_t = (1 - z_t) h_{t-1} + z_t h~_t  =  a_t h_{t-1} + b_t,  a = 1 - z, b = z h~

No recurrent matrix, so the layout stays batch-major ([B, T, .], processing
order). The sequential method goes through the batch a block of rows at a time
(BLOCK_BYTES of gates, about one core's L2): one GEMM projects both gates for
the block's steps, then one fused serial pass computes the gates and runs the
recurrence while they are still in cache, leaving z | h~ - h_{t-1} in the
projection's buffer: the backward needs h_{t-1} only through that difference, so
no [B, T, H] state array is written, saved or read again. Backward: the reverse
recurrence g_t = dL/dh_t + a_{t+1} g_{t+1} fused with the gate gradients, then
one GEMM each for dx and dW, block by block the same way.

Large calls split the batch over the cores (kernels.batch.parts: one part per
OpenBLAS thread, each the whole blocked kernel with a one-thread BLAS). Measured
here (2-core EPYC, float32, forward+backward, medians of an A/B in one process):
B16 T1024 I64 H128 38.9 ms unsplit against 27.3 ms split, B64 T100 I128 H256
36.0 against 27.3 ms. (Parallel over batch rows with Numba's own threads it ran
2.8x slower right after the GEMM, Numba's threads and OpenBLAS' still spinning
threads fighting over 2 cores: 6.7 ms against 2.4 ms at B16 T1024 H128.)

The sequential method is one nopython core per direction (forward_core,
backward_core) doing the whole call on preallocated arrays, compiled once per
dtype as a cfunc called through a table slot (kernels.runtime.abi, run_forward / run_backward): the
launchers validate, allocate and call it, and so do the TensorFlow ops' kernels
(fastrnn/ops/native/_mingru.py), where it is the method: on one core it was the
fastest (float32 forward+backward, one thread, medians of interleaved runs on a
busy 2-core EPYC: B32 T15 I1 H45 0.10 ms against 0.11 unblocked and 0.27-0.33
for the Blelloch scan; B16 T1024 I64 H128 63-83 against 76-99 and 107-145 ms;
B32 T128 I128 H256 46-72 against 49-81 and 61-101 ms; blocks of 256 KiB or 4 MiB
instead of 1 MiB: within the noise, or slower).

When rows are fewer than cores and the sequence is long, the launcher instead
runs the recurrence as the Blelloch chunked scan (kernels/scan), parallel over
time, and the call is not split; it shares the gate arithmetic with the cores
(_gates_in_place, _step_gradients). A masked step is a = 1, b = 0.

Saved for backward, per step and batch row: x_t (I floats, the caller's array
unless go_backwards) and z | h~ - h_{t-1} (2H). (Saving h_t as well, and reading
it back, cost about 1 ms of 26 at B16 T1024 H128 forward + backward here.)
"""

from dataclasses import dataclass

import numpy as np
from numba import carray, cfunc, njit, prange

from ..runtime import abi as _abi
from ..batch import parts as _parts
from ..batch import pool as _pool
from ..checks import validate as v
from ..runtime.abi import put, view1, view2, view3
from ..blas.binding import gemm, gemm_tn
from ..fastmath.common import OPTIONS, inline_jit, jit, per_block, project, time_major_mask
from ..fastmath.functions import sigmoid as fast_sigmoid
from ..scan.cpu import choose_method, run_scan


# The backward's fused pass and its two GEMMs go through the batch this many bytes of
# gradient at a time (about one core's L2), so that the GEMMs read the gradient from
# cache instead of memory: 17.7 -> 15.1 ms for the B16 T1024 H128 backward in an A/B
# run here.
BLOCK_BYTES = 1 << 20


@njit(inline="always", **OPTIONS)
def _gates_in_place(row, bias, units):
    # row = x_t W (2H) -> z | h~ = sigmoid(x W_z + b_z) | x W_h + b_h
    z = row[:units]
    ht = row[units:]
    for j in range(units):
        z[j] = fast_sigmoid(z[j] + bias[j])
    for j in range(units):
        ht[j] += bias[units + j]
    return z, ht


@njit(parallel=True, **OPTIONS)
def _gates_to_scan(gates, bias, mask, a, b):
    # Gate pass for the Blelloch path: z | h~ in place, a = 1 - z, b = z h~ (1, 0 if masked).
    batch, time, width = gates.shape
    units = width // 2
    for job in prange(batch * time):
        r, t = job // time, job % time
        if not mask[r, t]:
            a[r, t] = 1.0
            b[r, t] = 0.0
            continue
        z, ht = _gates_in_place(gates[r, t], bias, units)
        for j in range(units):
            a[r, t, j] = 1.0 - z[j]
            b[r, t, j] = z[j] * ht[j]


@njit(parallel=True, **OPTIONS)
def _differences_and_outputs(gates, states, h0, mask, first, out):
    # Blelloch path, after the scan: h~ -> h~ - h_{t-1} in gates (unmasked steps),
    # and Keras' outputs (zeros before the first unmasked step, then the state).
    batch, time, width = gates.shape
    units = width // 2
    for job in prange(batch * time):
        r, t = job // time, job % time
        if mask[r, t]:
            hp = states[r, t - 1] if t > 0 else h0[r]
            diff = gates[r, t, units:]
            for j in range(units):
                diff[j] -= hp[j]
        if t >= first[r]:
            out[r, t] = states[r, t]
        else:
            out[r, t] = 0.0


@njit(inline="always", **OPTIONS)
def _step_gradients(g, z, diff, dp, d_bias_row, units):
    # dL/d(x W_z + b_z) = g (h~ - h_{t-1}) z (1 - z);  dL/d(x W_h + b_h) = g z
    for j in range(units):
        dp[j] = g[j] * diff[j] * z[j] * (1.0 - z[j])
    for j in range(units):
        dp[units + j] = g[j] * z[j]
    for j in range(2 * units):
        d_bias_row[j] += dp[j]


@jit
def _reverse_time_into(a, out):
    """out [B, T, F] = a [B, T, F] with time reversed."""
    batch, time, features = a.shape
    for r in range(batch):
        for t in range(time):
            src = a[r, time - 1 - t]
            dst = out[r, t]
            for j in range(features):
                dst[j] = src[j]


@jit
def prepare(x, mask, has_mask, go_backwards, x_p, mask_bt, first):
    """What a core derives from its inputs, in processing order: x_p [B, T, I] (written
    only if go_backwards: otherwise x is in processing order already, and x_p may be
    empty), mask_bt [B, T] bool and first [B] (the first unmasked step, T if none; 0
    without a mask) from x and mask [B, T] (read only if has_mask)."""
    if go_backwards:
        _reverse_time_into(x, x_p)
    batch, time = mask_bt.shape
    for r in range(batch):
        first[r] = time if has_mask else 0
        for t in range(time):
            keep = True
            if has_mask:
                keep = mask[r, time - 1 - t if go_backwards else t]
                if keep and first[r] == time:
                    first[r] = t
            mask_bt[r, t] = keep


@jit
def rows_per_block(batch, time, width, itemsize):
    """per_block(time * width * itemsize, batch, BLOCK_BYTES) in nopython code (the
    TensorFlow ops'; the launchers read BLOCK_BYTES at call time)."""
    return max(1, min(batch, BLOCK_BYTES // max(1, time * width * itemsize)))


# The cores are one function each, with few @jit callees: every @njit function's
# compile re-optimizes all the code linked into it, so each level of small helper
# functions costs its callees' compile again (launcher cold compile, float32 forward
# + backward: 7.0 CPU s with the fused passes as functions of their own, 4.0 as now).


@inline_jit
def forward_core(x, h0, kernel, bias, mask, has_mask, go_backwards, rows, x_p, gates, out,
                 h_last, mask_bt, first):
    """A whole sequential mingru_forward call on preallocated arrays (the launcher's
    and the TensorFlow op's one implementation). x [B, T, I], h0 [B, H], kernel
    [I, 2H], bias [2H] (zeros for no bias), mask [B, T] read only if has_mask; rows:
    batch rows per block. x_p: with go_backwards a [B, T, I] scratch that gets x in
    processing order (else unused: may be empty). Writes out [B, T, H], h_last [B, H] and what the
    backward reads: gates [B, T, 2H] (z | h~ - h_{t-1}), mask_bt [B, T], first [B]."""
    prepare(x, mask, has_mask, go_backwards, x_p, mask_bt, first)
    # (x may be read-only, as NumPy views of TensorFlow's tensors are: only read.)
    x_in = x_p if go_backwards else x
    batch, time, width = gates.shape
    inputs = x_in.shape[2]
    units = width // 2
    for r0 in range(0, batch, rows):
        r1 = min(batch, r0 + rows)
        n = r1 - r0
        # The block's projection x W, then the fused pass over it while it is in cache.
        project(x_in[r0:r1].reshape(n * time, inputs), kernel,
                gates[r0:r1].reshape(n * time, width))
        for r in range(r0, r1):
            h = h_last[r]
            h_init = h0[r]
            for j in range(units):
                h[j] = h_init[j]
            for t in range(time):
                if mask_bt[r, t]:
                    z, diff = _gates_in_place(gates[r, t], bias, units)
                    for j in range(units):
                        diff[j] -= h[j]
                    for j in range(units):
                        h[j] += z[j] * diff[j]
                o = out[r, t]
                if t >= first[r]:
                    for j in range(units):
                        o[j] = h[j]
                else:
                    for j in range(units):
                        o[j] = 0.0


@inline_jit
def backward_core(x_p, gates, mask_bt, first, kernel, d_out, dh, go_backwards, rows, d_pre, dx,
                  d_kernel, d_bias):
    """A whole sequential mingru_backward call on preallocated arrays, a block of `rows`
    batch rows at a time (BLOCK_BYTES of gradient): the fused pass writes the block's
    dL/d(x W + b) into the scratch d_pre [rows, T, 2H], and the two GEMMs that need it
    (dx, and d_kernel accumulated over blocks) read it while it is still in cache.
    x_p, gates, mask_bt, first as forward_core left them (processing order); dh
    [B, H]: d_h_last on entry, dh0 on exit. Writes dx [B, T, I] (input order),
    d_kernel [I, 2H] and d_bias [2H]."""
    batch, time, width = gates.shape
    inputs = x_p.shape[2]
    units = width // 2
    d_b = np.zeros(width)  # the bias gradient accumulates in float64
    kernel_t = np.ascontiguousarray(kernel.T)
    dx_p = np.empty((rows if go_backwards else 0, time, inputs), dx.dtype)
    for r0 in range(0, batch, rows):
        r1 = min(batch, r0 + rows)
        n = r1 - r0
        dp = d_pre[:n]
        # The reverse recurrence g_t = dL/dh_t + a_{t+1} g_{t+1} (g in dh) fused with
        # the gate gradients: dp [n, T, 2H] = dL/d(x W + b) for the block's rows.
        for r in range(r0, r1):
            g = dh[r]
            for t in range(time - 1, -1, -1):
                if t >= first[r]:
                    dot = d_out[r, t]
                    for j in range(units):
                        g[j] += dot[j]
                dpt = dp[r - r0, t]
                if not mask_bt[r, t]:
                    for j in range(width):
                        dpt[j] = 0.0
                    continue
                z = gates[r, t, :units]
                _step_gradients(g, z, gates[r, t, units:], dpt, d_b, units)
                for j in range(units):
                    g[j] *= 1.0 - z[j]
        dp2 = dp.reshape(n * time, width)
        if go_backwards:
            gemm(dp2, kernel_t, dx_p[:n].reshape(n * time, inputs), False)
            _reverse_time_into(dx_p[:n], dx[r0:r1])
        else:
            gemm(dp2, kernel_t, dx[r0:r1].reshape(n * time, inputs), False)
        gemm_tn(x_p[r0:r1].reshape(n * time, inputs), dp2, d_kernel, r0 > 0)
    for j in range(width):
        d_bias[j] = d_b[j]


# The cores compiled once per dtype, called through their table slots (kernels.runtime.abi). Arrays take
# _abi.SLOTS slots each (put / view); then the settings; then the done flag.
_FORWARD_ARRAYS, _FORWARD_ARGS = 11, 11 * _abi.SLOTS + 3
_BACKWARD_ARRAYS, _BACKWARD_ARGS = 11, 11 * _abi.SLOTS + 2


def _forward_cfunc(dtype):
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _FORWARD_ARGS + 1, np.int64)
        s = _FORWARD_ARRAYS * _abi.SLOTS
        forward_core(view3(a, 0, dtype), view2(a, 4, dtype), view2(a, 8, dtype),
                     view1(a, 12, dtype), view2(a, 16, np.bool_), a[s] != 0, a[s + 1] != 0,
                     a[s + 2], view3(a, 20, dtype), view3(a, 24, dtype), view3(a, 28, dtype),
                     view2(a, 32, dtype), view2(a, 36, np.bool_), view1(a, 40, np.int64))
        a[_FORWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


def _backward_cfunc(dtype):
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _BACKWARD_ARGS + 1, np.int64)
        s = _BACKWARD_ARRAYS * _abi.SLOTS
        backward_core(view3(a, 0, dtype), view3(a, 4, dtype), view2(a, 8, np.bool_),
                      view1(a, 12, np.int64), view2(a, 16, dtype), view3(a, 20, dtype),
                      view2(a, 24, dtype), a[s] != 0, a[s + 1], view3(a, 28, dtype),
                      view3(a, 32, dtype), view2(a, 36, dtype), view1(a, 40, dtype))
        a[_BACKWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


_forward_by_name, _backward_by_name, prepare_cores = _abi.register_cell(
    "mingru", _forward_cfunc, _backward_cfunc, (_FORWARD_ARGS, _BACKWARD_ARGS))

# prepare compiled once per dtype, for the TensorFlow backward op (which rebuilds
# x_p, mask_bt and first from x and mask): x, mask, x_p, mask_bt, first (SLOTS each),
# has_mask, go_backwards; the done flag.
PREPARE_ARGS = 5 * _abi.SLOTS + 2


def _prepare_cfunc(dtype):
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, PREPARE_ARGS + 1, np.int64)
        s = 5 * _abi.SLOTS
        prepare(view3(a, 0, dtype), view2(a, 4, np.bool_), a[s] != 0, a[s + 1] != 0,
                view3(a, 8, dtype), view2(a, 12, np.bool_), view1(a, 16, np.int64))
        a[PREPARE_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


_abi.register("mingru_prepare", _prepare_cfunc, PREPARE_ARGS)


@jit
def run_forward(x, h0, kernel, bias, mask, has_mask, go_backwards, rows, x_p, gates, out, h_last,
                mask_bt, first):
    """forward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_FORWARD_ARGS + 1, np.int64)
    put(a, 0, x)
    put(a, 4, h0)
    put(a, 8, kernel)
    put(a, 12, bias)
    put(a, 16, mask)
    put(a, 20, x_p)
    put(a, 24, gates)
    put(a, 28, out)
    put(a, 32, h_last)
    put(a, 36, mask_bt)
    put(a, 40, first)
    s = _FORWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1], a[s + 2] = has_mask, go_backwards, rows
    return _forward_by_name(x, a)


@jit
def run_backward(x_p, gates, mask_bt, first, kernel, d_out, dh, go_backwards, rows, d_pre, dx,
                 d_kernel, d_bias):
    """backward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_BACKWARD_ARGS + 1, np.int64)
    put(a, 0, x_p)
    put(a, 4, gates)
    put(a, 8, mask_bt)
    put(a, 12, first)
    put(a, 16, kernel)
    put(a, 20, d_out)
    put(a, 24, dh)
    put(a, 28, d_pre)
    put(a, 32, dx)
    put(a, 36, d_kernel)
    put(a, 40, d_bias)
    s = _BACKWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1] = go_backwards, rows
    return _backward_by_name(dh, a)



@njit(parallel=True, **OPTIONS)
def _backward_from_scan(gates, g, mask, d_pre, d_bias_rows):
    # Blelloch path: g = dL/dh_t already scanned; gate gradients per step in parallel.
    batch, time, width = gates.shape
    units = width // 2
    for r in prange(batch):
        for t in range(time):
            dp = d_pre[r, t]
            if not mask[r, t]:
                dp[:] = 0.0
                continue
            _step_gradients(g[r, t], gates[r, t, :units], gates[r, t, units:], dp,
                            d_bias_rows[r], units)


@dataclass(eq=False)
class MinGRUSaved:
    """What mingru_backward needs; treat as opaque."""

    x_p: np.ndarray      # x in processing order [B, T, I]
    gates: np.ndarray    # z | h~ - h_{t-1} [B, T, 2H] (unmasked steps)
    mask_bt: np.ndarray  # [B, T] bool, processing order
    first: np.ndarray
    kernel: np.ndarray
    has_bias: bool
    go_backwards: bool
    method: str


_NO_MASK = np.ones((0, 0), np.bool_)


def _processing_order_mask(mask, batch, time, go_backwards):
    mask_tm, first = time_major_mask(mask, batch, time, go_backwards)
    return np.ascontiguousarray(mask_tm.T), first


def mingru_forward(x, h0, kernel, bias, mask=None, go_backwards=False, *, method="auto"):
    """minGRU over a whole sequence, Keras mask semantics.

    Args:
        x: [B, T, I] float32 or float64.
        h0: [B, H] initial state, or None for zeros.
        kernel: [I, 2H], columns z | h~. bias: [2H] or None (use_bias=False).
        mask: bool [B, T] or None. A masked step keeps the state (a=1, b=0) and
            repeats the previous output (zeros before the first unmasked step).
        go_backwards: process time in reverse; outputs are in processing order.
        method: the recurrence: "sequential" (parallel over rows), "blelloch"
            (parallel over time) or "auto".

    Returns:
        out [B, T, H], h_last [B, H], saved (for mingru_backward).
    """
    x = v.check_x(x)
    kernel, _, bias, units = v.check_weights(x, kernel, None, 2, bias, lambda h: (2 * h,))
    if method not in ("auto", "sequential", "blelloch"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'blelloch', got {method!r}")
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype)
    mask = v.check_mask(mask, batch, time)
    if method == "auto":
        method = choose_method(batch, time)
    if method == "sequential":
        parts = _parts.plan(batch, time, x.shape[2], 2 * units)
        if parts > 1:
            return _parts.forward(lambda rows: mingru_forward(
                x[rows], h0[rows], kernel, bias, None if mask is None else mask[rows],
                go_backwards, method="sequential"), batch, time, units, x.dtype, parts)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(2 * units, x.dtype)
    gates = _pool.empty((batch, time, 2 * units), x.dtype)
    out = _pool.empty((batch, time, units), x.dtype)
    if method == "sequential":
        x_p = _pool.empty(x.shape if go_backwards else (0, 0, 0), x.dtype)
        h_last = _pool.empty((batch, units), x.dtype)
        mask_bt = np.empty((batch, time), np.bool_)
        first = np.empty(batch, np.int64)
        rows = per_block(time * 2 * units * x.dtype.itemsize, batch, BLOCK_BYTES)
        prepare_cores(x.dtype)
        _abi.finished(run_forward(
            x, h0, kernel, bias, _NO_MASK if mask is None else mask, mask is not None,
            bool(go_backwards), rows, x_p, gates, out, h_last, mask_bt, first), "mingru_forward")
        if not go_backwards:
            x_p = x
    else:
        mask_bt, first = _processing_order_mask(mask, batch, time, go_backwards)
        x_p = _pool.ascontiguous(x[:, ::-1]) if go_backwards else x
        np.dot(x_p.reshape(batch * time, -1), kernel, out=gates.reshape(batch * time, -1))
        a = _pool.empty(out.shape, out.dtype)
        states = _pool.empty(out.shape, out.dtype)
        _gates_to_scan(gates, bias, mask_bt, a, states)
        run_scan(a, states, h0, states, False, "blelloch")
        _differences_and_outputs(gates, states, h0, mask_bt, first, out)
        h_last = _pool.copy(states[:, -1])
    saved = MinGRUSaved(x_p, gates, mask_bt, first, kernel, has_bias, go_backwards, method)
    return out, h_last, saved


def mingru_backward(saved, d_out, d_h_last):
    """Gradients of mingru_forward.

    Returns:
        dx [B, T, I], dh0 [B, H], d_kernel [I, 2H], d_bias [2H] (None without bias).
    """
    if type(saved) is _parts.SplitSaved:
        return _parts.backward(mingru_backward, saved, (d_out, d_h_last), ("d_out", "d_h_last"))
    v.check_saved(saved, MinGRUSaved, "mingru_forward")
    batch, time, width = saved.gates.shape
    units = width // 2
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype)
    dh = _pool.copy(v.check_grad(d_h_last, "d_h_last", (batch, units), dtype))
    if saved.method == "sequential":
        rows = per_block(time * 2 * units * dtype.itemsize, batch, BLOCK_BYTES)
        d_pre = _pool.empty((rows, time, 2 * units), dtype)
        dx = _pool.empty(saved.x_p.shape, dtype)
        d_kernel = _pool.empty(saved.kernel.shape, dtype)
        d_bias = np.empty(2 * units, dtype)
        prepare_cores(dtype)
        _abi.finished(run_backward(
            saved.x_p, saved.gates, saved.mask_bt, saved.first, saved.kernel, d_out, dh,
            bool(saved.go_backwards), rows, d_pre, dx, d_kernel, d_bias), "mingru_backward")
        return dx, dh, d_kernel, d_bias if saved.has_bias else None
    # g_t = d_out_t (where it is the state) + a_{t+1} g_{t+1}, g_T = d_h_last.
    d_bias_rows = np.zeros((batch, 2 * units))
    d_pre = _pool.empty((batch, time, 2 * units), dtype)
    seen = np.arange(time)[None, :] >= saved.first[:, None]
    d_state = np.where(seen[:, :, None], d_out, 0.0).astype(dtype)
    a = np.where(saved.mask_bt[:, :, None], 1.0 - saved.gates[:, :, :units], 1.0).astype(dtype)
    g = run_scan(a, d_state, dh, np.empty_like(a), True, "blelloch")
    _backward_from_scan(saved.gates, g, saved.mask_bt, d_pre, d_bias_rows)
    dh = _pool.copy(a[:, 0] * g[:, 0])
    d_pre2 = d_pre.reshape(batch * time, 2 * units)
    dx = _pool.matmul(d_pre2, saved.kernel.T).reshape(batch, time, -1)
    d_kernel = _pool.matmul_tn(saved.x_p.reshape(batch * time, -1), d_pre2)
    if saved.go_backwards:
        dx = _pool.ascontiguous(dx[:, ::-1])
    d_bias = d_bias_rows.sum(axis=0).astype(dtype) if saved.has_bias else None
    return dx, dh, d_kernel, d_bias


def restore_saved(carried, x, kernel, mask, *, has_bias, go_backwards, method="auto"):
    """Rebuild mingru_forward's `saved` from its inputs and its carried array
    (gates), for frameworks that pass it between two calls."""
    (gates,) = carried
    batch, time, _ = gates.shape
    mask_bt, first = _processing_order_mask(mask, batch, time, go_backwards)
    x_p = np.ascontiguousarray(x[:, ::-1]) if go_backwards else x
    if method == "auto":
        method = choose_method(batch, time)
    return MinGRUSaved(x_p, gates, mask_bt, first, kernel, has_bias, go_backwards, method)
