"""SimpleRNN forward and backward on the GPU: cuBLAS GEMMs (CuPy) + fused numba.cuda passes.

    h_t = act(x_t W + b + (h_{t-1} * m) U)        (m: recurrent dropout mask, or 1)

Same signatures and semantics as kernels/simple_rnn/cpu.py, CuPy arrays in and
out. Forward: one GEMM for every step's input, then one loop kernel: a block
per batch row runs every step, (h_{t-1} m) U as a block matvec with U's first
rows in shared memory, then the fused step (see kernels/gpu/block.py).
Backward: one loop kernel, per step d_pre = dh act'(h_t) and the matvec
d_pre U^T, which the next step adds to dh (times m); weight gradients are one
GEMM each after the loop.
Saved per step and batch row: x_t (I floats) and h_t (H).
"""

from dataclasses import dataclass

from numba import cuda  # a module global: the simulator swaps it inside kernels

from ..gpu import cuda as cu
from ..checks import validate as v
from ..gpu.block import block_math
from .cpu import SimpleRNNSaved


def _build(F):
    m = cu.device_math(F)
    activate, activation_grad, zero = m.activate, m.activation_grad, m.zero
    bm = block_math(F)
    matvec, stage, layout = bm.matvec, bm.stage, bm.layout

    @cuda.jit(device=True)
    def forward_step(xw, rec, bias, states, out, mask, first, t, act, b, j):
        # xw [T, B, H] = x W; rec [B, H] = (h_{t-1} m) U.
        if mask[t, b]:
            h = activate(act, xw[t, b, j] + rec[b, j] + bias[j])
            states[t + 1, b, j] = h
            out[b, t, j] = h
        else:
            h_prev = states[t, b, j]
            states[t + 1, b, j] = h_prev
            out[b, t, j] = h_prev if t > first[b] else zero

    @cuda.jit(**cu.row_jit_options())
    def forward(xw, u, rec, bias, states, out, mask, first, rec_mask, dropped, cached, act):
        # One block per batch row b, every step: rec[b] = (h_{t-1} m) U, then the step.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = xw.shape[0], xw.shape[2]
        scratch, vs, cache = layout(units)
        stage(u, cached, cache)
        cuda.syncthreads()
        for t in range(time):
            if rec_mask.shape[0]:
                for j in range(tid, units, threads):
                    dropped[b, j] = states[t, b, j] * rec_mask[b, j]
                cuda.syncthreads()
                matvec(dropped[b], u, cache, cached, rec[b], scratch, vs)
            else:
                matvec(states[t, b], u, cache, cached, rec[b], scratch, vs)
            cuda.syncthreads()
            for j in range(tid, units, threads):
                forward_step(xw, rec, bias, states, out, mask, first, t, act, b, j)
            cuda.syncthreads()

    @cuda.jit(device=True)
    def backward_step(states, d_out, dh, rec, rec_mask, mask, first, t, act, d_pre, b, j):
        # rec = d_pre_{t+1} U^T (zero rows where step t+1 was masked); dh = the rest.
        r = rec[b, j]
        if rec_mask.shape[0]:
            r *= rec_mask[b, j]
        g = dh[b, j] + r
        if t >= first[b]:
            g += d_out[b, t, j]
        if mask[t, b]:
            d_pre[t, b, j] = g * activation_grad(act, states[t + 1, b, j])
            dh[b, j] = zero
        else:
            d_pre[t, b, j] = zero
            dh[b, j] = g

    @cuda.jit(**cu.row_jit_options())
    def backward(states, d_out, dh, rec, rec_mask, mask, first, act, d_pre, u_t, cached):
        # One block per batch row, steps in reverse: the step, then rec[b] = d_pre_t U^T.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = d_pre.shape[0], d_pre.shape[2]
        scratch, vs, cache = layout(units)
        stage(u_t, cached, cache)
        cuda.syncthreads()
        for t in range(time - 1, -1, -1):
            for j in range(tid, units, threads):
                backward_step(states, d_out, dh, rec, rec_mask, mask, first, t, act, d_pre, b, j)
            cuda.syncthreads()
            matvec(d_pre[t, b], u_t, cache, cached, rec[b], scratch, vs)
            cuda.syncthreads()

    return dict(forward=forward, backward=backward)


KERNELS = cu.KernelSet(_build, {
    "forward": "f3 f2 f2 f1 f3 f3 b2 i1 f2 f2 i i",
    "backward": "f3 f3 f2 f2 f2 b2 i1 i f3 f2 i",
})


@dataclass(eq=False)
class SimpleRNNSavedCUDA(SimpleRNNSaved):
    """What the CUDA backward needs (the CPU fields, holding CuPy arrays); opaque."""


def simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias, activation="tanh",
                       mask=None, go_backwards=False, recurrent_mask=None):
    """SimpleRNN on the GPU; arguments and results as kernels.simple_rnn_forward, as CuPy arrays."""
    xp = cu.array_module(x)
    x = v.check_x(x, xp)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 1, bias, lambda h: (h,), xp)
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype, xp)
    act = v.activation_code(activation)
    mask_tm, first = cu.time_major_mask(xp, v.check_mask(mask, batch, time, xp), batch, time,
                                        go_backwards)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, units, x.dtype, xp)
    has_bias = bias is not None
    if bias is None:
        bias = xp.zeros(units, x.dtype)
    k = KERNELS.get(x.dtype)
    stream = cu.stream_for(xp)

    x_tm = cu.to_time_major(xp, x, go_backwards)
    xw = cu.matmul(xp, x_tm.reshape(time * batch, -1), kernel).reshape(time, batch, units)
    states = xp.empty((time + 1, batch, units), x.dtype)
    states[0] = h0
    out = xp.empty((batch, time, units), x.dtype)
    rec = xp.empty((batch, units), x.dtype)
    dropped = xp.empty((batch, units), x.dtype) if rec_mask.size else rec_mask
    (cached,), shared = cu.row_plan(x.dtype, units, [(units, units)])
    cu.launch_rows(k.forward, batch, stream, shared, *[cu.device(a) for a in (
        xw, recurrent_kernel, rec, bias, states, out, mask_tm, first, rec_mask, dropped)],
        cached, act)
    saved = SimpleRNNSavedCUDA(x_tm, states, mask_tm, first, kernel, recurrent_kernel, rec_mask,
                               has_bias, act, go_backwards)
    return out, states[time].copy(), saved


def simple_rnn_backward(saved, d_out, d_h_last):
    """Gradients of the CUDA simple_rnn_forward, as kernels.simple_rnn_backward."""
    v.check_saved(saved, SimpleRNNSavedCUDA, "simple_rnn_forward (CUDA)")
    xp = cu.array_module(saved.states, "saved")
    time, batch, units = saved.states.shape[0] - 1, saved.states.shape[1], saved.states.shape[2]
    dtype = saved.states.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype, xp)
    dh = v.check_grad(d_h_last, "d_h_last", (batch, units), dtype, xp).copy()
    k = KERNELS.get(dtype)
    stream = cu.stream_for(xp)
    d_pre = xp.empty((time, batch, units), dtype)
    rec = xp.zeros((batch, units), dtype)
    rk_t = xp.ascontiguousarray(saved.recurrent_kernel.T)
    (cached,), shared = cu.row_plan(dtype, units, [(units, units)])
    cu.launch_rows(k.backward, batch, stream, shared, *[cu.device(a) for a in (
        saved.states, d_out, dh, rec, saved.recurrent_mask, saved.mask, saved.first)],
        saved.act, cu.device(d_pre), cu.device(rk_t), cached)
    if saved.recurrent_mask.size:
        rec *= saved.recurrent_mask
    dh += rec
    d_pre2 = d_pre.reshape(time * batch, units)
    dx = cu.from_time_major(xp, cu.matmul(xp, d_pre2, saved.kernel.T).reshape(time, batch, -1),
                            saved.go_backwards)
    d_kernel = cu.matmul(xp, saved.x_tm.reshape(time * batch, -1).T, d_pre2)
    h_prev = saved.states[:time]
    if saved.recurrent_mask.size:
        h_prev = h_prev * saved.recurrent_mask
    d_recurrent = cu.matmul(xp, h_prev.reshape(time * batch, units).T, d_pre2)
    d_bias = d_pre2.sum(axis=0) if saved.has_bias else None
    return dx, dh, d_kernel, d_recurrent, d_bias
