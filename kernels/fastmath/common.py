"""Pieces every Numba CPU launcher shares: activations by code, time-major
layout in and out, and the mask bookkeeping.

Layout inside the kernels is time-major, [T, B, .], so that step t is one
contiguous [B, .] slab for the per-step BLAS call. Processing order is stored:
with go_backwards the input is reversed once on the way in, and gradients
with respect to x are reversed once on the way out.
"""

import numpy as np
from numba import carray, cfunc

from ..runtime import abi as _abi
from ..runtime.options import OPTIONS, inline_jit, jit  # noqa: F401 - the cells' launchers take them from here
from ..batch import pool as _pool
from ..blas.binding import gemm, gemm_tn
from .functions import sigmoid as fast_sigmoid
from .functions import tanh as fast_tanh


# Activation codes as in _validate.ACTIVATIONS:
# 0 tanh, 1 relu, 2 sigmoid, 3 linear, 4 hard_sigmoid.


@jit
def activate(code, a):
    """a = act(a) in place over a 1-D contiguous slab (the branch sits outside the loop)."""
    n = a.shape[0]
    if code == 0:
        for i in range(n):
            a[i] = fast_tanh(a[i])
    elif code == 1:
        for i in range(n):
            a[i] = max(a[i], 0.0)
    elif code == 2:
        for i in range(n):
            a[i] = fast_sigmoid(a[i])
    elif code == 4:
        for i in range(n):
            a[i] = min(max(a[i] / 6.0 + 0.5, 0.0), 1.0)


@jit
def activation_grad(code, y, out):
    """out = act'(v) written in terms of y = act(v), over 1-D slabs."""
    n = y.shape[0]
    if code == 0:
        for i in range(n):
            out[i] = 1.0 - y[i] * y[i]
    elif code == 1:
        for i in range(n):
            out[i] = 1.0 if y[i] > 0.0 else 0.0
    elif code == 2:
        for i in range(n):
            out[i] = y[i] * (1.0 - y[i])
    elif code == 4:
        for i in range(n):
            out[i] = 1.0 / 6.0 if (y[i] > 0.0 and y[i] < 1.0) else 0.0
    else:
        for i in range(n):
            out[i] = 1.0


# The recurrent cells' backward passes (GRU reset_after, LSTM, SimpleRNN) keep their
# per-step gradients in a scratch of at most this many bytes and, each time it is
# full, turn it into its share of dx and the weight gradients with three GEMMs. So no
# [T, B, G*H] gradient array is allocated however long the sequence (GRU(256) at B64
# T1000 used 2 x 196 MB for it). Measured here: blocks of 1-4 MiB, sized for the
# caches, were 5-10% slower than one block (many small GEMMs lose more than the cache
# gains); 16 MiB ran as fast as one block. minGRU, with no per-step GEMM, does gain
# from cache-sized blocks (mingru/cpu.py).
BLOCK_BYTES = 1 << 24


def per_block(bytes_each, n, block_bytes=None):
    """How many of n items (steps, or batch rows) of bytes_each make one block of a
    blocked backward pass: block_bytes' worth (BLOCK_BYTES by default), at least 1."""
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    return max(1, min(n, block_bytes // max(1, bytes_each)))


def to_time_major(x, go_backwards):
    """[B, T, F] -> C-contiguous [T, B, F] in processing order (one copy)."""
    if go_backwards:
        x = x[:, ::-1]
    return _pool.ascontiguous(x.transpose(1, 0, 2))


def from_time_major(a_tm, go_backwards):
    """[T, B, F] in processing order -> C-contiguous [B, T, F] in input order."""
    a = a_tm.transpose(1, 0, 2)
    if go_backwards:
        a = a[:, ::-1]
    return _pool.ascontiguous(a)


def time_major_mask(mask, batch, time, go_backwards):
    """Return (mask [T, B] bool in processing order, first [B] int64).

    first[b] is the first processed step at which row b is unmasked (T if
    never): Keras' outputs are zeros before it, and repeat the state after it.
    """
    if mask is None:
        return np.ones((time, batch), np.bool_), np.zeros(batch, np.int64)
    m = mask[:, ::-1] if go_backwards else mask
    first = np.where(m.any(axis=1), m.argmax(axis=1), time).astype(np.int64)
    return np.ascontiguousarray(m.T), first


@jit
def project(x2, kernel, out):
    """out [N, G*H] = x2 [N, I] @ kernel [I, G*H], the input projection of every step.
    Inside the kernel rather than np.dot from Python: 10-15 us less per call at the
    seed models' sizes; for one input feature (univariate series) a plain outer
    product, which BLAS ran in 7.7 us at [480, 1] x [1, 45] against about 2 here."""
    if x2.shape[1] == 1:
        n, width = out.shape
        w = kernel[0]
        for i in range(n):
            xi = x2[i, 0]
            row = out[i]
            for j in range(width):
                row[j] = xi * w[j]
    else:
        gemm(x2, kernel, out, False)


@jit
def all_rows(mask, t):
    """Whether every batch row is unmasked at step t (mask [T, B]): then a gate pass
    can run over the whole [B, H] slab at once, which vectorizes where a row of a
    few dozen units mostly runs in the loop's scalar remainder."""
    for b in range(mask.shape[1]):
        if not mask[t, b]:
            return False
    return True


@jit
def masked_output_rows(states, out, mask, first, t):
    """Keras' rule for rows masked at step t: keep the state, repeat the previous output."""
    batch, units = states.shape[1], states.shape[2]
    for b in range(batch):
        if not mask[t, b]:
            keep = t > first[b]
            for j in range(units):
                h = states[t, b, j]
                states[t + 1, b, j] = h
                out[b, t, j] = h if keep else 0.0 * h


@jit
def add_output_grad(dh, d_out, mask, first, t):
    """dh += d_out[:, t] where step t's output is the state (t >= first row)."""
    batch, units = dh.shape
    for b in range(batch):
        if t >= first[b]:
            for j in range(units):
                dh[b, j] += d_out[b, t, j]


@jit
def add_unmasked_rows(dh, rec, mask, t):
    """dh[b] += rec[b] for the rows unmasked at step t (a masked step passes dh on)."""
    batch, units = dh.shape
    for b in range(batch):
        if mask[t, b]:
            for j in range(units):
                dh[b, j] += rec[b, j]


@jit
def block_gradients(d_x, d_h, h_prev, x_tm, kernel_t, lo, hi, time, dx_tm, d_kernel,
                    d_recurrent):
    """After a blocked backward pass has done steps lo..hi-1: dx_tm[lo:hi] = d_x W^T,
    d_kernel += x^T d_x and d_recurrent += h_prev^T d_h, the block's gradients still
    in cache. d_x = dL/d(x W + b), d_h = dL/d(h U + b) [hi-lo, B, G*H]; h_prev
    [hi-lo, B, H]. The first block (hi == time) overwrites the weight gradients."""
    block_input_gradients(d_x, x_tm, kernel_t, lo, hi, time, dx_tm, d_kernel)
    n = (hi - lo) * d_x.shape[1]
    width, units = d_x.shape[2], h_prev.shape[2]
    gemm_tn(h_prev.reshape(n, units), d_h.reshape(n, width), d_recurrent, hi < time)


@jit
def block_input_gradients(d_x, x_tm, kernel_t, lo, hi, time, dx_tm, d_kernel):
    """block_gradients' dx_tm[lo:hi] = d_x W^T and d_kernel += x^T d_x alone (the
    recurrent kernel's share computed otherwise: kernels.fastmath.dropout)."""
    n = (hi - lo) * d_x.shape[1]
    width, inputs = d_x.shape[2], x_tm.shape[2]
    dx2 = d_x.reshape(n, width)
    gemm(dx2, kernel_t, dx_tm[lo:hi].reshape(n, inputs), False)
    gemm_tn(x_tm[lo:hi].reshape(n, inputs), dx2, d_kernel, hi < time)


# Nopython forms of the launchers' layout steps, for the cores (a whole kernel call
# in @njit code, shared by the Python launchers and the TensorFlow ops' cfuncs).


@jit
def time_major_into(x, go_backwards, out):
    """out [T, B, F] = x [B, T, F] in processing order (time reversed if go_backwards)."""
    batch, time, features = x.shape
    for t in range(time):
        src = time - 1 - t if go_backwards else t
        for b in range(batch):
            row_in = x[b, src]
            row_out = out[t, b]
            for j in range(features):
                row_out[j] = row_in[j]


@jit
def batch_major_into(a_tm, go_backwards, out):
    """out [B, T, F] = a_tm [T, B, F] (processing order) in input order."""
    time, batch, features = a_tm.shape
    for t in range(time):
        dst = time - 1 - t if go_backwards else t
        for b in range(batch):
            row_in = a_tm[t, b]
            row_out = out[b, dst]
            for j in range(features):
                row_out[j] = row_in[j]


@jit
def mask_into(mask, has_mask, go_backwards, mask_tm, first):
    """mask_tm [T, B] bool in processing order and first [B] (see time_major_mask)
    from mask [B, T] (ignored unless has_mask)."""
    time, batch = mask_tm.shape
    for b in range(batch):
        first[b] = 0 if not has_mask else time
        for t in range(time):
            keep = True
            if has_mask:
                keep = mask[b, time - 1 - t if go_backwards else t]
                if keep and first[b] == time:
                    first[b] = t
            mask_tm[t, b] = keep


@jit
def steps_per_block(bytes_each, n):
    """per_block(bytes_each, n) in nopython code."""
    return max(1, min(n, BLOCK_BYTES // max(1, bytes_each)))


@jit
def prepare(x, mask, has_mask, go_backwards, x_tm, mask_tm, first):
    """What a core derives from its inputs: x_tm [T, B, I], mask_tm [T, B], first [B]."""
    time_major_into(x, go_backwards, x_tm)
    mask_into(mask, has_mask, go_backwards, mask_tm, first)


# prepare compiled once per dtype (kernels.runtime.abi), for the TensorFlow backward ops
# (fastrnn/ops/native/cells.py), which rebuild x_tm from x: one copy of its code for every cell. Args:
# addresses of x, mask, x_tm, mask_tm, first; batch, time, inputs, has_mask,
# go_backwards; the done flag.
_PREPARE_ARGS = 10


def _prepare_cfunc(dtype):
    @cfunc(_abi.SIGNATURE, cache=True, error_model="numpy", nogil=True)
    def run(address):
        a = carray(address, _PREPARE_ARGS + 1, np.int64)
        batch, time, inputs, has_mask = a[5], a[6], a[7], a[8] != 0
        prepare(carray(_abi.address_to_pointer(a[0]), (batch, time, inputs), dtype),
                carray(_abi.address_to_pointer(a[1]), (batch if has_mask else 0,
                                                       time if has_mask else 0), np.bool_),
                has_mask, a[9] != 0,
                carray(_abi.address_to_pointer(a[2]), (time, batch, inputs), dtype),
                carray(_abi.address_to_pointer(a[3]), (time, batch), np.bool_),
                carray(_abi.address_to_pointer(a[4]), batch, np.int64))
        a[_PREPARE_ARGS] = 1

    return run


_abi.register("prepare", _prepare_cfunc, _PREPARE_ARGS)


# Array-to-array assignment (a[...] = b) makes Numba compile its shape-mismatch
# error message, string formatting included: about 7 s of cold compile for each
# function that has one (measured: 7.4 of the 16.4 s of GRU's forward loop). The
# cores copy with these loops instead.


@jit
def copy_1d(dst, src):
    """dst[j] = src[j] for 1-D arrays of one length."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@jit
def copy_2d(dst, src):
    """dst[i, j] = src[i, j] for 2-D arrays of one shape (any strides)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]
