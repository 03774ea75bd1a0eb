"""SimpleRNN forward and backward on the CPU (Numba + BLAS).

    h_t = act(x_t W + b + h_{t-1} U)

Forward: one GEMM projects every step's input, then per step one BLAS call
(h_{t-1} U) and one fused elementwise pass. Backward: per step one fused pass
(d_pre = dh * act'(h_t)) and one BLAS call (d_pre U^T); the weight gradients are
one GEMM each after the loop.

Saved for backward, per step and batch row: x_t (I floats) and h_t (H floats).

One nopython core per direction (forward_core, backward_core) does a whole call on
preallocated arrays. Each is compiled once per dtype as a cfunc called through a table slot
(kernels.runtime.abi, run_forward / run_backward): the launchers below validate, allocate
and call it, and so do the TensorFlow ops' cfuncs (fastrnn/ops/native/_simple_rnn.py).
"""

from dataclasses import dataclass

import numpy as np

from numba import carray, cfunc

from ..runtime import abi as _abi
from ..batch import parts as _parts
from ..batch import pool as _pool
from ..checks import validate as v
from ..blas import microgemm as _microgemm
from ..runtime.abi import put, view1, view2, view3
from ..blas.microgemm import packed_or_empty, product, transposed_for_product
from ..fastmath.common import (
    activate,
    activation_grad,
    add_output_grad,
    all_rows,
    batch_major_into,
    block_gradients,
    inline_jit,
    jit,
    masked_output_rows,
    prepare,
    project,
    steps_per_block,
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
                row = pre[b]
                out_row = out[b, t]
                for j in range(units):
                    out_row[j] = row[j]
            continue
        for b in range(batch):
            if mask[t, b]:
                row = pre[b]
                for j in range(units):
                    row[j] += bias[j]
                activate(act, row)
                out_row = out[b, t]
                for j in range(units):
                    out_row[j] = row[j]
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
                dh_flat = dh.reshape(batch * units)
                rec_flat = rec.reshape(batch * units)
                for k in range(batch * units):
                    dh_flat[k] = rec_flat[k]
                continue
            for b in range(batch):
                if mask[t, b]:
                    dhb = dh[b]
                    rb = rec[b]
                    if rec_mask.size:
                        mb = rec_mask[b]
                        for j in range(units):
                            dhb[j] = rb[j] * mb[j]
                    else:
                        for j in range(units):
                            dhb[j] = rb[j]
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


@inline_jit
def forward_core(x, h0, kernel, recurrent_kernel, bias, mask, has_mask, go_backwards, act,
                 recurrent_mask, packed, out, h_last, x_tm, states, mask_tm, first):
    """A whole simple_rnn_forward call on preallocated arrays (the launcher's and the
    TensorFlow op's one implementation). x [B, T, I], h0 [B, H], kernel [I, H],
    recurrent_kernel [H, H], bias [H] (zeros for no bias); mask [B, T] read only if
    has_mask; recurrent_mask [B, H] or [0, 0] (no recurrent dropout); packed: use the
    packed per-step product. Writes out [B, T, H], h_last [B, H] and what the backward
    reads: x_tm [T, B, I], states [T + 1, B, H], mask_tm [T, B], first [B]."""
    time, batch, units = states.shape[0] - 1, states.shape[1], states.shape[2]
    prepare(x, mask, has_mask, go_backwards, x_tm, mask_tm, first)
    # Element loops, not array assignment (states[0] = h0): that would compile Numba's
    # shape-mismatch error path, seconds of cold compile for each function that has one.
    for b in range(batch):
        for j in range(units):
            states[0, b, j] = h0[b, j]
    _forward_kernel(x_tm, kernel, recurrent_kernel, packed_or_empty(recurrent_kernel, packed),
                    bias, states, out, mask_tm, first, act, recurrent_mask)
    for b in range(batch):
        for j in range(units):
            h_last[b, j] = states[time, b, j]


@inline_jit
def backward_core(x_tm, states, mask_tm, first, kernel, recurrent_kernel, recurrent_mask, d_out,
                  dh, go_backwards, act, packed, dx, d_kernel, d_recurrent, d_bias):
    """A whole simple_rnn_backward call on preallocated arrays. dh [B, H]: d_h_last on
    entry, dh0 on exit. Writes dx [B, T, I], d_kernel [I, H], d_recurrent [H, H] and
    d_bias [H]; the other arrays as forward_core left them."""
    time, batch, units = states.shape[0] - 1, states.shape[1], states.shape[2]
    inputs = x_tm.shape[2]
    dtype = dh.dtype
    steps = steps_per_block(batch * units * dh.itemsize, time)
    d_pre = np.empty((steps, batch, units), dtype)
    h_masked = np.empty((steps if recurrent_mask.size else 0, batch, units), dtype)
    dx_tm = np.empty((time, batch, inputs), dtype)
    d_b = np.zeros(units)  # accumulated in float64 inside the loop
    recurrent_t, recurrent_t_packed = transposed_for_product(recurrent_kernel, packed)
    _backward_kernel(states, x_tm, d_out, dh, recurrent_t, recurrent_t_packed,
                     np.ascontiguousarray(kernel.T), mask_tm, first, act, recurrent_mask, steps,
                     d_pre, h_masked, dx_tm, d_kernel, d_recurrent, d_b)
    for j in range(units):
        d_bias[j] = d_b[j]
    batch_major_into(dx_tm, go_backwards, dx)


# The cores compiled once per dtype, called through their table slots (kernels.runtime.abi). Arrays take
# _abi.SLOTS slots each (put / view); then the settings; then the done flag.
_FORWARD_ARRAYS, _FORWARD_ARGS = 13, 13 * _abi.SLOTS + 4
_BACKWARD_ARRAYS, _BACKWARD_ARGS = 13, 13 * _abi.SLOTS + 3


def _forward_cfunc(dtype):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _FORWARD_ARGS + 1, np.int64)
        s = _FORWARD_ARRAYS * _abi.SLOTS
        forward_core(view3(a, 0, dtype), view2(a, 4, dtype), view2(a, 8, dtype),
                     view2(a, 12, dtype), view1(a, 16, dtype), view2(a, 20, np.bool_),
                     a[s] != 0, a[s + 1] != 0, a[s + 2], view2(a, 24, dtype), a[s + 3] != 0,
                     view3(a, 28, dtype), view2(a, 32, dtype), view3(a, 36, dtype),
                     view3(a, 40, dtype), view2(a, 44, np.bool_), view1(a, 48, np.int64))
        a[_FORWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


def _backward_cfunc(dtype):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _BACKWARD_ARGS + 1, np.int64)
        s = _BACKWARD_ARRAYS * _abi.SLOTS
        backward_core(view3(a, 0, dtype), view3(a, 4, dtype), view2(a, 8, np.bool_),
                      view1(a, 12, np.int64), view2(a, 16, dtype), view2(a, 20, dtype),
                      view2(a, 24, dtype), view3(a, 28, dtype), view2(a, 32, dtype),
                      a[s] != 0, a[s + 1], a[s + 2] != 0, view3(a, 36, dtype),
                      view2(a, 40, dtype), view2(a, 44, dtype), view1(a, 48, dtype))
        a[_BACKWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


_forward_by_name, _backward_by_name, prepare_cores = _abi.register_cell(
    "simple_rnn", _forward_cfunc, _backward_cfunc, (_FORWARD_ARGS, _BACKWARD_ARGS))


@jit
def run_forward(x, h0, kernel, recurrent_kernel, bias, mask, has_mask, go_backwards, act,
                recurrent_mask, packed, out, h_last, x_tm, states, mask_tm, first):
    """forward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_FORWARD_ARGS + 1, np.int64)
    put(a, 0, x)
    put(a, 4, h0)
    put(a, 8, kernel)
    put(a, 12, recurrent_kernel)
    put(a, 16, bias)
    put(a, 20, mask)
    put(a, 24, recurrent_mask)
    put(a, 28, out)
    put(a, 32, h_last)
    put(a, 36, x_tm)
    put(a, 40, states)
    put(a, 44, mask_tm)
    put(a, 48, first)
    s = _FORWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1], a[s + 2], a[s + 3] = has_mask, go_backwards, act, packed
    return _forward_by_name(x, a)


@jit
def run_backward(x_tm, states, mask_tm, first, kernel, recurrent_kernel, recurrent_mask, d_out,
                 dh, go_backwards, act, packed, dx, d_kernel, d_recurrent, d_bias):
    """backward_core through its compiled-once cfunc (call `prepare_cores(dtype)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.zeros(_BACKWARD_ARGS + 1, np.int64)
    put(a, 0, x_tm)
    put(a, 4, states)
    put(a, 8, mask_tm)
    put(a, 12, first)
    put(a, 16, kernel)
    put(a, 20, recurrent_kernel)
    put(a, 24, recurrent_mask)
    put(a, 28, d_out)
    put(a, 32, dh)
    put(a, 36, dx)
    put(a, 40, d_kernel)
    put(a, 44, d_recurrent)
    put(a, 48, d_bias)
    s = _BACKWARD_ARRAYS * _abi.SLOTS
    a[s], a[s + 1], a[s + 2] = go_backwards, act, packed
    return _backward_by_name(dh, a)



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


_NO_MASK = np.ones((0, 0), np.bool_)


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
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(units, x.dtype)
    x_tm = _pool.empty((time, batch, x.shape[2]), x.dtype)
    states = _pool.empty((time + 1, batch, units), x.dtype)
    out = _pool.empty((batch, time, units), x.dtype)
    h_last = np.empty((batch, units), x.dtype)
    mask_tm = np.empty((time, batch), np.bool_)
    first = np.empty(batch, np.int64)
    prepare_cores(x.dtype)
    _abi.finished(run_forward(
        x, h0, kernel, recurrent_kernel, bias, _NO_MASK if mask is None else mask,
        mask is not None, bool(go_backwards), act, rec_mask, bool(_microgemm.wanted()), out,
        h_last, x_tm, states, mask_tm, first), "simple_rnn_forward")
    saved = SimpleRNNSaved(x_tm, states, mask_tm, first, kernel, recurrent_kernel, rec_mask,
                           has_bias, act, go_backwards)
    return out, h_last, saved


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
    dx = _pool.empty((batch, time, inputs), dtype)
    d_kernel = _pool.empty((inputs, units), dtype)
    d_recurrent = _pool.empty((units, units), dtype)
    d_bias = np.empty(units, dtype)
    prepare_cores(dtype)
    _abi.finished(run_backward(
        saved.x_tm, saved.states, saved.mask, saved.first, saved.kernel,
        saved.recurrent_kernel, saved.recurrent_mask, d_out, dh, bool(saved.go_backwards),
        saved.act, bool(_microgemm.wanted()), dx, d_kernel, d_recurrent, d_bias),
        "simple_rnn_backward")
    return dx, dh, d_kernel, d_recurrent, d_bias if saved.has_bias else None
