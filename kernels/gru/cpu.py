"""GRU forward and backward on the CPU (Numba + BLAS), Keras gate order z | r | h.

reset_after=True (Keras default), bias [2, 3H]:
    xz, xr, xh = x_t W + b_in;   hz, hr, hh = h_{t-1} U + b_rec
    z = sig(xz + hz);  r = sig(xr + hr);  c = act(xh + r * hh)
    h_t = z * h_{t-1} + (1 - z) * c
reset_after=False, bias [3H]:
    c = act(xh + (r * h_{t-1}) U_h)

Forward: one GEMM projects every step's input; per step one BLAS call
(reset_after=True: h U) or two (False: h U_zr, then (r*h) U_h), and fused
elementwise passes. The projected input buffer is overwritten in place with
the gates z | r | c, so nothing is stored twice. Backward: per step fused
passes for the gate gradients and one (two) BLAS calls for dh_{t-1}; weight
gradients are one GEMM each after the loop.

Saved for backward, per step and batch row: x_t (I floats), z | r | c (3H),
hh or r*h_{t-1} (H) and h_t (H): I + 5H floats.
"""

from dataclasses import dataclass

import numpy as np
from numba import carray, cfunc

from ..runtime import abi as _abi
from ..batch import parts as _parts
from ..batch import pool as _pool
from ..checks import validate as v
from ..blas import microgemm as _microgemm
from ..runtime.abi import address_to_pointer
from ..blas.binding import gemm_tn
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
    add_unmasked_rows,
    add_output_grad,
    batch_major_into,
    copy_1d,
    copy_2d,
    inline_jit,
    block_gradients,
    block_input_gradients,
    jit,
    mask_into,
    masked_output_rows,
    project,
    steps_per_block,
    time_major_into,
)


# Loop bodies touch few arrays each on purpose: LLVM cannot prove that Numba
# arrays do not alias, and with many arrays in one loop its run-time overlap
# checks exceed their budget and the loop stays scalar (splitting the GRU
# backward pass this way measured 4-6 ms faster at B64 T100 H256).


@jit
def _forward_reset_after(gates, recurrent_kernel, recurrent_packed, b_sum, b_in, b_rec, states,
                         hh_saved, out, mask, first, act, ract, rec_mask, mats, mats_packed):
    # gates [T, B, 3H]: x W on entry, z | r | c on exit (unmasked rows). hh_saved [T, B, H].
    # b_sum = b_in + b_rec (only its z | r part is read). rec_mask [B, 3H] per-gate
    # recurrent dropout with mats, mats_packed its gate blocks (kernels.fastmath.dropout), or [0, 0].
    time, batch, width = gates.shape
    units = width // 3
    rec = np.empty((batch, width), gates.dtype)
    hm = np.empty((batch if rec_mask.size else 0, units), gates.dtype)
    part = np.empty((batch if rec_mask.size else 0, units), gates.dtype)
    for t in range(time):
        if rec_mask.size:
            dropped_product(states[t], rec_mask, mats, mats_packed, hm, part, rec)
        else:
            product(states[t], recurrent_kernel, recurrent_packed, rec, False)
        for b in range(batch):
            if not mask[t, b]:
                continue
            g = gates[t, b]
            zr = g[:2 * units]
            z = g[:units]
            r = g[units:2 * units]
            c = g[2 * units:]
            u = rec[b]
            hh = hh_saved[t, b]
            h_prev = states[t, b]
            h = states[t + 1, b]
            for j in range(2 * units):
                zr[j] += u[j] + b_sum[j]
            activate(ract, zr)
            for j in range(units):
                hh[j] = u[2 * units + j] + b_rec[2 * units + j]
            for j in range(units):
                c[j] += b_in[2 * units + j] + r[j] * hh[j]
            activate(act, c)
            for j in range(units):
                h[j] = z[j] * h_prev[j] + (1.0 - z[j]) * c[j]
            copy_1d(out[b, t], h)
        masked_output_rows(states, out, mask, first, t)


@jit
def _backward_reset_after(gates, hh_saved, states, x_tm, d_out, dh, recurrent_kernel_t,
                          recurrent_t_packed, kernel_t, mask, first, act, ract, steps, d_xw, d_hu, dx_tm, d_kernel,
                          d_recurrent, d_b_in, d_b_hh, rec_mask, mats_t, packed_t):
    # Time runs backward in blocks of `steps` steps. Within a block, d_xw and d_hu
    # [steps, B, 3H] (scratch, indexed t - block start) get dL/d(x W + b_in) and
    # dL/d(h U + b_rec); after it, while they are still in cache, three GEMMs turn
    # them into the block's dx_tm [T, B, I] rows and add the block's share of
    # d_kernel [I, 3H] and d_recurrent [H, 3H] (both overwritten by the first block).
    # d_b_in [3H] += column sums of d_xw; d_b_hh [H] += those of d_hu's h block (float64).
    time, batch, width = gates.shape
    units = width // 3
    rec = np.empty((batch, units), dh.dtype)
    d_pre = np.empty(width, dh.dtype)  # d_pz | d_pr | d_pc for one row
    dp_z = d_pre[:units]
    dp_r = d_pre[units:2 * units]
    dp_c = d_pre[2 * units:]
    dzg = np.empty((batch if rec_mask.size else 0, units), dh.dtype)
    part = np.empty((batch if rec_mask.size else 0, units), dh.dtype)
    hi = time
    while hi > 0:
        lo = max(0, hi - steps)
        for t in range(hi - 1, lo - 1, -1):
            add_output_grad(dh, d_out, mask, first, t)
            for b in range(batch):
                dx_row = d_xw[t - lo, b]
                du_row = d_hu[t - lo, b]
                if not mask[t, b]:
                    dx_row[:] = 0.0
                    du_row[:] = 0.0
                    continue
                g = gates[t, b]
                z = g[:units]
                r = g[units:2 * units]
                c = g[2 * units:]
                hh = hh_saved[t, b]
                h_prev = states[t, b]
                dhb = dh[b]
                activation_grad(ract, g[:2 * units], d_pre[:2 * units])
                activation_grad(act, c, dp_c)
                for j in range(units):
                    dp_c[j] *= dhb[j] * (1.0 - z[j])
                for j in range(units):
                    dp_z[j] *= dhb[j] * (h_prev[j] - c[j])
                for j in range(units):
                    dp_r[j] *= dp_c[j] * hh[j]
                for j in range(width):
                    dx_row[j] = d_pre[j]
                for j in range(width):
                    du_row[j] = d_pre[j]
                for j in range(units):
                    du_row[2 * units + j] *= r[j]
                for j in range(units):
                    dhb[j] *= z[j]
                for j in range(width):
                    d_b_in[j] += d_pre[j]
                for j in range(units):
                    d_b_hh[j] += du_row[2 * units + j]
            if rec_mask.size:
                dropped_product_t(d_hu[t - lo], rec_mask, mats_t, packed_t, dzg, part, rec)
            else:
                product(d_hu[t - lo], recurrent_kernel_t, recurrent_t_packed, rec, False)
            add_unmasked_rows(dh, rec, mask, t)
        if rec_mask.size:
            block_input_gradients(d_xw[:hi - lo], x_tm, kernel_t, lo, hi, time, dx_tm, d_kernel)
            dropped_recurrent_gradient(states[lo:hi], d_hu[:hi - lo], rec_mask, 3, d_recurrent,
                                       hi < time)
        else:
            block_gradients(d_xw[:hi - lo], d_hu[:hi - lo], states[lo:hi], x_tm, kernel_t, lo,
                            hi, time, dx_tm, d_kernel, d_recurrent)
        hi = lo


@jit
def _forward_reset_before(gates, kernel_zr, zr_packed, kernel_h, h_packed, bias, states, rh_saved,
                          out, mask, first, act, ract, rec_mask, mats, mats_packed):
    # gates [T, B, 3H]: x W on entry, z | r | c on exit (unmasked rows).
    # rh_saved [T, B, H] = r * h_{t-1} (* m_h under recurrent dropout: rec_mask [B, 3H],
    # mats, mats_packed the z and r gate blocks, kernels.fastmath.dropout; or [0, 0]).
    time, batch, width = gates.shape
    units = width // 3
    rec_zr = np.empty((batch, 2 * units), gates.dtype)
    rec_h = np.empty((batch, units), gates.dtype)
    hm = np.empty((batch if rec_mask.size else 0, units), gates.dtype)
    part = np.empty((batch if rec_mask.size else 0, units), gates.dtype)
    for t in range(time):
        if rec_mask.size:
            dropped_product(states[t], rec_mask, mats, mats_packed, hm, part, rec_zr)
        else:
            product(states[t], kernel_zr, zr_packed, rec_zr, False)
        for b in range(batch):
            rh = rh_saved[t, b]
            if not mask[t, b]:
                rh[:] = 0.0
                continue
            zr = gates[t, b, :2 * units]
            r = gates[t, b, units:2 * units]
            u = rec_zr[b]
            h_prev = states[t, b]
            for j in range(2 * units):
                zr[j] += u[j] + bias[j]
            activate(ract, zr)
            for j in range(units):
                rh[j] = r[j] * h_prev[j]
            if rec_mask.size:
                for j in range(units):
                    rh[j] *= rec_mask[b, 2 * units + j]
        product(rh_saved[t], kernel_h, h_packed, rec_h, False)
        for b in range(batch):
            if not mask[t, b]:
                continue
            z = gates[t, b, :units]
            c = gates[t, b, 2 * units:]
            u = rec_h[b]
            h_prev = states[t, b]
            h = states[t + 1, b]
            for j in range(units):
                c[j] += u[j] + bias[2 * units + j]
            activate(act, c)
            for j in range(units):
                h[j] = z[j] * h_prev[j] + (1.0 - z[j]) * c[j]
            copy_1d(out[b, t], h)
        masked_output_rows(states, out, mask, first, t)


@jit
def _backward_reset_before(gates, states, d_out, dh, kernel_zr_t, zr_t_packed, kernel_h_t,
                           h_t_packed, mask, first, act, ract, d_xw, d_b, rec_mask, mats_t,
                           packed_t):
    # d_xw [T, B, 3H] = dL/d(x W + b); its z | r columns are also dL/d(h U_zr).
    # d_b [3H] += column sums of d_xw (float64).
    time, batch, width = gates.shape
    units = width // 3
    d_pc = np.empty((batch, units), dh.dtype)
    d_rh = np.empty((batch, units), dh.dtype)
    d_zr = np.empty((batch, 2 * units), dh.dtype)
    rec = np.empty((batch, units), dh.dtype)
    dzg = np.empty((batch if rec_mask.size else 0, units), dh.dtype)
    part = np.empty((batch if rec_mask.size else 0, units), dh.dtype)
    for t in range(time - 1, -1, -1):
        add_output_grad(dh, d_out, mask, first, t)
        for b in range(batch):
            dpc = d_pc[b]
            if not mask[t, b]:
                dpc[:] = 0.0
                continue
            z = gates[t, b, :units]
            c = gates[t, b, 2 * units:]
            dpz = d_zr[b, :units]
            h_prev = states[t, b]
            dhb = dh[b]
            activation_grad(act, c, dpc)
            activation_grad(ract, z, dpz)
            for j in range(units):
                dpc[j] *= dhb[j] * (1.0 - z[j])
            for j in range(units):
                dpz[j] *= dhb[j] * (h_prev[j] - c[j])
            for j in range(units):
                dhb[j] *= z[j]
        product(d_pc, kernel_h_t, h_t_packed, d_rh, False)
        for b in range(batch):
            dx_row = d_xw[t, b]
            if not mask[t, b]:
                dx_row[:] = 0.0
                d_zr[b, :] = 0.0
                continue
            r = gates[t, b, units:2 * units]
            dpr = d_zr[b, units:]
            drh = d_rh[b]
            h_prev = states[t, b]
            dhb = dh[b]
            activation_grad(ract, r, dpr)
            if rec_mask.size:
                # rh = r * (h_{t-1} * m_h)
                mh = rec_mask[b, 2 * units:]
                for j in range(units):
                    dpr[j] *= drh[j] * h_prev[j] * mh[j]
                for j in range(units):
                    dhb[j] += drh[j] * r[j] * mh[j]
            else:
                for j in range(units):
                    dpr[j] *= drh[j] * h_prev[j]
                for j in range(units):
                    dhb[j] += drh[j] * r[j]
            copy_1d(dx_row[:2 * units], d_zr[b])
            copy_1d(dx_row[2 * units:], d_pc[b])
            for j in range(width):
                d_b[j] += dx_row[j]
        if rec_mask.size:
            dropped_product_t(d_zr, rec_mask, mats_t, packed_t, dzg, part, rec)
        else:
            product(d_zr, kernel_zr_t, zr_t_packed, rec, False)
        add_unmasked_rows(dh, rec, mask, t)


@inline_jit
def forward_core(x, h0, kernel, recurrent_kernel, bias, mask, has_mask, reset_after, go_backwards,
                 act, ract, recurrent_mask, packed, out, h_last, x_tm, gates, extra, states,
                 mask_tm, first):
    """A whole gru_forward call on preallocated arrays (the launcher's and the
    TensorFlow op's one implementation). x [B, T, I], h0 [B, H], bias [2, 3H]
    (reset_after: input row, recurrent row) or [1, 3H], zeros for no bias; mask
    [B, T] read only if has_mask; recurrent_mask [B, 3H] per-gate recurrent dropout
    (kernels.fastmath.dropout) or [0, 0]; packed: use the packed per-step product.
    Writes out [B, T, H], h_last [B, H] and what the backward reads: x_tm [T, B, I],
    gates [T, B, 3H], extra [T, B, H], states [T + 1, B, H], mask_tm [T, B], first [B]."""
    time, batch, inputs = x_tm.shape
    width = gates.shape[2]
    units = width // 3
    time_major_into(x, go_backwards, x_tm)
    mask_into(mask, has_mask, go_backwards, mask_tm, first)
    project(x_tm.reshape(time * batch, inputs), kernel, gates.reshape(time * batch, width))
    copy_2d(states[0], h0)
    dropped = recurrent_mask.size > 0
    if reset_after:
        mats, mats_packed = gate_blocks(recurrent_kernel, 3 if dropped else 0, packed)
        _forward_reset_after(gates, recurrent_kernel,
                             packed_or_empty(recurrent_kernel, packed and not dropped),
                             bias[0] + bias[1], bias[0], bias[1], states, extra, out, mask_tm,
                             first, act, ract, recurrent_mask, mats, mats_packed)
    else:
        kernel_zr = np.ascontiguousarray(recurrent_kernel[:, :2 * units])
        kernel_h = np.ascontiguousarray(recurrent_kernel[:, 2 * units:])
        mats, mats_packed = gate_blocks(recurrent_kernel, 2 if dropped else 0, packed)
        _forward_reset_before(gates, kernel_zr, packed_or_empty(kernel_zr, packed and not dropped),
                              kernel_h, packed_or_empty(kernel_h, packed), bias[0], states, extra,
                              out, mask_tm, first, act, ract, recurrent_mask, mats, mats_packed)
    copy_2d(h_last, states[time])


@inline_jit
def backward_core(x_tm, gates, extra, states, mask_tm, first, kernel, recurrent_kernel,
                  recurrent_mask, d_out, dh, reset_after, go_backwards, act, ract, packed, dx,
                  d_kernel, d_recurrent, d_bias):
    """A whole gru_backward call on preallocated arrays. dh [B, H]: d_h_last on entry,
    dh0 on exit. Writes dx [B, T, I], d_kernel [I, 3H], d_recurrent [H, 3H] and
    d_bias [2, 3H] (reset_after) or [1, 3H]; the other arrays as forward_core left them."""
    time, batch, width = gates.shape
    units = width // 3
    inputs = x_tm.shape[2]
    dtype = dh.dtype
    d_b_in = np.zeros(width)  # bias gradients accumulate in float64 inside the loop
    dx_tm = np.empty((time, batch, inputs), dtype)
    dropped = recurrent_mask.size > 0
    if reset_after:
        steps = steps_per_block(batch * width * dh.itemsize, time)
        d_xw = np.empty((steps, batch, width), dtype)
        d_hu = np.empty((steps, batch, width), dtype)
        d_b_hh = np.zeros(units)
        rk_t, rk_t_packed = transposed_for_product(recurrent_kernel, packed)
        mats_t, packed_t = gate_blocks_transposed(recurrent_kernel, 3 if dropped else 0, packed)
        _backward_reset_after(gates, extra, states, x_tm, d_out, dh, rk_t,
                              rk_t_packed, np.ascontiguousarray(kernel.T),
                              mask_tm, first, act, ract, steps, d_xw, d_hu, dx_tm, d_kernel,
                              d_recurrent, d_b_in, d_b_hh, recurrent_mask, mats_t, packed_t)
        for j in range(width):
            d_bias[0, j] = d_b_in[j]
        for j in range(2 * units):
            d_bias[1, j] = d_b_in[j]
        for j in range(units):
            d_bias[1, 2 * units + j] = d_b_hh[j]
    else:
        d_xw = np.empty((time, batch, width), dtype)
        d_xw2 = d_xw.reshape(time * batch, width)
        # Contiguous column blocks first: both variants then share one specialization
        # of transposed_for_product (a C array).
        zr_t, zr_t_packed = transposed_for_product(
            np.ascontiguousarray(recurrent_kernel[:, :2 * units]), packed)
        h_t, h_t_packed = transposed_for_product(
            np.ascontiguousarray(recurrent_kernel[:, 2 * units:]), packed)
        mats_t, packed_t = gate_blocks_transposed(recurrent_kernel, 2 if dropped else 0, packed)
        _backward_reset_before(gates, states, d_out, dh, zr_t, zr_t_packed, h_t,
                               h_t_packed, mask_tm, first, act, ract, d_xw,
                               d_b_in, recurrent_mask, mats_t, packed_t)
        if dropped:
            dropped_recurrent_gradient(states[:time], d_xw, recurrent_mask, 2, d_recurrent, False)
        else:
            h_prev = states[:time].reshape(time * batch, units)
            d_zr = np.empty((units, 2 * units), dtype)
            gemm_tn(h_prev, np.ascontiguousarray(d_xw2[:, :2 * units]), d_zr, False)
            copy_2d(d_recurrent[:, :2 * units], d_zr)
        d_h = np.empty((units, units), dtype)
        rh = extra.reshape(time * batch, units)  # r * h_{t-1}
        gemm_tn(rh, np.ascontiguousarray(d_xw2[:, 2 * units:]), d_h, False)
        copy_2d(d_recurrent[:, 2 * units:], d_h)
        for j in range(width):
            d_bias[0, j] = d_b_in[j]
        project(d_xw2, np.ascontiguousarray(kernel.T), dx_tm.reshape(time * batch, inputs))
        gemm_tn(x_tm.reshape(time * batch, inputs), d_xw2, d_kernel, False)
    batch_major_into(dx_tm, go_backwards, dx)


# The cores compiled once per dtype and called through their table slots (kernels.runtime.abi). Forward args:
# addresses of x, h0, kernel, recurrent_kernel, bias, mask, out, h_last, x_tm, gates,
# extra, states, mask_tm, first; then batch, time, inputs, units, bias rows,
# has_mask, reset_after, go_backwards, act, ract, packed (reset_after is a constant
# of each variant's core, which does not read its slot); then the address of
# recurrent_mask and its rows and columns ([B, 3H], or 0 and 0 for none).
_FORWARD_ARGS = 28
# Backward args: addresses of x_tm, gates, extra, states, mask_tm, first, kernel,
# recurrent_kernel, d_out, dh, dx, d_kernel, d_recurrent, d_bias; then batch, time,
# inputs, units, bias rows, reset_after, go_backwards, act, ract, packed; then
# recurrent_mask as in the forward.
_BACKWARD_ARGS = 27


def _forward_cfunc(reset_after):
    """The forward core's factory for one variant: reset_after is a constant in it,
    so the other variant's loops are not compiled in (see _VARIANTS)."""
    def factory(dtype):
        return _forward_run(dtype, reset_after)
    return factory


def _forward_run(dtype, reset_after):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _FORWARD_ARGS + 1, np.int64)
        batch, time, inputs, units, rows = a[14], a[15], a[16], a[17], a[18]
        width = 3 * units
        forward_core(
            carray(address_to_pointer(a[0]), (batch, time, inputs), dtype),
            carray(address_to_pointer(a[1]), (batch, units), dtype),
            carray(address_to_pointer(a[2]), (inputs, width), dtype),
            carray(address_to_pointer(a[3]), (units, width), dtype),
            carray(address_to_pointer(a[4]), (rows, width), dtype),
            carray(address_to_pointer(a[5]), (batch if a[19] else 0, time if a[19] else 0),
                   np.bool_),
            a[19] != 0, reset_after, a[21] != 0, a[22], a[23],
            carray(address_to_pointer(a[25]), (a[26], a[27]), dtype), a[24] != 0,
            carray(address_to_pointer(a[6]), (batch, time, units), dtype),
            carray(address_to_pointer(a[7]), (batch, units), dtype),
            carray(address_to_pointer(a[8]), (time, batch, inputs), dtype),
            carray(address_to_pointer(a[9]), (time, batch, width), dtype),
            carray(address_to_pointer(a[10]), (time, batch, units), dtype),
            carray(address_to_pointer(a[11]), (time + 1, batch, units), dtype),
            carray(address_to_pointer(a[12]), (time, batch), np.bool_),
            carray(address_to_pointer(a[13]), batch, np.int64))
        a[_FORWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


def _backward_cfunc(reset_after):
    """The backward core's factory for one variant (see _forward_cfunc)."""
    def factory(dtype):
        return _backward_run(dtype, reset_after)
    return factory


def _backward_run(dtype, reset_after):
    _microgemm.ensure(dtype)  # the core calls the packed product by name
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _BACKWARD_ARGS + 1, np.int64)
        batch, time, inputs, units, rows = a[14], a[15], a[16], a[17], a[18]
        width = 3 * units
        backward_core(
            carray(address_to_pointer(a[0]), (time, batch, inputs), dtype),
            carray(address_to_pointer(a[1]), (time, batch, width), dtype),
            carray(address_to_pointer(a[2]), (time, batch, units), dtype),
            carray(address_to_pointer(a[3]), (time + 1, batch, units), dtype),
            carray(address_to_pointer(a[4]), (time, batch), np.bool_),
            carray(address_to_pointer(a[5]), batch, np.int64),
            carray(address_to_pointer(a[6]), (inputs, width), dtype),
            carray(address_to_pointer(a[7]), (units, width), dtype),
            carray(address_to_pointer(a[24]), (a[25], a[26]), dtype),
            carray(address_to_pointer(a[8]), (batch, time, units), dtype),
            carray(address_to_pointer(a[9]), (batch, units), dtype),
            reset_after, a[20] != 0, a[21], a[22], a[23] != 0,
            carray(address_to_pointer(a[10]), (batch, time, inputs), dtype),
            carray(address_to_pointer(a[11]), (inputs, width), dtype),
            carray(address_to_pointer(a[12]), (units, width), dtype),
            carray(address_to_pointer(a[13]), (rows, width), dtype))
        a[_BACKWARD_ARGS] = 1  # finished (kernels.runtime.abi)

    return run


# One pair of cores per variant: compiled together, the two variants' loops took
# 11-12 s of a cold compile of the backward core, one variant 6 s (2-core EPYC,
# float32). A first use compiles only the variant it runs; reset_after=True is
# Keras' default.
_VARIANTS = {True: "", False: "_reset_before"}  # kernels.runtime.abi's name suffix
_forward_after, _backward_after, _prepare_after = _abi.register_cell(
    "gru", _forward_cfunc(True), _backward_cfunc(True), (_FORWARD_ARGS, _BACKWARD_ARGS),
    _VARIANTS[True])
_forward_before, _backward_before, _prepare_before = _abi.register_cell(
    "gru", _forward_cfunc(False), _backward_cfunc(False), (_FORWARD_ARGS, _BACKWARD_ARGS),
    _VARIANTS[False])


def core_names(reset_after=True):
    """(forward core, backward core) of the variant, as kernels.runtime.abi names them."""
    suffix = _VARIANTS[bool(reset_after)]
    return f"gru_forward{suffix}", f"gru_backward{suffix}"


def prepare_cores(dtype, reset_after=True):
    """Compile (or load) and bind the GRU cores of the variant for dtype, once (cold,
    the backward one in a helper process meanwhile)."""
    (_prepare_after if reset_after else _prepare_before)(dtype)


@jit
def run_forward(x, h0, kernel, recurrent_kernel, bias, mask, has_mask, reset_after, go_backwards,
                act, ract, recurrent_mask, packed, out, h_last, x_tm, gates, extra, states,
                mask_tm, first):
    """forward_core through its compiled-once cfunc (call `prepare_cores(dtype,
    reset_after)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.empty(_FORWARD_ARGS + 1, np.int64)
    a[0], a[1], a[2], a[3] = x.ctypes.data, h0.ctypes.data, kernel.ctypes.data, recurrent_kernel.ctypes.data
    a[4], a[5], a[6], a[7] = bias.ctypes.data, mask.ctypes.data, out.ctypes.data, h_last.ctypes.data
    a[8], a[9], a[10], a[11] = x_tm.ctypes.data, gates.ctypes.data, extra.ctypes.data, states.ctypes.data
    a[12], a[13] = mask_tm.ctypes.data, first.ctypes.data
    a[14], a[15], a[16], a[17], a[18] = x.shape[0], x.shape[1], x.shape[2], h0.shape[1], bias.shape[0]
    a[19], a[20], a[21], a[22], a[23], a[24] = has_mask, reset_after, go_backwards, act, ract, packed
    a[25], a[26], a[27] = recurrent_mask.ctypes.data, recurrent_mask.shape[0], recurrent_mask.shape[1]
    if reset_after:
        return _forward_after(x, a)
    return _forward_before(x, a)


@jit
def run_backward(x_tm, gates, extra, states, mask_tm, first, kernel, recurrent_kernel,
                 recurrent_mask, d_out, dh, reset_after, go_backwards, act, ract, packed, dx,
                 d_kernel, d_recurrent, d_bias):
    """backward_core through its compiled-once cfunc (call `prepare_cores(dtype,
    reset_after)` first).
    Returns whether it finished (False: it raised, and Numba printed the error)."""
    a = np.empty(_BACKWARD_ARGS + 1, np.int64)
    a[0], a[1], a[2], a[3] = x_tm.ctypes.data, gates.ctypes.data, extra.ctypes.data, states.ctypes.data
    a[4], a[5], a[6], a[7] = mask_tm.ctypes.data, first.ctypes.data, kernel.ctypes.data, recurrent_kernel.ctypes.data
    a[8], a[9], a[10], a[11] = d_out.ctypes.data, dh.ctypes.data, dx.ctypes.data, d_kernel.ctypes.data
    a[12], a[13] = d_recurrent.ctypes.data, d_bias.ctypes.data
    a[14], a[15], a[16], a[17], a[18] = dh.shape[0], x_tm.shape[0], x_tm.shape[2], dh.shape[1], d_bias.shape[0]
    a[19], a[20], a[21], a[22], a[23] = reset_after, go_backwards, act, ract, packed
    a[24], a[25], a[26] = recurrent_mask.ctypes.data, recurrent_mask.shape[0], recurrent_mask.shape[1]
    if reset_after:
        return _backward_after(dh, a)
    return _backward_before(dh, a)



@dataclass(eq=False)
class GRUSaved:
    """What gru_backward needs; treat as opaque."""

    x_tm: np.ndarray
    gates: np.ndarray
    extra: np.ndarray  # hh (reset_after=True) or r * h_{t-1} (False), [T, B, H]
    states: np.ndarray
    mask: np.ndarray
    first: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    recurrent_mask: np.ndarray  # [B, 3H], or [0, 0] without recurrent dropout
    has_bias: bool
    reset_after: bool
    act: int
    ract: int
    go_backwards: bool


_NO_MASK = np.ones((0, 0), np.bool_)


def _bias_shape(reset_after):
    return (lambda h: (2, 3 * h)) if reset_after else (lambda h: (3 * h,))


def gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=None, reset_after=True,
                go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
                recurrent_mask=None):
    """GRU over a whole sequence, Keras semantics and weight layout (z | r | h).

    Args:
        x: [B, T, I] float32 or float64.
        h0: [B, H] initial state, or None for zeros.
        kernel: [I, 3H]. recurrent_kernel: [H, 3H].
        bias: [2, 3H] (input row, recurrent row) when reset_after, else [3H];
            None for use_bias=False.
        mask: bool [B, T] or None. A masked step keeps the state and repeats the
            previous output (zeros before the first unmasked step).
        reset_after: Keras' reset_after (True applies r after the recurrent matmul).
        go_backwards: process time in reverse; outputs are in processing order.
        activation: candidate activation ("tanh" default; see kernels.ACTIVATIONS).
        recurrent_activation: gate activation ("sigmoid" default).
        recurrent_mask: [B, 3H] or None. Keras' per-gate recurrent dropout
            (implementation=1), gates z | r | h side by side: each gate's recurrent
            product takes h_{t-1} * its mask (reset_after=False: (r * h_{t-1} * m_h) U_h).

    Returns:
        out [B, T, H], h_last [B, H], saved (for gru_backward).

    Example:
        >>> import numpy as np
        >>> from fastrnn import kernels
        >>> x = np.ones((2, 5, 3), np.float32)
        >>> W = np.full((3, 12), 0.1, np.float32); U = np.zeros((4, 12), np.float32)
        >>> out, h, saved = kernels.gru_forward(x, None, W, U, None)
        >>> out.shape, h.shape
        ((2, 5, 4), (2, 4))
    """
    if not isinstance(reset_after, (bool, np.bool_)):
        raise TypeError(f"reset_after must be a bool, got {reset_after!r}")
    x = v.check_x(x)
    kernel, recurrent_kernel, bias, units = v.check_weights(
        x, kernel, recurrent_kernel, 3, bias, _bias_shape(reset_after))
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype)
    act = v.activation_code(activation)
    ract = v.activation_code(recurrent_activation, "recurrent_activation")
    mask = v.check_mask(mask, batch, time)
    rec_mask = v.check_recurrent_mask(recurrent_mask, batch, 3 * units, x.dtype,
                                      meaning="[batch, 3 * units] (a mask per gate)")
    parts = _parts.plan(batch, time, x.shape[2], 3 * units)
    if parts > 1:
        return _parts.forward(lambda rows: gru_forward(
            x[rows], h0[rows], kernel, recurrent_kernel, bias,
            None if mask is None else mask[rows], reset_after, go_backwards, activation,
            recurrent_activation, rec_mask[rows] if rec_mask.size else None),
            batch, time, units, x.dtype, parts)
    has_bias = bias is not None
    bias2 = (np.zeros((2 if reset_after else 1, 3 * units), x.dtype) if bias is None
             else bias.reshape(-1, 3 * units))
    x_tm = _pool.empty((time, batch, x.shape[2]), x.dtype)
    gates = _pool.empty((time, batch, 3 * units), x.dtype)
    states = _pool.empty((time + 1, batch, units), x.dtype)
    extra = _pool.empty((time, batch, units), x.dtype)
    out = _pool.empty((batch, time, units), x.dtype)
    h_last = np.empty((batch, units), x.dtype)
    mask_tm = np.empty((time, batch), np.bool_)
    first = np.empty(batch, np.int64)
    prepare_cores(x.dtype, reset_after)
    _abi.finished(run_forward(
        x, h0, kernel, recurrent_kernel, bias2, _NO_MASK if mask is None else mask,
        mask is not None, bool(reset_after), bool(go_backwards), act, ract, rec_mask,
        _microgemm.wanted(), out, h_last, x_tm, gates, extra, states, mask_tm, first),
        "gru_forward")
    saved = GRUSaved(x_tm, gates, extra, states, mask_tm, first, kernel, recurrent_kernel,
                     rec_mask, has_bias, bool(reset_after), act, ract, go_backwards)
    return out, h_last, saved


def gru_backward(saved, d_out, d_h_last):
    """Gradients of gru_forward.

    Args:
        saved: the third value returned by gru_forward.
        d_out: [B, T, H] gradient of the outputs, or None.
        d_h_last: [B, H] gradient of the final state, or None.

    Returns:
        dx [B, T, I], dh0 [B, H], d_kernel [I, 3H], d_recurrent_kernel [H, 3H],
        d_bias ([2, 3H] or [3H]; None when the forward had no bias).
    """
    if type(saved) is _parts.SplitSaved:
        return _parts.backward(gru_backward, saved, (d_out, d_h_last), ("d_out", "d_h_last"))
    v.check_saved(saved, GRUSaved, "gru_forward")
    time, batch, width = saved.gates.shape
    units = width // 3
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype)
    dh = _pool.copy(v.check_grad(d_h_last, "d_h_last", (batch, units), dtype))
    inputs = saved.x_tm.shape[2]
    dx = _pool.empty((batch, time, inputs), dtype)
    d_kernel = _pool.empty((inputs, width), dtype)
    d_recurrent = _pool.empty((units, width), dtype)
    d_bias = np.empty((2 if saved.reset_after else 1, width), dtype)
    prepare_cores(dtype, saved.reset_after)
    _abi.finished(run_backward(
        saved.x_tm, saved.gates, saved.extra, saved.states, saved.mask, saved.first,
        saved.kernel, saved.recurrent_kernel, saved.recurrent_mask, d_out, dh, saved.reset_after,
        bool(saved.go_backwards), saved.act, saved.ract, _microgemm.wanted(), dx, d_kernel,
        d_recurrent, d_bias), "gru_backward")
    if not saved.has_bias:
        d_bias = None
    elif not saved.reset_after:
        d_bias = d_bias[0]
    return dx, dh, d_kernel, d_recurrent, d_bias
