"""LSTM forward and backward on the CPU (Numba + BLAS), Keras gate order i | f | c | o.

    i, f, g, o = rec(z_i), rec(z_f), act(z_c), rec(z_o),   z = x_t W + h_{t-1} U + b
    c_t = f * c_{t-1} + i * g,   h_t = o * act(c_t)

Forward: one GEMM projects every step's input; per step one BLAS call (h U) and
fused elementwise passes; the projected-input buffer is overwritten with the
gates i | f | g | o. Backward: per step fused passes for the gate gradients and
one BLAS call for dh_{t-1}; weight gradients are one GEMM each after the loop.

Saved for backward, per step and batch row: x_t (I floats), i | f | g | o (4H),
h_t, c_t and act(c_t) (3H): I + 7H floats.
"""

from dataclasses import dataclass

import numpy as np

from .. import _parts, _pool
from .. import _validate as v
from .._microgemm import pack_for, product
from .._cpu_common import (
    activate,
    activation_grad,
    add_output_grad,
    block_gradients,
    per_block,
    from_time_major,
    project,
    jit,
    masked_output_rows,
    time_major_mask,
    to_time_major,
)


@jit
def _forward_kernel(gates, recurrent_kernel, recurrent_packed, bias, h_states, c_states, tanh_c,
                    out, mask, first, act, ract):
    # gates [T, B, 4H]: x W on entry, i | f | g | o on exit (unmasked rows).
    # h_states, c_states [T+1, B, H] (row 0: h0, c0); tanh_c [T, B, H] = act(c_t).
    # recurrent_packed: the recurrent kernel packed for _microgemm.product, or empty.
    time, batch, width = gates.shape
    units = width // 4
    rec = np.empty((batch, width), gates.dtype)
    for t in range(time):
        product(h_states[t], recurrent_kernel, recurrent_packed, rec, False)
        for b in range(batch):
            if not mask[t, b]:
                c_states[t + 1, b] = c_states[t, b]
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
            tc[:] = c
            activate(act, tc)
            h = h_states[t + 1, b]
            for j in range(units):
                h[j] = o[j] * tc[j]
            out[b, t] = h
        masked_output_rows(h_states, out, mask, first, t)


@jit
def _backward_kernel(gates, h_states, c_states, tanh_c, x_tm, d_out, dh, dc, recurrent_kernel_t,
                     recurrent_t_packed, kernel_t, mask, first, act, ract, steps, dz, dx_tm, d_kernel, d_recurrent,
                     d_bias):
    # dh, dc [B, H]: dL/dh_T, dL/dc_T on entry, dL/dh_0, dL/dc_0 on exit. Time runs
    # backward in blocks of `steps` steps: dz [steps, B, 4H] (scratch, indexed
    # t - block start) = dL/d(x W + h U + b), and after each block three GEMMs turn it
    # into the block's dx_tm [T, B, I] rows and add its share of d_kernel [I, 4H] and
    # d_recurrent [H, 4H] (overwritten by the first block) while it is in cache.
    # d_bias [4H] (float64) += the column sums of dz.
    time, batch, width = gates.shape
    units = width // 4
    rec = np.empty((batch, units), dh.dtype)
    slope = np.empty(width, dh.dtype)
    slope_c = np.empty(units, dh.dtype)
    hi = time
    while hi > 0:
        lo = max(0, hi - steps)
        _backward_block(gates, c_states, tanh_c, d_out, dh, dc, recurrent_kernel_t,
                        recurrent_t_packed, mask, first, act, ract, dz, d_bias, rec, slope, slope_c, lo, hi)
        block_gradients(dz[:hi - lo], dz[:hi - lo], h_states[lo:hi], x_tm, kernel_t, lo, hi,
                        time, dx_tm, d_kernel, d_recurrent)
        hi = lo


@jit
def _backward_block(gates, c_states, tanh_c, d_out, dh, dc, recurrent_kernel_t, recurrent_t_packed,
                    mask, first, act, ract, dz, d_bias, rec, slope, slope_c, lo, hi):
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
        product(dz[t - lo], recurrent_kernel_t, recurrent_t_packed, rec, False)
        for b in range(batch):
            if mask[t, b]:
                dh[b] = rec[b]


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
    has_bias: bool
    act: int
    ract: int
    go_backwards: bool


def lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, go_backwards=False,
                 activation="tanh", recurrent_activation="sigmoid"):
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
    parts = _parts.plan(batch, time, x.shape[2], 4 * units)
    if parts > 1:
        return _parts.forward(lambda rows: lstm_forward(
            x[rows], h0[rows], c0[rows], kernel, recurrent_kernel, bias,
            None if mask is None else mask[rows], go_backwards, activation,
            recurrent_activation), batch, time, units, x.dtype, parts)
    mask_tm, first = time_major_mask(mask, batch, time, go_backwards)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(4 * units, x.dtype)

    x_tm = to_time_major(x, go_backwards)
    gates = _pool.empty((time, batch, 4 * units), x.dtype)
    project(x_tm.reshape(time * batch, -1), kernel, gates.reshape(time * batch, -1))
    h_states = _pool.empty((time + 1, batch, units), x.dtype)
    c_states = _pool.empty((time + 1, batch, units), x.dtype)
    h_states[0] = h0
    c_states[0] = c0
    tanh_c = _pool.empty((time, batch, units), x.dtype)
    out = _pool.empty((batch, time, units), x.dtype)
    _forward_kernel(gates, recurrent_kernel, pack_for(recurrent_kernel), bias, h_states, c_states,
                    tanh_c, out, mask_tm, first, act, ract)
    saved = LSTMSaved(x_tm, gates, h_states, c_states, tanh_c, mask_tm, first, kernel,
                      recurrent_kernel, has_bias, act, ract, go_backwards)
    return out, _pool.copy(h_states[time]), _pool.copy(c_states[time]), saved


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
    steps = per_block(batch * width * dtype.itemsize, time)
    dz = _pool.empty((steps, batch, width), dtype)
    dx_tm = _pool.empty((time, batch, inputs), dtype)
    d_kernel = _pool.empty((inputs, width), dtype)
    d_recurrent = _pool.empty((units, width), dtype)
    d_bias = np.zeros(width)
    recurrent_t = np.ascontiguousarray(saved.recurrent_kernel.T)
    _backward_kernel(saved.gates, saved.h_states, saved.c_states, saved.tanh_c, saved.x_tm, d_out,
                     dh, dc, recurrent_t, pack_for(recurrent_t), np.ascontiguousarray(saved.kernel.T),
                     saved.mask, saved.first, saved.act,
                     saved.ract, steps, dz, dx_tm, d_kernel, d_recurrent, d_bias)
    dx = from_time_major(dx_tm, saved.go_backwards)
    return dx, dh, dc, d_kernel, d_recurrent, d_bias.astype(dtype) if saved.has_bias else None
