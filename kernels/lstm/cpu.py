"""LSTM forward and backward on the CPU (Numba + BLAS), Keras gate order i | f | c | o.

    i, f, g, o = rec(z_i), rec(z_f), act(z_c), rec(z_o),   z = x_t W + h_{t-1} U + b
    c_t = f * c_{t-1} + i * g,   h_t = o * act(c_t)

Forward: one GEMM projects every step's input; per step one BLAS call (h U) and
fused elementwise passes; the projected-input buffer is overwritten with the
gates i | f | g | o. Backward: per step fused passes for the gate gradients and
one BLAS call for dh_{t-1}; dx and the weight gradients are GEMMs over blocks of
steps. One nopython core per direction (forward_core, backward_core) does a whole
call on preallocated arrays, compiled once per dtype as a cfunc called through a table slot
(kernels.runtime.abi, run_forward / run_backward): the launchers here validate, allocate
and call it, and so do the TensorFlow ops' kernels (fastrnn/ops/native/_lstm.py).

Saved for backward, per step and batch row: x_t (I floats), i | f | g | o (4H),
h_t, c_t and act(c_t) (3H): I + 7H floats.
"""

from dataclasses import dataclass

import numpy as np
from numba import carray, cfunc

from ..runtime import abi as _abi
from ..blas import microgemm as _microgemm
from ..batch import parts as _parts
from ..batch import pool as _pool
from ..checks import validate as v
from ..runtime.abi import put, view1, view2, view3
from ..blas.microgemm import packed_or_empty, product, transposed_for_product
from ..fastmath.dropout import (
    dropped_product,
    dropped_product_t,
    dropped_recurrent_gradient,
    gate_blocks,
    gate_blocks_transposed,
)
from ..fastmath.common import (
    activate,
    activation_grad,
    add_output_grad,
    batch_major_into,
    block_gradients,
    block_input_gradients,
    inline_jit,
    jit,
    mask_into,
    masked_output_rows,
    per_block,
    project,
    time_major_into,
)


@jit
def _copy_rows(src, dst):
    """dst [B, H] = src [B, H]. Element by element: an array assignment (a[:] = b)
    compiles Numba's shape-mismatch error path, seconds of a cold compile."""
    for b in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[b, j] = src[b, j]


# The cores hold the recurrence loops themselves rather than calling a kernel that
# does: Numba optimizes each compiled function again with its callees linked in, so
# every layer of calls costs compile time (a cold compile of lstm_forward +
# lstm_backward took 11.4 s of CPU per dtype with one layer more, 9.2-9.5 s without).


@inline_jit
def forward_core(x, h0, c0, kernel, recurrent_kernel, bias, mask, has_mask, go_backwards, act,
                 ract, recurrent_mask, packed, out, h_last, c_last, x_tm, gates, h_states,
                 c_states, tanh_c, mask_tm, first):
    """A whole lstm_forward call on preallocated arrays (the launcher's and the
    TensorFlow op's one implementation). x [B, T, I], h0, c0 [B, H], bias [4H]
    (zeros for no bias); mask [B, T] read only if has_mask; recurrent_mask [B, 4H]
    per-gate recurrent dropout (kernels.fastmath.dropout) or [0, 0]; packed: use the packed
    per-step product. Writes out [B, T, H], h_last, c_last [B, H] and what the
    backward reads: x_tm [T, B, I], gates [T, B, 4H] (i | f | g | o of unmasked
    rows), h_states, c_states [T + 1, B, H] (row 0: h0, c0), tanh_c [T, B, H]
    (act(c_t)), mask_tm [T, B], first [B]."""
    time, batch, inputs = x_tm.shape
    width = gates.shape[2]
    units = width // 4
    time_major_into(x, go_backwards, x_tm)
    mask_into(mask, has_mask, go_backwards, mask_tm, first)
    project(x_tm.reshape(time * batch, inputs), kernel, gates.reshape(time * batch, width))
    _copy_rows(h0, h_states[0])
    _copy_rows(c0, c_states[0])
    dropped = recurrent_mask.size > 0
    recurrent_packed = packed_or_empty(recurrent_kernel, packed and not dropped)
    mats, mats_packed = gate_blocks(recurrent_kernel, 4 if dropped else 0, packed)
    hm = np.empty((batch if dropped else 0, units), gates.dtype)
    part = np.empty((batch if dropped else 0, units), gates.dtype)
    rec = np.empty((batch, width), gates.dtype)
    for t in range(time):
        if dropped:
            dropped_product(h_states[t], recurrent_mask, mats, mats_packed, hm, part, rec)
        else:
            product(h_states[t], recurrent_kernel, recurrent_packed, rec, False)
        for b in range(batch):
            if not mask_tm[t, b]:
                for j in range(units):
                    c_states[t + 1, b, j] = c_states[t, b, j]
                continue
            g = gates[t, b]
            u = rec[b]
            for j in range(width):
                g[j] += u[j] + bias[j]
            activate(ract, g[:2 * units])
            activate(act, g[2 * units:3 * units])
            activate(ract, g[3 * units:])
            i = g[:units]
            f = g[units:2 * units]
            cand = g[2 * units:3 * units]
            o = g[3 * units:]
            c_prev = c_states[t, b]
            c = c_states[t + 1, b]
            for j in range(units):
                c[j] = f[j] * c_prev[j] + i[j] * cand[j]
            tc = tanh_c[t, b]
            for j in range(units):
                tc[j] = c[j]
            activate(act, tc)
            h = h_states[t + 1, b]
            for j in range(units):
                h[j] = o[j] * tc[j]
            for j in range(units):
                out[b, t, j] = h[j]
        masked_output_rows(h_states, out, mask_tm, first, t)
    _copy_rows(h_states[time], h_last)
    _copy_rows(c_states[time], c_last)


@jit
def _backward_block(gates, c_states, tanh_c, d_out, dh, dc, recurrent_kernel_t, recurrent_t_packed,
                    mask, first, act, ract, dz, d_bias, rec, slope, slope_c, lo, hi,
                    rec_mask, mats_t, packed_t, dzg, part):
    # Steps hi-1 down to lo of the backward recurrence; dz rows indexed t - lo.
    batch, width = dz.shape[1], dz.shape[2]
    units = width // 4
    for t in range(hi - 1, lo - 1, -1):
        add_output_grad(dh, d_out, mask, first, t)
        for b in range(batch):
            dzr = dz[t - lo, b]
            if not mask[t, b]:
                dzr[:] = 0.0
                continue
            g = gates[t, b]
            i = g[:units]
            f = g[units:2 * units]
            cand = g[2 * units:3 * units]
            o = g[3 * units:]
            tc = tanh_c[t, b]
            c_prev = c_states[t, b]
            dhb = dh[b]
            dcb = dc[b]
            activation_grad(ract, g[:2 * units], slope[:2 * units])
            activation_grad(act, cand, slope[2 * units:3 * units])
            activation_grad(ract, o, slope[3 * units:])
            activation_grad(act, tc, slope_c)
            for j in range(units):
                dcb[j] += dhb[j] * o[j] * slope_c[j]
            for j in range(units):
                dzr[j] = dcb[j] * cand[j] * slope[j]
            for j in range(units):
                dzr[units + j] = dcb[j] * c_prev[j] * slope[units + j]
            for j in range(units):
                dzr[2 * units + j] = dcb[j] * i[j] * slope[2 * units + j]
            for j in range(units):
                dzr[3 * units + j] = dhb[j] * tc[j] * slope[3 * units + j]
            for j in range(units):
                dcb[j] *= f[j]
            for j in range(width):
                d_bias[j] += dzr[j]
        if rec_mask.size:
            dropped_product_t(dz[t - lo], rec_mask, mats_t, packed_t, dzg, part, rec)
        else:
            product(dz[t - lo], recurrent_kernel_t, recurrent_t_packed, rec, False)
        for b in range(batch):
            if mask[t, b]:
                for j in range(units):
                    dh[b, j] = rec[b, j]


@inline_jit
def backward_core(x_tm, gates, h_states, c_states, tanh_c, mask_tm, first, kernel,
                  recurrent_kernel, recurrent_mask, d_out, dh, dc, go_backwards, act, ract,
                  packed, dx, d_kernel, d_recurrent, d_bias, dz, dx_tm):
    """A whole lstm_backward call on preallocated arrays. dh, dc [B, H]: d_h_last,
    d_c_last on entry, dh0, dc0 on exit. Writes dx [B, T, I], d_kernel [I, 4H],
    d_recurrent [H, 4H] and d_bias [4H]; the other arrays as forward_core left them.

    Time runs backward in blocks of dz.shape[0] steps: dz [steps, B, 4H] (scratch,
    indexed t - block start) = dL/d(x W + h U + b), and after each block three GEMMs
    turn it into the block's dx_tm [T, B, I] rows (scratch) and add its share of
    d_kernel and d_recurrent (overwritten by the first block) while it is in cache.

    The scratch is the caller's: the launcher's comes from the pool. Allocated here,
    split calls (kernels.batch.parts: the parts' backwards at once on OpenBLAS' threads)
    measured B16 T1024 I64 H128 backward 95 -> 120 ms, glibc handing the fresh
    16 MiB back to the OS after every call. Its steps also follow BLOCK_BYTES as set
    at run time (per_block), where a compiled steps_per_block keeps its value."""
    time, batch, width = gates.shape
    units = width // 4
    dtype = dh.dtype
    steps = dz.shape[0]
    d_b = np.zeros(width)  # the bias gradient accumulates in float64 inside the loop
    dropped = recurrent_mask.size > 0
    recurrent_t, recurrent_t_packed = transposed_for_product(recurrent_kernel, packed)
    mats_t, packed_t = gate_blocks_transposed(recurrent_kernel, 4 if dropped else 0, packed)
    dzg = np.empty((batch if dropped else 0, units), dtype)
    part = np.empty((batch if dropped else 0, units), dtype)
    kernel_t = np.ascontiguousarray(kernel.T)
    rec = np.empty((batch, units), dtype)
    slope = np.empty(width, dtype)
    slope_c = np.empty(units, dtype)
    hi = time
    while hi > 0:
        lo = max(0, hi - steps)
        _backward_block(gates, c_states, tanh_c, d_out, dh, dc, recurrent_t, recurrent_t_packed,
                        mask_tm, first, act, ract, dz, d_b, rec, slope, slope_c, lo, hi,
                        recurrent_mask, mats_t, packed_t, dzg, part)
        if dropped:
            block_input_gradients(dz[:hi - lo], x_tm, kernel_t, lo, hi, time, dx_tm, d_kernel)
            dropped_recurrent_gradient(h_states[lo:hi], dz[:hi - lo], recurrent_mask, 4,
                                       d_recurrent, hi < time)
        else:
            block_gradients(dz[:hi - lo], dz[:hi - lo], h_states[lo:hi], x_tm, kernel_t, lo,
                            hi, time, dx_tm, d_kernel, d_recurrent)
        hi = lo
    for j in range(width):
        d_bias[j] = d_b[j]
    batch_major_into(dx_tm, go_backwards, dx)


# The cores compiled once per dtype, called through their table slots (kernels.runtime.abi). Arrays take
# _abi.SLOTS slots each (put / view); then the settings; then the done flag.
_FORWARD_ARRAYS, _FORWARD_ARGS = 18, 18 * _abi.SLOTS + 5
_BACKWARD_ARRAYS, _BACKWARD_ARGS = 19, 19 * _abi.SLOTS + 4


def _forward_cfunc(dtype):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _FORWARD_ARGS + 1, np.int64)
        s = _FORWARD_ARRAYS * _abi.SLOTS
        forward_core(view3(a, 0, dtype), view2(a, 4, dtype), view2(a, 8, dtype),
                     view2(a, 12, dtype), view2(a, 16, dtype), view1(a, 20, dtype),
                     view2(a, 24, np.bool_), a[s] != 0, a[s + 1] != 0, a[s + 2], a[s + 3],
                     view2(a, 68, dtype), a[s + 4] != 0, view3(a, 28, dtype), view2(a, 32, dtype),
                     view2(a, 36, dtype), view3(a, 40, dtype), view3(a, 44, dtype),
                     view3(a, 48, dtype), view3(a, 52, dtype), view3(a, 56, dtype),
                     view2(a, 60, np.bool_), view1(a, 64, np.int64))
        a[_FORWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


def _backward_cfunc(dtype):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _BACKWARD_ARGS + 1, np.int64)
        s = _BACKWARD_ARRAYS * _abi.SLOTS
        backward_core(view3(a, 0, dtype), view3(a, 4, dtype), view3(a, 8, dtype),
                      view3(a, 12, dtype), view3(a, 16, dtype), view2(a, 20, np.bool_),
                      view1(a, 24, np.int64), view2(a, 28, dtype), view2(a, 32, dtype),
                      view2(a, 72, dtype), view3(a, 36, dtype), view2(a, 40, dtype), view2(a, 44, dtype),
                      a[s] != 0, a[s + 1], a[s + 2], a[s + 3] != 0, view3(a, 48, dtype),
                      view2(a, 52, dtype), view2(a, 56, dtype), view1(a, 60, dtype),
                      view3(a, 64, dtype), view3(a, 68, dtype))
        a[_BACKWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


_forward_by_name, _backward_by_name, prepare_cores = _abi.register_cell(
    "lstm", _forward_cfunc, _backward_cfunc, (_FORWARD_ARGS, _BACKWARD_ARGS))


@jit
def run_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask, has_mask, go_backwards, act,
                ract, recurrent_mask, packed, out, h_last, c_last, x_tm, gates, h_states,
                c_states, tanh_c, mask_tm, first):
    """forward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_FORWARD_ARGS + 1, np.int64)
    put(a, 0, x)
    put(a, 4, h0)
    put(a, 8, c0)
    put(a, 12, kernel)
    put(a, 16, recurrent_kernel)
    put(a, 20, bias)
    put(a, 24, mask)
    put(a, 28, out)
    put(a, 32, h_last)
    put(a, 36, c_last)
    put(a, 40, x_tm)
    put(a, 44, gates)
    put(a, 48, h_states)
    put(a, 52, c_states)
    put(a, 56, tanh_c)
    put(a, 60, mask_tm)
    put(a, 64, first)
    put(a, 68, recurrent_mask)
    s = _FORWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1], a[s + 2], a[s + 3], a[s + 4] = has_mask, go_backwards, act, ract, packed
    return _forward_by_name(x, a)


@jit
def run_backward(x_tm, gates, h_states, c_states, tanh_c, mask_tm, first, kernel,
                 recurrent_kernel, recurrent_mask, d_out, dh, dc, go_backwards, act, ract, packed,
                 dx, d_kernel, d_recurrent, d_bias, dz, dx_tm):
    """backward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_BACKWARD_ARGS + 1, np.int64)
    put(a, 0, x_tm)
    put(a, 4, gates)
    put(a, 8, h_states)
    put(a, 12, c_states)
    put(a, 16, tanh_c)
    put(a, 20, mask_tm)
    put(a, 24, first)
    put(a, 28, kernel)
    put(a, 32, recurrent_kernel)
    put(a, 36, d_out)
    put(a, 40, dh)
    put(a, 44, dc)
    put(a, 48, dx)
    put(a, 52, d_kernel)
    put(a, 56, d_recurrent)
    put(a, 60, d_bias)
    put(a, 64, dz)
    put(a, 68, dx_tm)
    put(a, 72, recurrent_mask)
    s = _BACKWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1], a[s + 2], a[s + 3] = go_backwards, act, ract, packed
    return _backward_by_name(dh, a)



@dataclass(eq=False)
class LSTMSaved:
    """What lstm_backward needs; treat as opaque."""

    x_tm: np.ndarray
    gates: np.ndarray
    h_states: np.ndarray
    c_states: np.ndarray
    tanh_c: np.ndarray
    mask: np.ndarray
    first: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    recurrent_mask: np.ndarray  # [B, 4H], or [0, 0] without recurrent dropout
    has_bias: bool
    act: int
    ract: int
    go_backwards: bool


_NO_MASK = np.ones((0, 0), np.bool_)


def lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, go_backwards=False,
                 activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None):
    """LSTM over a whole sequence, Keras semantics and weight layout (i | f | c | o).

    Args:
        x: [B, T, I] float32 or float64.
        h0, c0: [B, H] initial states, or None for zeros.
        kernel: [I, 4H]. recurrent_kernel: [H, 4H]. bias: [4H] or None.
        mask: bool [B, T] or None. A masked step keeps both states and repeats the
            previous output (zeros before the first unmasked step).
        go_backwards: process time in reverse; outputs are in processing order.
        activation: for the candidate and for c_t ("tanh" default).
        recurrent_activation: for the i, f, o gates ("sigmoid" default).
        recurrent_mask: [B, 4H] or None. Keras' per-gate recurrent dropout
            (implementation=1): gate g's product takes h_{t-1} * recurrent_mask[:,
            gH:(g+1)H] (the same masks at every step) before its block of U.

    Returns:
        out [B, T, H], h_last [B, H], c_last [B, H], saved (for lstm_backward).
    """
    x = v.check_x(x)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 4, bias, lambda h: (4 * h,))
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype)
    c0 = v.check_state(c0, "c0", batch, units, x.dtype)
    act = v.activation_code(activation)
    ract = v.activation_code(recurrent_activation, "recurrent_activation")
    mask = v.check_mask(mask, batch, time)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, 4 * units, x.dtype,
                                      meaning="[batch, 4 * units] (a mask per gate)")
    parts = _parts.plan(batch, time, x.shape[2], 4 * units)
    if parts > 1:
        return _parts.forward(lambda rows: lstm_forward(
            x[rows], h0[rows], c0[rows], kernel, recurrent_kernel, bias,
            None if mask is None else mask[rows], go_backwards, activation,
            recurrent_activation, rec_mask[rows] if rec_mask.size else None),
            batch, time, units, x.dtype, parts)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(4 * units, x.dtype)
    inputs = x.shape[2]
    x_tm = _pool.empty((time, batch, inputs), x.dtype)
    gates = _pool.empty((time, batch, 4 * units), x.dtype)
    h_states = _pool.empty((time + 1, batch, units), x.dtype)
    c_states = _pool.empty((time + 1, batch, units), x.dtype)
    tanh_c = _pool.empty((time, batch, units), x.dtype)
    out = _pool.empty((batch, time, units), x.dtype)
    h_last = np.empty((batch, units), x.dtype)
    c_last = np.empty((batch, units), x.dtype)
    mask_tm = np.empty((time, batch), np.bool_)
    first = np.empty(batch, np.int64)
    prepare_cores(x.dtype)
    _abi.finished(run_forward(
        x, h0, c0, kernel, recurrent_kernel, bias, _NO_MASK if mask is None else mask,
        mask is not None, bool(go_backwards), act, ract, rec_mask, _microgemm.wanted(), out,
        h_last, c_last, x_tm, gates, h_states, c_states, tanh_c, mask_tm, first), "lstm_forward")
    saved = LSTMSaved(x_tm, gates, h_states, c_states, tanh_c, mask_tm, first, kernel,
                      recurrent_kernel, rec_mask, has_bias, act, ract, go_backwards)
    return out, h_last, c_last, saved


def lstm_backward(saved, d_out, d_h_last, d_c_last):
    """Gradients of lstm_forward.

    Returns:
        dx [B, T, I], dh0 [B, H], dc0 [B, H], d_kernel [I, 4H], d_recurrent_kernel
        [H, 4H], d_bias [4H] (None when the forward had no bias).
    """
    if type(saved) is _parts.SplitSaved:
        return _parts.backward(lstm_backward, saved, (d_out, d_h_last, d_c_last),
                               ("d_out", "d_h_last", "d_c_last"))
    v.check_saved(saved, LSTMSaved, "lstm_forward")
    time, batch, width = saved.gates.shape
    units = width // 4
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype)
    dh = _pool.copy(v.check_grad(d_h_last, "d_h_last", (batch, units), dtype))
    dc = _pool.copy(v.check_grad(d_c_last, "d_c_last", (batch, units), dtype))
    inputs = saved.x_tm.shape[2]
    dx = _pool.empty((batch, time, inputs), dtype)
    d_kernel = _pool.empty((inputs, width), dtype)
    d_recurrent = _pool.empty((units, width), dtype)
    d_bias = np.empty(width, dtype)
    steps = per_block(batch * width * dtype.itemsize, time)
    prepare_cores(dtype)
    _abi.finished(run_backward(
        saved.x_tm, saved.gates, saved.h_states, saved.c_states, saved.tanh_c, saved.mask,
        saved.first, saved.kernel, saved.recurrent_kernel, saved.recurrent_mask, d_out, dh, dc,
        bool(saved.go_backwards), saved.act, saved.ract, _microgemm.wanted(), dx, d_kernel,
        d_recurrent, d_bias, _pool.empty((steps, batch, width), dtype),
        _pool.empty((time, batch, inputs), dtype)), "lstm_backward")
    return dx, dh, dc, d_kernel, d_recurrent, d_bias if saved.has_bias else None
