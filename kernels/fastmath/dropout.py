"""Per-gate recurrent dropout for the gated CPU cores (LSTM, GRU).

Keras 3 runs `recurrent_dropout` with `implementation=1`: each gate g multiplies
h_{t-1} by its own mask m_g (one [B, H] mask per gate, fixed over the steps)
before its block U_g of the recurrent kernel. The cores take the masks side by
side as one [B, G*H] array (gate g in columns gH..(g+1)H, as U's column blocks),
or an empty [0, 0] array for none. Then the one per-step product h U becomes G
products (h * m_g) U_g of the same total size, and in the backward

    dL/dh_{t-1} += sum_g (dz_g U_g^T) * m_g,    dL/dU_g += (h_{t-1} * m_g)^T dz_g.

Each gate's block of U is copied (and packed for the micro-kernel) once per call.
"""

import numpy as np

from ..blas.binding import gemm_tn
from ..runtime.options import jit
from ..blas.microgemm import _pack, _pack_transposed, _packed_length, product


@jit
def gate_blocks(u, gates, use):
    """U [H, G*H] as G C-contiguous blocks [G, H, H] and, when use, each packed for
    the micro-kernel ([G, L]; else [G, 0]): what dropped_product takes."""
    units = u.shape[0]
    mats = np.empty((gates, units, units), u.dtype)
    for g in range(gates):
        for k in range(units):
            for j in range(units):
                mats[g, k, j] = u[k, g * units + j]
    length = _packed_length(units, units, u.itemsize) if use else 0
    packed = np.empty((gates, length), u.dtype)
    if use:
        for g in range(gates):
            _pack(mats[g], packed[g])
    return mats, packed


@jit
def gate_blocks_transposed(u, gates, use):
    """The blocks' transposes U_g^T as gate_blocks lays them out, for dropped_product_t:
    when use only packed (the blocks are then [G, 0, H], of which the product reads
    the column count)."""
    units = u.shape[0]
    rows = 0 if use else units
    mats = np.empty((gates, rows, units), u.dtype)
    length = _packed_length(units, units, u.itemsize) if use else 0
    packed = np.empty((gates, length), u.dtype)
    block = np.empty((units, units), u.dtype)
    for g in range(gates):
        for k in range(units):
            for j in range(units):
                block[k, j] = u[k, g * units + j]
        if use:
            _pack_transposed(block, packed[g])
        else:
            for k in range(units):
                for j in range(units):
                    mats[g, j, k] = block[k, j]
    return mats, packed


@jit
def dropped_product(h, rec_mask, mats, packed, hm, part, rec):
    """rec[:, gH:(g+1)H] = (h * m_g) @ U_g for the gates of mats (gate_blocks), h [B, H],
    rec_mask [B, >= G*H]; hm and part [B, H] scratch."""
    batch, units = h.shape
    for g in range(mats.shape[0]):
        o = g * units
        for b in range(batch):
            for j in range(units):
                hm[b, j] = h[b, j] * rec_mask[b, o + j]
        product(hm, mats[g], packed[g], part, False)
        for b in range(batch):
            for j in range(units):
                rec[b, o + j] = part[b, j]


@jit
def dropped_product_t(dz, rec_mask, mats_t, packed_t, dzg, part, rec):
    """rec [B, H] = sum_g (dz_g @ U_g^T) * m_g over the gates of mats_t
    (gate_blocks_transposed), dz [B, >= G*H]; dzg and part [B, H] scratch."""
    batch, units = rec.shape
    for b in range(batch):
        for j in range(units):
            rec[b, j] = 0.0
    for g in range(mats_t.shape[0]):
        o = g * units
        for b in range(batch):
            for j in range(units):
                dzg[b, j] = dz[b, o + j]
        product(dzg, mats_t[g], packed_t[g], part, False)
        for b in range(batch):
            for j in range(units):
                rec[b, j] += part[b, j] * rec_mask[b, o + j]


@jit
def dropped_recurrent_gradient(h_prev, d_h, rec_mask, gates, d_recurrent, accumulate):
    """d_recurrent[:, gH:(g+1)H] = (or += when accumulate) sum over steps of
    (h_prev * m_g)^T d_h[..., gH:(g+1)H] for g < gates; h_prev [n, B, H], d_h [n, B, >= G*H]."""
    steps, batch, units = h_prev.shape
    n = steps * batch
    hm = np.empty((n, units), h_prev.dtype)
    dzg = np.empty((n, units), h_prev.dtype)
    part = np.empty((units, units), h_prev.dtype)
    for g in range(gates):
        o = g * units
        for t in range(steps):
            for b in range(batch):
                r = t * batch + b
                for j in range(units):
                    hm[r, j] = h_prev[t, b, j] * rec_mask[b, o + j]
                    dzg[r, j] = d_h[t, b, o + j]
        gemm_tn(hm, dzg, part, False)
        for k in range(units):
            for j in range(units):
                if accumulate:
                    d_recurrent[k, o + j] += part[k, j]
                else:
                    d_recurrent[k, o + j] = part[k, j]
