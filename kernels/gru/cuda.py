"""GRU forward and backward on the GPU: cuBLAS GEMMs (CuPy) + fused numba.cuda passes.

Same equations, layout (z | r | h), signatures and `saved` contents as the CPU
kernels (kernels/gru/cpu.py), with CuPy arrays in and out. Time-major inside.

Forward, reset_after=True: one GEMM projects every step's input; per step one
GEMM (h_{t-1} U, [B, 3H]) and one fused kernel (one thread per (b, j)) that
computes z, r, hh, c and h_t and applies the mask rule. reset_after=False: per
step GEMM h U_zr, a kernel for z, r and r*h, GEMM (r*h) U_h, a kernel for c, h.

Backward: per step one fused kernel for the gate gradients, then the GEMM
dG U^T, whose result the next step's kernel adds to dh (rows of dG are zero on
masked steps, so the product needs no mask). Weight gradients: one GEMM each
after the loop; bias gradients: column sums.

Memory per step and batch row as on the CPU: x_t, z | r | c, hh or r*h_{t-1}, h_t.
"""

from dataclasses import dataclass

import numpy as np
from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import _cuda as cu
from .. import _validate as v
from .cpu import GRUSaved


def _build(F):
    m = cu.device_math(F)
    activate, activation_grad, one, zero = m.activate, m.activation_grad, m.one, m.zero

    @cuda.jit
    def forward_reset_after(gates, rec, b_in, b_rec, states, hh_saved, out, mask, first, t,
                            act, ract):
        # gates [T, B, 3H]: x W in, z | r | c out; rec [B, 3H] = h_{t-1} U.
        i = cuda.grid(1)
        batch, units = states.shape[1], states.shape[2]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
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

    @cuda.jit
    def backward_reset_after(gates, hh_saved, states, d_out, dh, rec, mask, first, t, act,
                             ract, d_xw, d_hu):
        # dh [B, H]: dL/dh_t less the recurrent part, which is rec = dG_{t+1} U^T.
        i = cuda.grid(1)
        batch, units = dh.shape[0], dh.shape[1]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
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

    @cuda.jit
    def forward_zr(gates, rec_zr, bias, states, rh_saved, mask, t, ract):
        # reset_after=False, first half: z, r in place; rh = r * h_{t-1} (0 when masked).
        i = cuda.grid(1)
        batch, units = states.shape[1], states.shape[2]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
        if mask[t, b]:
            z = activate(ract, gates[t, b, j] + rec_zr[b, j] + bias[j])
            k = units + j
            r = activate(ract, gates[t, b, k] + rec_zr[b, k] + bias[k])
            gates[t, b, j] = z
            gates[t, b, k] = r
            rh_saved[t, b, j] = r * states[t, b, j]
        else:
            rh_saved[t, b, j] = zero

    @cuda.jit
    def forward_h(gates, rec_h, bias, states, out, mask, first, t, act):
        # reset_after=False, second half: c = act(x W_h + b_h + (r h) U_h), then h_t.
        i = cuda.grid(1)
        batch, units = states.shape[1], states.shape[2]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
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

    @cuda.jit
    def backward_zc(gates, states, d_out, dh, rec, mask, first, t, act, ract, d_xw, d_pc):
        # reset_after=False, first half: dpz, dpc; dh = g z. rec = dG_zr(t+1) U_zr^T.
        i = cuda.grid(1)
        batch, units = dh.shape[0], dh.shape[1]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
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

    @cuda.jit
    def backward_r(gates, states, dh, d_rh, mask, t, ract, d_xw, d_zr):
        # reset_after=False, second half: d_rh = dpc U_h^T gives dpr and dh += d_rh r.
        i = cuda.grid(1)
        batch, units = dh.shape[0], dh.shape[1]
        if i >= batch * units:
            return
        b = i // units
        j = i - b * units
        k = units + j
        if mask[t, b]:
            r = gates[t, b, k]
            drh = d_rh[b, j]
            dpr = drh * states[t, b, j] * activation_grad(ract, r)
            d_xw[t, b, k] = dpr
            dh[b, j] += drh * r
            d_zr[b, j] = d_xw[t, b, j]
            d_zr[b, k] = dpr
        else:
            d_xw[t, b, k] = zero
            d_zr[b, j] = zero
            d_zr[b, k] = zero

    return dict(forward_reset_after=forward_reset_after, backward_reset_after=backward_reset_after,
                forward_zr=forward_zr, forward_h=forward_h, backward_zc=backward_zc,
                backward_r=backward_r)


KERNELS = cu.KernelSet(_build, {
    "forward_reset_after": "f3 f2 f1 f1 f3 f3 f3 b2 i1 i i i",
    "backward_reset_after": "f3 f3 f3 f3 f2 f2 b2 i1 i i i f3 f3",
    "forward_zr": "f3 f2 f1 f3 f3 b2 i i",
    "forward_h": "f3 f2 f1 f3 f3 b2 i1 i i",
    "backward_zc": "f3 f3 f3 f2 f2 b2 i1 i i i f3 f2",
    "backward_r": "f3 f3 f2 f2 b2 i i f3 f2",
})


@dataclass(eq=False)
class GRUSavedCUDA(GRUSaved):
    """What the CUDA backward needs (the CPU fields, holding CuPy arrays); opaque."""


def gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=None, reset_after=True,
                go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
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
    has_bias = bias is not None
    if bias is None:
        bias = xp.zeros((2, 3 * units) if reset_after else (3 * units,), x.dtype)
    k = KERNELS.get(x.dtype)
    stream = cu.stream_for(xp)
    n = batch * units

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
        d_rec, d_b_in, d_b_rec = cu.device(rec), cu.device(bias[0]), cu.device(bias[1])
        for t in range(time):
            cu.matmul(xp, states[t], recurrent_kernel, out=rec)
            cu.launch(k.forward_reset_after, n, stream, d_gates, d_rec, d_b_in, d_b_rec,
                      d_states, d_extra, d_out, d_mask, d_first, t, act, ract)
    else:
        u_zr = xp.ascontiguousarray(recurrent_kernel[:, :2 * units])
        u_h = xp.ascontiguousarray(recurrent_kernel[:, 2 * units:])
        rec_zr = xp.empty((batch, 2 * units), x.dtype)
        rec_h = xp.empty((batch, units), x.dtype)
        d_rec_zr, d_rec_h, d_bias = cu.device(rec_zr), cu.device(rec_h), cu.device(bias)
        for t in range(time):
            cu.matmul(xp, states[t], u_zr, out=rec_zr)
            cu.launch(k.forward_zr, n, stream, d_gates, d_rec_zr, d_bias, d_states, d_extra,
                      d_mask, t, ract)
            cu.matmul(xp, extra[t], u_h, out=rec_h)
            cu.launch(k.forward_h, n, stream, d_gates, d_rec_h, d_bias, d_states, d_out, d_mask,
                      d_first, t, act)
    saved = GRUSavedCUDA(x_tm, gates, extra, states, mask_tm, first, kernel, recurrent_kernel,
                         has_bias, bool(reset_after), act, ract, go_backwards)
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
    n = batch * units
    rk = saved.recurrent_kernel
    d_xw = xp.empty((time, batch, width), dtype)
    rec = xp.zeros((batch, units), dtype)
    common = [cu.device(a) for a in (saved.gates, saved.extra, saved.states, d_out, dh, rec,
                                     saved.mask, saved.first)]
    d_gates, d_extra, d_states, d_dout, d_dh, d_rec, d_mask, d_first = common
    d_d_xw = cu.device(d_xw)
    h_prev = saved.states[:time].reshape(time * batch, units)
    d_xw2 = d_xw.reshape(time * batch, width)
    if saved.reset_after:
        d_hu = xp.empty((time, batch, width), dtype)
        d_d_hu = cu.device(d_hu)
        rk_t = xp.ascontiguousarray(rk.T)
        for t in range(time - 1, -1, -1):
            cu.launch(k.backward_reset_after, n, stream, d_gates, d_extra, d_states, d_dout,
                      d_dh, d_rec, d_mask, d_first, t, saved.act, saved.ract, d_d_xw, d_d_hu)
            cu.matmul(xp, d_hu[t], rk_t, out=rec)
        dh += rec
        d_hu2 = d_hu.reshape(time * batch, width)
        d_recurrent = cu.matmul(xp, h_prev.T, d_hu2)
        d_bias = None
        if saved.has_bias:
            d_bias = xp.stack([d_xw2.sum(axis=0), d_hu2.sum(axis=0)])
    else:
        u_zr_t = xp.ascontiguousarray(rk[:, :2 * units].T)
        u_h_t = xp.ascontiguousarray(rk[:, 2 * units:].T)
        d_pc = xp.empty((batch, units), dtype)
        d_rh = xp.empty((batch, units), dtype)
        d_zr = xp.empty((batch, 2 * units), dtype)
        d_d_pc, d_d_rh, d_d_zr = cu.device(d_pc), cu.device(d_rh), cu.device(d_zr)
        for t in range(time - 1, -1, -1):
            cu.launch(k.backward_zc, n, stream, d_gates, d_states, d_dout, d_dh, d_rec, d_mask,
                      d_first, t, saved.act, saved.ract, d_d_xw, d_d_pc)
            cu.matmul(xp, d_pc, u_h_t, out=d_rh)
            cu.launch(k.backward_r, n, stream, d_gates, d_states, d_dh, d_d_rh, d_mask, t,
                      saved.ract, d_d_xw, d_d_zr)
            cu.matmul(xp, d_zr, u_zr_t, out=rec)
        dh += rec
        d_recurrent = xp.empty_like(rk)
        d_recurrent[:, :2 * units] = cu.matmul(xp, h_prev.T, d_xw2[:, :2 * units])
        d_recurrent[:, 2 * units:] = cu.matmul(
            xp, saved.extra.reshape(time * batch, units).T, d_xw2[:, 2 * units:])
        d_bias = d_xw2.sum(axis=0) if saved.has_bias else None
    dx = cu.from_time_major(xp, cu.matmul(xp, d_xw2, saved.kernel.T).reshape(time, batch, -1),
                            saved.go_backwards)
    d_kernel = cu.matmul(xp, saved.x_tm.reshape(time * batch, -1).T, d_xw2)
    return dx, dh, d_kernel, d_recurrent, d_bias
