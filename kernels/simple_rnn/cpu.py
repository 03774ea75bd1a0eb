"""SimpleRNN forward and backward on the CPU (Numba + BLAS).

    h_t = act(x_t W + b + h_{t-1} U)

Forward: one GEMM projects every step's input, then per step one BLAS call
(h_{t-1} U) and one fused elementwise pass. Backward: per step one fused pass
(d_pre = dh * act'(h_t)) and one BLAS call (d_pre U^T); the weight gradients are
one GEMM each after the loop.

Saved for backward, per step and batch row: x_t (I floats) and h_t (H floats).
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
    all_rows,
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
def _forward_kernel(x_tm, kernel, recurrent_kernel, recurrent_packed, bias, states, out, mask,
                    first, act, rec_mask):
    # states [T+1, B, H] with states[0] = h0: rows 1.. first get x W (one GEMM for every
    # step), then step t adds (h_{t-1} * m) U and b and applies act in place, so
    # states[t + 1] = h_t with no separate projection buffer. out [B, T, H];
    # rec_mask m [B, H] or [0, 0].
    time, batch, units = states.shape[0] - 1, states.shape[1], states.shape[2]
    project(x_tm.reshape(time * batch, x_tm.shape[2]), kernel,
            states[1:].reshape(time * batch, units))
    dropped = np.empty((batch, units), states.dtype)
    for t in range(time):
        pre = states[t + 1]
        if rec_mask.size:
            h_prev = states[t]
            for b in range(batch):
                for j in range(units):
                    dropped[b, j] = h_prev[b, j] * rec_mask[b, j]
            product(dropped, recurrent_kernel, recurrent_packed, pre, True)
        else:
            product(states[t], recurrent_kernel, recurrent_packed, pre, True)
        if all_rows(mask, t):
            for b in range(batch):
                row = pre[b]
                for j in range(units):
                    row[j] += bias[j]
            activate(act, pre.reshape(batch * units))
            for b in range(batch):
                out[b, t] = pre[b]
            continue
        for b in range(batch):
            if mask[t, b]:
                row = pre[b]
                for j in range(units):
                    row[j] += bias[j]
                activate(act, row)
                out[b, t] = row
        # Rows masked at t: their projection is overwritten with the kept state.
        masked_output_rows(states, out, mask, first, t)


@jit
def _backward_kernel(states, x_tm, d_out, dh, recurrent_kernel_t, recurrent_t_packed, kernel_t,
                     mask, first, act, rec_mask, steps, d_pre, h_masked, dx_tm, d_kernel, d_recurrent, d_bias):
    # dh [B, H] holds dL/dh_T on entry and dL/dh_0 on exit. Time runs backward in
    # blocks of `steps` steps: d_pre [steps, B, H] (scratch, indexed t - block start)
    # = dL/d(pre-activation), and after each block three GEMMs turn it into the
    # block's dx_tm [T, B, I] rows and add its share of d_kernel [I, H] and
    # d_recurrent [H, H] (overwritten by the first block) while it is in cache.
    # h_masked [steps, B, H]: scratch for h_{t-1} * m under recurrent dropout.
    # d_bias [H] (float64) += the column sums of d_pre.
    time, batch, units = states.shape[0] - 1, states.shape[1], states.shape[2]
    rec = np.empty((batch, units), dh.dtype)
    hi = time
    while hi > 0:
        lo = max(0, hi - steps)
        for t in range(hi - 1, lo - 1, -1):
            add_output_grad(dh, d_out, mask, first, t)
            full = all_rows(mask, t)
            if full:
                # The whole [B, H] slab at once (see all_rows).
                dp = d_pre[t - lo]
                flat = dp.reshape(batch * units)
                activation_grad(act, states[t + 1].reshape(batch * units), flat)
                dh_flat = dh.reshape(batch * units)
                for k in range(batch * units):
                    flat[k] *= dh_flat[k]
                for b in range(batch):
                    for j in range(units):
                        d_bias[j] += dp[b, j]
            else:
                for b in range(batch):
                    row = d_pre[t - lo, b]
                    if mask[t, b]:
                        activation_grad(act, states[t + 1, b], row)
                        for j in range(units):
                            row[j] *= dh[b, j]
                            d_bias[j] += row[j]
                    else:
                        row[:] = 0.0
            product(d_pre[t - lo], recurrent_kernel_t, recurrent_t_packed, rec, False)
            if full and not rec_mask.size:
                dh[:] = rec
                continue
            for b in range(batch):
                if mask[t, b]:
                    dh[b] = rec[b]
                    if rec_mask.size:
                        for j in range(units):
                            dh[b, j] *= rec_mask[b, j]
        h_prev = states[lo:hi]
        if rec_mask.size:
            for t in range(lo, hi):
                for b in range(batch):
                    for j in range(units):
                        h_masked[t - lo, b, j] = states[t, b, j] * rec_mask[b, j]
            h_prev = h_masked[:hi - lo]
        block_gradients(d_pre[:hi - lo], d_pre[:hi - lo], h_prev, x_tm, kernel_t, lo, hi, time,
                        dx_tm, d_kernel, d_recurrent)
        hi = lo


@dataclass(eq=False)
class SimpleRNNSaved:
    """What simple_rnn_backward needs; treat as opaque."""

    x_tm: np.ndarray
    states: np.ndarray
    mask: np.ndarray
    first: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    recurrent_mask: np.ndarray  # [B, H], or [0, 0] without recurrent dropout
    has_bias: bool
    act: int
    go_backwards: bool


def simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias, activation="tanh",
                       mask=None, go_backwards=False, recurrent_mask=None):
    """SimpleRNN over a whole sequence, Keras semantics.

    Args:
        x: [B, T, I] float32 or float64.
        h0: [B, H] initial state, or None for zeros.
        kernel: [I, H]. recurrent_kernel: [H, H]. bias: [H] or None (use_bias=False).
        activation: "tanh" (default), "relu", "sigmoid", "hard_sigmoid", "linear" or None.
        mask: bool [B, T] or None. A masked step keeps the state and repeats the
            previous output (zeros before the first unmasked step).
        go_backwards: process time in reverse; outputs are in processing order.
        recurrent_mask: [B, H] or None. Keras' recurrent dropout: h_{t-1} is
            multiplied by it (the same mask at every step) before U.

    Returns:
        out [B, T, H], h_last [B, H], saved (for simple_rnn_backward).
    """
    x = v.check_x(x)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 1, bias, lambda h: (h,))
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype)
    act = v.activation_code(activation)
    mask = v.check_mask(mask, batch, time)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, units, x.dtype)
    parts = _parts.plan(batch, time, x.shape[2], units)
    if parts > 1:
        return _parts.forward(lambda rows: simple_rnn_forward(
            x[rows], h0[rows], kernel, recurrent_kernel, bias, activation,
            None if mask is None else mask[rows], go_backwards,
            rec_mask[rows] if rec_mask.size else None), batch, time, units, x.dtype, parts)
    mask_tm, first = time_major_mask(mask, batch, time, go_backwards)

    x_tm = to_time_major(x, go_backwards)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(units, x.dtype)
    states = _pool.empty((time + 1, batch, units), x.dtype)
    states[0] = h0
    out = _pool.empty((batch, time, units), x.dtype)
    _forward_kernel(x_tm, kernel, recurrent_kernel, pack_for(recurrent_kernel), bias, states, out,
                    mask_tm, first, act, rec_mask)
    saved = SimpleRNNSaved(x_tm, states, mask_tm, first, kernel, recurrent_kernel, rec_mask,
                           has_bias, act, go_backwards)
    return out, _pool.copy(states[time]), saved


def simple_rnn_backward(saved, d_out, d_h_last):
    """Gradients of simple_rnn_forward.

    Args:
        saved: the third value returned by simple_rnn_forward.
        d_out: [B, T, H] gradient of the outputs, or None.
        d_h_last: [B, H] gradient of the final state, or None.

    Returns:
        dx [B, T, I], dh0 [B, H], d_kernel [I, H], d_recurrent_kernel [H, H],
        d_bias [H] (None when the forward had no bias).
    """
    if type(saved) is _parts.SplitSaved:
        return _parts.backward(simple_rnn_backward, saved, (d_out, d_h_last),
                               ("d_out", "d_h_last"))
    v.check_saved(saved, SimpleRNNSaved, "simple_rnn_forward")
    time, batch, units = saved.states.shape[0] - 1, saved.states.shape[1], saved.states.shape[2]
    dtype = saved.states.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype)
    dh = _pool.copy(v.check_grad(d_h_last, "d_h_last", (batch, units), dtype))

    inputs = saved.x_tm.shape[2]
    steps = per_block(batch * units * dtype.itemsize, time)
    d_pre = _pool.empty((steps, batch, units), dtype)
    h_masked = _pool.empty((steps if saved.recurrent_mask.size else 0, batch, units), dtype)
    dx_tm = _pool.empty((time, batch, inputs), dtype)
    d_kernel = _pool.empty((inputs, units), dtype)
    d_recurrent = _pool.empty((units, units), dtype)
    d_bias = np.zeros(units)  # accumulated in float64 inside the loop
    recurrent_t = np.ascontiguousarray(saved.recurrent_kernel.T)
    _backward_kernel(saved.states, saved.x_tm, d_out, dh, recurrent_t, pack_for(recurrent_t),
                     np.ascontiguousarray(saved.kernel.T), saved.mask, saved.first, saved.act,
                     saved.recurrent_mask, steps, d_pre, h_masked, dx_tm, d_kernel, d_recurrent,
                     d_bias)
    dx = from_time_major(dx_tm, saved.go_backwards)
    d_bias = d_bias.astype(dtype) if saved.has_bias else None
    return dx, dh, d_kernel, d_recurrent, d_bias
