"""LSTM forward and backward on the GPU: cuBLAS GEMMs (CuPy) + fused numba.cuda passes.

Gate order i | f | c | o as Keras; same signatures and semantics as
kernels/lstm/cpu.py, CuPy arrays in and out. One GEMM for every step's input,
then one loop kernel each way, a block per batch row running every step
(kernels/gpu/block.py): forward the matvec h_{t-1} U ([4H]) and the fused
step, backward the fused step and the matvec dz U^T; weight gradients one
GEMM each after the loop.
Saved per step and batch row: x_t, i | f | g | o (4H), h_t, c_t and act(c_t).
"""

from dataclasses import dataclass

from numba import cuda  # a module global: the simulator swaps it inside kernels

from ..gpu import cuda as cu
from ..checks import validate as v
from ..gpu.block import block_math
from .cpu import LSTMSaved


def _build(F):
    m = cu.device_math(F)
    activate, activation_grad, zero = m.activate, m.activation_grad, m.zero
    bm = block_math(F)
    matvec, stage, layout = bm.matvec, bm.stage, bm.layout
    dropped_matvec, dropped_matvec_t = bm.dropped_matvec, bm.dropped_matvec_t

    @cuda.jit(device=True)
    def forward_step(gates, rec, bias, h_states, c_states, tanh_c, out, mask, first, t, act, ract,
                     b, j):
        # gates [T, B, 4H]: x W in, i | f | g | o out (unmasked rows); rec [B, 4H] = h U.
        units = h_states.shape[2]
        if mask[t, b]:
            ig = activate(ract, gates[t, b, j] + rec[b, j] + bias[j])
            k = units + j
            fg = activate(ract, gates[t, b, k] + rec[b, k] + bias[k])
            k = 2 * units + j
            cg = activate(act, gates[t, b, k] + rec[b, k] + bias[k])
            k = 3 * units + j
            og = activate(ract, gates[t, b, k] + rec[b, k] + bias[k])
            gates[t, b, j] = ig
            gates[t, b, units + j] = fg
            gates[t, b, 2 * units + j] = cg
            gates[t, b, k] = og
            c = fg * c_states[t, b, j] + ig * cg
            tc = activate(act, c)
            h = og * tc
            c_states[t + 1, b, j] = c
            tanh_c[t, b, j] = tc
            h_states[t + 1, b, j] = h
            out[b, t, j] = h
        else:
            h_prev = h_states[t, b, j]
            c_states[t + 1, b, j] = c_states[t, b, j]
            h_states[t + 1, b, j] = h_prev
            out[b, t, j] = h_prev if t > first[b] else zero

    @cuda.jit(device=True)
    def backward_step(gates, c_states, tanh_c, d_out, dh, dc, rec, mask, first, t, act, ract, dz,
                      b, j):
        # rec = dz_{t+1} U^T (zero rows where step t+1 was masked).
        units = dh.shape[1]
        gh = dh[b, j] + rec[b, j]
        if t >= first[b]:
            gh += d_out[b, t, j]
        if mask[t, b]:
            ig = gates[t, b, j]
            fg = gates[t, b, units + j]
            cg = gates[t, b, 2 * units + j]
            og = gates[t, b, 3 * units + j]
            tc = tanh_c[t, b, j]
            gc = dc[b, j] + gh * og * activation_grad(act, tc)
            dz[t, b, j] = gc * cg * activation_grad(ract, ig)
            dz[t, b, units + j] = gc * c_states[t, b, j] * activation_grad(ract, fg)
            dz[t, b, 2 * units + j] = gc * ig * activation_grad(act, cg)
            dz[t, b, 3 * units + j] = gh * tc * activation_grad(ract, og)
            dc[b, j] = gc * fg
            dh[b, j] = zero
        else:
            for q in range(4):
                dz[t, b, q * units + j] = zero
            dh[b, j] = gh

    # The loop kernels: one block per batch row b runs every step, the
    # per-step products with U through matvec (see kernels/gpu/block.py).

    @cuda.jit(**cu.row_jit_options())
    def forward(gates, u, rec, bias, h_states, c_states, tanh_c, out, mask, first, cached, act,
                ract, rmask, mats, hm):
        # rmask [B, 4H] per-gate recurrent dropout with mats [4, H, H] (the gate blocks of
        # u) and hm [B, 4H] scratch; rmask [B, 0] for none.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = gates.shape[0], h_states.shape[2]
        dropped = rmask.shape[1] > 0
        scratch, vs, cache = layout(units)
        stage(u, cached, cache)
        cuda.syncthreads()
        for t in range(time):
            if dropped:
                dropped_matvec(h_states[t, b], rmask[b], mats, hm[b], rec[b], scratch, vs)
            else:
                matvec(h_states[t, b], u, cache, cached, rec[b], scratch, vs)
                cuda.syncthreads()
            for j in range(tid, units, threads):
                forward_step(gates, rec, bias, h_states, c_states, tanh_c, out, mask, first, t,
                             act, ract, b, j)
            cuda.syncthreads()

    @cuda.jit(**cu.row_jit_options())
    def backward(gates, c_states, tanh_c, d_out, dh, dc, rec, mask, first, act, ract, dz, u_t,
                 cached, rmask, mats_t, part):
        # rmask, mats_t [4, H, H] (the blocks' transposes) and part [B, 4H] as forward's.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = gates.shape[0], dh.shape[1]
        dropped = rmask.shape[1] > 0
        depth = u_t.shape[0]
        scratch, vs, cache = layout(depth)
        stage(u_t, cached, cache)
        cuda.syncthreads()
        for t in range(time - 1, -1, -1):
            for j in range(tid, units, threads):
                backward_step(gates, c_states, tanh_c, d_out, dh, dc, rec, mask, first, t, act,
                              ract, dz, b, j)
            cuda.syncthreads()
            if dropped:
                dropped_matvec_t(dz[t, b], rmask[b], mats_t, part[b], rec[b], scratch, vs)
            else:
                matvec(dz[t, b], u_t, cache, cached, rec[b], scratch, vs)
                cuda.syncthreads()

    return dict(forward=forward, backward=backward)


KERNELS = cu.KernelSet(_build, {
    "forward": "f3 f2 f2 f1 f3 f3 f3 f3 b2 i1 i i i f2 f3 f2",
    "backward": "f3 f3 f3 f3 f2 f2 f2 b2 i1 i i f3 f2 i f2 f3 f2",
})


@dataclass(eq=False)
class LSTMSavedCUDA(LSTMSaved):
    """What the CUDA backward needs (the CPU fields, holding CuPy arrays); opaque."""


def lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, go_backwards=False,
                 activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None):
    """LSTM on the GPU; arguments and results as kernels.lstm_forward, as CuPy arrays."""
    xp = cu.array_module(x)
    x = v.check_x(x, xp)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 4, bias, lambda h: (4 * h,), xp)
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype, xp)
    c0 = v.check_state(c0, "c0", batch, units, x.dtype, xp)
    act = v.activation_code(activation)
    ract = v.activation_code(recurrent_activation, "recurrent_activation")
    mask_tm, first = cu.time_major_mask(xp, v.check_mask(mask, batch, time, xp), batch, time,
                                        go_backwards)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, 4 * units, x.dtype, xp,
                                      meaning="[batch, 4 * units] (a mask per gate)")
    has_bias = bias is not None
    if bias is None:
        bias = xp.zeros(4 * units, x.dtype)
    k = KERNELS.get(x.dtype)
    stream = cu.stream_for(xp)

    x_tm = cu.to_time_major(xp, x, go_backwards)
    gates = cu.matmul(xp, x_tm.reshape(time * batch, -1), kernel).reshape(time, batch, 4 * units)
    h_states = xp.empty((time + 1, batch, units), x.dtype)
    c_states = xp.empty((time + 1, batch, units), x.dtype)
    h_states[0] = h0
    c_states[0] = c0
    tanh_c = xp.empty((time, batch, units), x.dtype)
    out = xp.empty((batch, time, units), x.dtype)
    rec = xp.empty((batch, 4 * units), x.dtype)
    (cached,), shared = cu.row_plan(x.dtype, units, [(units, 4 * units)])
    dropout = cu.dropout_arrays(xp, rec_mask, recurrent_kernel, 4, batch, transposed=False)
    cu.launch_rows(k.forward, batch, stream, shared, *[cu.device(a) for a in (
        gates, recurrent_kernel, rec, bias, h_states, c_states, tanh_c, out, mask_tm, first)],
        cached, act, ract, *[cu.device(a) for a in dropout])
    saved = LSTMSavedCUDA(x_tm, gates, h_states, c_states, tanh_c, mask_tm, first, kernel,
                          recurrent_kernel, rec_mask, has_bias, act, ract, go_backwards)
    return out, h_states[time].copy(), c_states[time].copy(), saved


def lstm_backward(saved, d_out, d_h_last, d_c_last):
    """Gradients of the CUDA lstm_forward, as kernels.lstm_backward."""
    v.check_saved(saved, LSTMSavedCUDA, "lstm_forward (CUDA)")
    xp = cu.array_module(saved.gates, "saved")
    time, batch, width = saved.gates.shape
    units = width // 4
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype, xp)
    dh = v.check_grad(d_h_last, "d_h_last", (batch, units), dtype, xp).copy()
    dc = v.check_grad(d_c_last, "d_c_last", (batch, units), dtype, xp).copy()
    k = KERNELS.get(dtype)
    stream = cu.stream_for(xp)
    dz = xp.empty((time, batch, width), dtype)
    rec = xp.zeros((batch, units), dtype)
    rk_t = xp.ascontiguousarray(saved.recurrent_kernel.T)
    (cached,), shared = cu.row_plan(dtype, width, [(width, units)])
    rec_mask = saved.recurrent_mask
    dropout = cu.dropout_arrays(xp, rec_mask, saved.recurrent_kernel, 4, batch, transposed=True)
    cu.launch_rows(k.backward, batch, stream, shared, *[cu.device(a) for a in (
        saved.gates, saved.c_states, saved.tanh_c, d_out, dh, dc, rec, saved.mask, saved.first)],
        saved.act, saved.ract, cu.device(dz), cu.device(rk_t), cached,
        *[cu.device(a) for a in dropout])
    dh += rec
    dz2 = dz.reshape(time * batch, width)
    dx = cu.from_time_major(xp, cu.matmul(xp, dz2, saved.kernel.T).reshape(time, batch, -1),
                            saved.go_backwards)
    d_kernel = cu.matmul(xp, saved.x_tm.reshape(time * batch, -1).T, dz2)
    d_recurrent = cu.recurrent_gradient(xp, saved.h_states[:time], dz, rec_mask)
    d_bias = dz2.sum(axis=0) if saved.has_bias else None
    return dx, dh, dc, d_kernel, d_recurrent, d_bias
