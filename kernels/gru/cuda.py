"""GRU forward and backward on the GPU: cuBLAS GEMMs (CuPy) + fused numba.cuda passes.

Same equations, layout (z | r | h), signatures and `saved` contents as the CPU
kernels (kernels/gru/cpu.py), with CuPy arrays in and out. Time-major inside.

Forward: one GEMM projects every step's input, then one loop kernel in which a
block per batch row runs every step (kernels/gpu/block.py). reset_after=True:
per step the matvec h_{t-1} U ([3H]) and the fused step that computes z, r, hh,
c and h_t and applies the mask rule. reset_after=False: matvec h U_zr, z, r and
r*h, matvec (r*h) U_h, then c and h.

Backward: one loop kernel, per step the gate gradients, then the matvec
dG U^T, which the next step adds to dh (rows of dG are zero on masked steps, so
the product needs no mask). Weight gradients: one GEMM each after the loop;
bias gradients: column sums.

Memory per step and batch row as on the CPU: x_t, z | r | c, hh or r*h_{t-1}, h_t.
"""

from dataclasses import dataclass

import numpy as np
from numba import cuda  # a module global: the simulator swaps it inside kernels

from ..gpu import cuda as cu
from ..checks import validate as v
from ..gpu.block import block_math
from .cpu import GRUSaved


def _build(F):
    m = cu.device_math(F)
    activate, activation_grad, one, zero = m.activate, m.activation_grad, m.one, m.zero
    bm = block_math(F)
    matvec, stage, layout = bm.matvec, bm.stage, bm.layout
    dropped_matvec, dropped_matvec_t = bm.dropped_matvec, bm.dropped_matvec_t

    @cuda.jit(device=True)
    def forward_reset_after_step(gates, rec, b_in, b_rec, states, hh_saved, out, mask, first, t,
                                 act, ract, b, j):
        # gates [T, B, 3H]: x W in, z | r | c out; rec [B, 3H] = h_{t-1} U.
        units = states.shape[2]
        h_prev = states[t, b, j]
        if mask[t, b]:
            z = activate(ract, gates[t, b, j] + rec[b, j] + b_in[j] + b_rec[j])
            k = units + j
            r = activate(ract, gates[t, b, k] + rec[b, k] + b_in[k] + b_rec[k])
            k = 2 * units + j
            hh = rec[b, k] + b_rec[k]
            c = activate(act, gates[t, b, k] + b_in[k] + r * hh)
            gates[t, b, j] = z
            gates[t, b, units + j] = r
            gates[t, b, k] = c
            hh_saved[t, b, j] = hh
            h = z * h_prev + (one - z) * c
            states[t + 1, b, j] = h
            out[b, t, j] = h
        else:
            states[t + 1, b, j] = h_prev
            out[b, t, j] = h_prev if t > first[b] else zero

    @cuda.jit(device=True)
    def backward_reset_after_step(gates, hh_saved, states, d_out, dh, rec, mask, first, t, act,
                                  ract, d_xw, d_hu, b, j):
        # dh [B, H]: dL/dh_t less the recurrent part, which is rec = dG_{t+1} U^T.
        units = dh.shape[1]
        g = dh[b, j] + rec[b, j]
        if t >= first[b]:
            g += d_out[b, t, j]
        k = 2 * units + j
        if mask[t, b]:
            z = gates[t, b, j]
            r = gates[t, b, units + j]
            c = gates[t, b, k]
            dpc = g * (one - z) * activation_grad(act, c)
            dpz = g * (states[t, b, j] - c) * activation_grad(ract, z)
            dpr = dpc * hh_saved[t, b, j] * activation_grad(ract, r)
            d_xw[t, b, j] = dpz
            d_xw[t, b, units + j] = dpr
            d_xw[t, b, k] = dpc
            d_hu[t, b, j] = dpz
            d_hu[t, b, units + j] = dpr
            d_hu[t, b, k] = dpc * r
            dh[b, j] = g * z
        else:
            d_xw[t, b, j] = zero
            d_xw[t, b, units + j] = zero
            d_xw[t, b, k] = zero
            d_hu[t, b, j] = zero
            d_hu[t, b, units + j] = zero
            d_hu[t, b, k] = zero
            dh[b, j] = g

    @cuda.jit(device=True)
    def forward_zr_step(gates, rec_zr, bias, states, rh_saved, mask, t, ract, b, j, rmask):
        # reset_after=False, first half: z, r in place; rh = r * h_{t-1} (0 when masked;
        # * m_h under recurrent dropout, rmask [B, 3H], else [B, 0]).
        units = states.shape[2]
        if mask[t, b]:
            z = activate(ract, gates[t, b, j] + rec_zr[b, j] + bias[j])
            k = units + j
            r = activate(ract, gates[t, b, k] + rec_zr[b, k] + bias[k])
            gates[t, b, j] = z
            gates[t, b, k] = r
            rh = r * states[t, b, j]
            if rmask.shape[1] > 0:
                rh *= rmask[b, 2 * units + j]
            rh_saved[t, b, j] = rh
        else:
            rh_saved[t, b, j] = zero

    @cuda.jit(device=True)
    def forward_h_step(gates, rec_h, bias, states, out, mask, first, t, act, b, j):
        # reset_after=False, second half: c = act(x W_h + b_h + (r h) U_h), then h_t.
        units = states.shape[2]
        h_prev = states[t, b, j]
        if mask[t, b]:
            k = 2 * units + j
            c = activate(act, gates[t, b, k] + rec_h[b, j] + bias[k])
            gates[t, b, k] = c
            z = gates[t, b, j]
            h = z * h_prev + (one - z) * c
            states[t + 1, b, j] = h
            out[b, t, j] = h
        else:
            states[t + 1, b, j] = h_prev
            out[b, t, j] = h_prev if t > first[b] else zero

    @cuda.jit(device=True)
    def backward_zc_step(gates, states, d_out, dh, rec, mask, first, t, act, ract, d_xw, d_pc, b,
                         j):
        # reset_after=False, first half: dpz, dpc; dh = g z. rec = dG_zr(t+1) U_zr^T.
        units = dh.shape[1]
        g = dh[b, j] + rec[b, j]
        if t >= first[b]:
            g += d_out[b, t, j]
        k = 2 * units + j
        if mask[t, b]:
            z = gates[t, b, j]
            c = gates[t, b, k]
            dpc = g * (one - z) * activation_grad(act, c)
            d_xw[t, b, j] = g * (states[t, b, j] - c) * activation_grad(ract, z)
            d_xw[t, b, k] = dpc
            d_pc[b, j] = dpc
            dh[b, j] = g * z
        else:
            d_xw[t, b, j] = zero
            d_xw[t, b, k] = zero
            d_pc[b, j] = zero
            dh[b, j] = g

    @cuda.jit(device=True)
    def backward_r_step(gates, states, dh, d_rh, mask, t, ract, d_xw, d_zr, b, j, rmask):
        # reset_after=False, second half: d_rh = dpc U_h^T gives dpr and dh += d_rh r
        # (rh = r * h_{t-1} * m_h under recurrent dropout).
        units = dh.shape[1]
        k = units + j
        if mask[t, b]:
            r = gates[t, b, k]
            drh = d_rh[b, j]
            if rmask.shape[1] > 0:
                drh *= rmask[b, 2 * units + j]
            dpr = drh * states[t, b, j] * activation_grad(ract, r)
            d_xw[t, b, k] = dpr
            dh[b, j] += drh * r
            d_zr[b, j] = d_xw[t, b, j]
            d_zr[b, k] = dpr
        else:
            d_xw[t, b, k] = zero
            d_zr[b, j] = zero
            d_zr[b, k] = zero

    # The loop kernels: one block per batch row b runs every step, the
    # per-step products with U through matvec (see kernels/gpu/block.py).

    @cuda.jit(**cu.row_jit_options())
    def forward_reset_after(gates, u, rec, b_in, b_rec, states, hh_saved, out, mask, first,
                            cached, act, ract, rmask, mats, hm):
        # rmask [B, 3H] per-gate recurrent dropout, mats [3, H, H] u's gate blocks, hm
        # [B, 3H] scratch (kernels/_cuda_block.dropped_matvec); rmask [B, 0] for none.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = gates.shape[0], states.shape[2]
        dropped = rmask.shape[1] > 0
        scratch, vs, cache = layout(units)
        stage(u, cached, cache)
        cuda.syncthreads()
        for t in range(time):
            if dropped:
                dropped_matvec(states[t, b], rmask[b], mats, hm[b], rec[b], scratch, vs)
            else:
                matvec(states[t, b], u, cache, cached, rec[b], scratch, vs)
                cuda.syncthreads()
            for j in range(tid, units, threads):
                forward_reset_after_step(gates, rec, b_in, b_rec, states, hh_saved, out, mask,
                                         first, t, act, ract, b, j)
            cuda.syncthreads()

    @cuda.jit(**cu.row_jit_options())
    def backward_reset_after(gates, hh_saved, states, d_out, dh, rec, mask, first, act, ract,
                             d_xw, d_hu, u_t, cached, rmask, mats_t, part):
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
                backward_reset_after_step(gates, hh_saved, states, d_out, dh, rec, mask, first, t,
                                          act, ract, d_xw, d_hu, b, j)
            cuda.syncthreads()
            if dropped:
                dropped_matvec_t(d_hu[t, b], rmask[b], mats_t, part[b], rec[b], scratch, vs)
            else:
                matvec(d_hu[t, b], u_t, cache, cached, rec[b], scratch, vs)
                cuda.syncthreads()

    @cuda.jit(**cu.row_jit_options())
    def forward_reset_before(gates, u_zr, u_h, rec_zr, rec_h, bias, states, rh_saved, out, mask,
                             first, cached_zr, cached_h, act, ract, rmask, mats, hm):
        # rmask [B, 3H], mats [2, H, H] (the z and r blocks), hm [B, 2H] as in
        # forward_reset_after; rmask [B, 0] for none.
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = gates.shape[0], states.shape[2]
        dropped = rmask.shape[1] > 0
        scratch, vs, caches = layout(units)
        cache_zr, cache_h = caches[:cached_zr * 2 * units], caches[cached_zr * 2 * units:]
        stage(u_zr, cached_zr, cache_zr)
        stage(u_h, cached_h, cache_h)
        cuda.syncthreads()
        for t in range(time):
            if dropped:
                dropped_matvec(states[t, b], rmask[b], mats, hm[b], rec_zr[b], scratch, vs)
            else:
                matvec(states[t, b], u_zr, cache_zr, cached_zr, rec_zr[b], scratch, vs)
                cuda.syncthreads()
            for j in range(tid, units, threads):
                forward_zr_step(gates, rec_zr, bias, states, rh_saved, mask, t, ract, b, j, rmask)
            cuda.syncthreads()
            matvec(rh_saved[t, b], u_h, cache_h, cached_h, rec_h[b], scratch, vs)
            cuda.syncthreads()
            for j in range(tid, units, threads):
                forward_h_step(gates, rec_h, bias, states, out, mask, first, t, act, b, j)
            cuda.syncthreads()

    @cuda.jit(**cu.row_jit_options())
    def backward_reset_before(gates, states, d_out, dh, rec, mask, first, act, ract, d_xw, d_pc,
                              d_rh, d_zr, u_h_t, u_zr_t, cached_h, cached_zr, rmask, mats_t, part):
        b = cuda.blockIdx.x
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        time, units = gates.shape[0], dh.shape[1]
        dropped = rmask.shape[1] > 0
        scratch, vs, caches = layout(2 * units)
        cache_h, cache_zr = caches[:cached_h * units], caches[cached_h * units:]
        stage(u_h_t, cached_h, cache_h)
        stage(u_zr_t, cached_zr, cache_zr)
        cuda.syncthreads()
        for t in range(time - 1, -1, -1):
            for j in range(tid, units, threads):
                backward_zc_step(gates, states, d_out, dh, rec, mask, first, t, act, ract, d_xw,
                                 d_pc, b, j)
            cuda.syncthreads()
            matvec(d_pc[b], u_h_t, cache_h, cached_h, d_rh[b], scratch, vs)
            cuda.syncthreads()
            for j in range(tid, units, threads):
                backward_r_step(gates, states, dh, d_rh, mask, t, ract, d_xw, d_zr, b, j, rmask)
            cuda.syncthreads()
            if dropped:
                dropped_matvec_t(d_zr[b], rmask[b], mats_t, part[b], rec[b], scratch, vs)
            else:
                matvec(d_zr[b], u_zr_t, cache_zr, cached_zr, rec[b], scratch, vs)
                cuda.syncthreads()

    return dict(forward_reset_after=forward_reset_after, backward_reset_after=backward_reset_after,
                forward_reset_before=forward_reset_before,
                backward_reset_before=backward_reset_before)


KERNELS = cu.KernelSet(_build, {
    "forward_reset_after": "f3 f2 f2 f1 f1 f3 f3 f3 b2 i1 i i i f2 f3 f2",
    "backward_reset_after": "f3 f3 f3 f3 f2 f2 b2 i1 i i f3 f3 f2 i f2 f3 f2",
    "forward_reset_before": "f3 f2 f2 f2 f2 f1 f3 f3 f3 b2 i1 i i i i f2 f3 f2",
    "backward_reset_before": "f3 f3 f3 f2 f2 b2 i1 i i f3 f2 f2 f2 f2 f2 i i f2 f3 f2",
})


@dataclass(eq=False)
class GRUSavedCUDA(GRUSaved):
    """What the CUDA backward needs (the CPU fields, holding CuPy arrays); opaque."""


def gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=None, reset_after=True,
                go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
                recurrent_mask=None):
    """GRU on the GPU; arguments and results as kernels.gru_forward, as CuPy arrays."""
    xp = cu.array_module(x)
    if not isinstance(reset_after, (bool, np.bool_)):
        raise TypeError(f"reset_after must be a bool, got {reset_after!r}")
    x = v.check_x(x, xp)
    bias_shape = (lambda h: (2, 3 * h)) if reset_after else (lambda h: (3 * h,))
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 3, bias, bias_shape, xp)
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype, xp)
    act = v.activation_code(activation)
    ract = v.activation_code(recurrent_activation, "recurrent_activation")
    mask_tm, first = cu.time_major_mask(xp, v.check_mask(mask, batch, time, xp), batch, time,
                                        go_backwards)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, 3 * units, x.dtype, xp,
                                      meaning="[batch, 3 * units] (a mask per gate)")
    has_bias = bias is not None
    if bias is None:
        bias = xp.zeros((2, 3 * units) if reset_after else (3 * units,), x.dtype)
    k = KERNELS.get(x.dtype)
    stream = cu.stream_for(xp)

    x_tm = cu.to_time_major(xp, x, go_backwards)
    gates = cu.matmul(xp, x_tm.reshape(time * batch, -1), kernel).reshape(time, batch, 3 * units)
    states = xp.empty((time + 1, batch, units), x.dtype)
    states[0] = h0
    extra = xp.empty((time, batch, units), x.dtype)
    out = xp.empty((batch, time, units), x.dtype)
    d = [cu.device(a) for a in (gates, states, extra, out, mask_tm, first)]
    d_gates, d_states, d_extra, d_out, d_mask, d_first = d
    if reset_after:
        rec = xp.empty((batch, 3 * units), x.dtype)
        (cached,), shared = cu.row_plan(x.dtype, units, [(units, 3 * units)])
        cu.launch_rows(k.forward_reset_after, batch, stream, shared, d_gates,
                       cu.device(recurrent_kernel), cu.device(rec), cu.device(bias[0]),
                       cu.device(bias[1]), d_states, d_extra, d_out, d_mask, d_first, cached, act,
                       ract, *[cu.device(a) for a in cu.dropout_arrays(
                           xp, rec_mask, recurrent_kernel, 3, batch, transposed=False)])
    else:
        u_zr = xp.ascontiguousarray(recurrent_kernel[:, :2 * units])
        u_h = xp.ascontiguousarray(recurrent_kernel[:, 2 * units:])
        rec_zr = xp.empty((batch, 2 * units), x.dtype)
        rec_h = xp.empty((batch, units), x.dtype)
        cached, shared = cu.row_plan(x.dtype, units, [(units, 2 * units), (units, units)])
        cu.launch_rows(k.forward_reset_before, batch, stream, shared, d_gates,
                       *[cu.device(a) for a in (u_zr, u_h, rec_zr, rec_h, bias)], d_states,
                       d_extra, d_out, d_mask, d_first, *cached, act, ract,
                       *[cu.device(a) for a in cu.dropout_arrays(
                           xp, rec_mask, recurrent_kernel[:, :2 * units], 2, batch,
                           transposed=False)])
    saved = GRUSavedCUDA(x_tm, gates, extra, states, mask_tm, first, kernel, recurrent_kernel,
                         rec_mask, has_bias, bool(reset_after), act, ract, go_backwards)
    return out, states[time].copy(), saved


def gru_backward(saved, d_out, d_h_last):
    """Gradients of the CUDA gru_forward; results as kernels.gru_backward, as CuPy arrays."""
    v.check_saved(saved, GRUSavedCUDA, "gru_forward (CUDA)")
    xp = cu.array_module(saved.gates, "saved")
    time, batch, width = saved.gates.shape
    units = width // 3
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype, xp)
    dh = v.check_grad(d_h_last, "d_h_last", (batch, units), dtype, xp).copy()
    k = KERNELS.get(dtype)
    stream = cu.stream_for(xp)
    rk = saved.recurrent_kernel
    d_xw = xp.empty((time, batch, width), dtype)
    rec = xp.zeros((batch, units), dtype)
    common = [cu.device(a) for a in (saved.gates, saved.extra, saved.states, d_out, dh, rec,
                                     saved.mask, saved.first)]
    d_gates, d_extra, d_states, d_dout, d_dh, d_rec, d_mask, d_first = common
    d_d_xw = cu.device(d_xw)
    d_xw2 = d_xw.reshape(time * batch, width)
    if saved.reset_after:
        d_hu = xp.empty((time, batch, width), dtype)
        rk_t = xp.ascontiguousarray(rk.T)
        (cached,), shared = cu.row_plan(dtype, width, [(width, units)])
        cu.launch_rows(k.backward_reset_after, batch, stream, shared, d_gates, d_extra, d_states,
                       d_dout, d_dh, d_rec, d_mask, d_first, saved.act, saved.ract, d_d_xw,
                       cu.device(d_hu), cu.device(rk_t), cached,
                       *[cu.device(a) for a in cu.dropout_arrays(
                           xp, saved.recurrent_mask, rk, 3, batch, transposed=True)])
        dh += rec
        d_hu2 = d_hu.reshape(time * batch, width)
        d_recurrent = cu.recurrent_gradient(xp, saved.states[:time], d_hu, saved.recurrent_mask)
        d_bias = None
        if saved.has_bias:
            d_bias = xp.stack([d_xw2.sum(axis=0), d_hu2.sum(axis=0)])
    else:
        u_zr_t = xp.ascontiguousarray(rk[:, :2 * units].T)
        u_h_t = xp.ascontiguousarray(rk[:, 2 * units:].T)
        d_pc = xp.empty((batch, units), dtype)
        d_rh = xp.empty((batch, units), dtype)
        d_zr = xp.empty((batch, 2 * units), dtype)
        cached, shared = cu.row_plan(dtype, 2 * units, [(units, units), (2 * units, units)])
        cu.launch_rows(k.backward_reset_before, batch, stream, shared, d_gates, d_states, d_dout,
                       d_dh, d_rec, d_mask, d_first, saved.act, saved.ract, d_d_xw,
                       *[cu.device(a) for a in (d_pc, d_rh, d_zr, u_h_t, u_zr_t)], *cached,
                       *[cu.device(a) for a in cu.dropout_arrays(
                           xp, saved.recurrent_mask, rk[:, :2 * units], 2, batch,
                           transposed=True)])
        dh += rec
        d_recurrent = xp.empty_like(rk)
        d_recurrent[:, :2 * units] = cu.recurrent_gradient(
            xp, saved.states[:time], d_xw, saved.recurrent_mask, 2)[:, :2 * units]
        d_recurrent[:, 2 * units:] = cu.matmul(
            xp, saved.extra.reshape(time * batch, units).T, d_xw2[:, 2 * units:])
        d_bias = d_xw2.sum(axis=0) if saved.has_bias else None
    dx = cu.from_time_major(xp, cu.matmul(xp, d_xw2, saved.kernel.T).reshape(time, batch, -1),
                            saved.go_backwards)
    d_kernel = cu.matmul(xp, saved.x_tm.reshape(time * batch, -1).T, d_xw2)
    return dx, dh, d_kernel, d_recurrent, d_bias
