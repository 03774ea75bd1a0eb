"""Device functions for the loop kernels, in which one block runs a batch row through every step.

A module of its own because it needs `cuda` as a module global (the simulator
swaps that name inside kernels), and kernels/gpu/cuda.py must import without numba-cuda.

Shared memory of a loop kernel (dynamic, one array; see _cuda.launch_rows):

    [scratch: one float per thread][vec: the longest vector multiplied]
    [cache: the first rows of each recurrent matrix, as many as fit]

The recurrent matrix is read at every step; the rows held in shared memory
are read at shared-memory latency, the rest through L2.
"""

from types import SimpleNamespace

import numpy as np
from numba import cuda  # a module global: the simulator swaps it inside kernels

u64 = np.uint64


def block_math(F):
    """Device functions for one block working on one batch row.

    matvec(vec, mat, cache, cached, out, scratch, vs): out[c] = sum_k vec[k] mat[k, c],
    computed by every thread of the block together (all must call it); vec
    [K], mat [K, C] and out [C] are views in global memory, cache holds
    mat[:cached] row-major (see stage), vs has room for K floats and scratch
    for one float per thread. vec is first copied to vs: it was written by this
    block in the step before, and a global read after a write goes to L2.
    When the block has at least twice as many threads as columns, each
    column's sum is split over `threads // C` threads (strided over k, so that
    neighbouring threads read neighbouring columns) and the partial sums meet
    in scratch: the per-step latency is what bounds a recurrence, and a split
    sum is that many times shorter. The caller synchronizes the block before
    anything reads `out` or reuses vs.

    stage(mat, rows, cache): copy mat[:rows] into cache; the caller synchronizes.

    layout(depth): (scratch, vs, rest), the kernel's dynamic shared memory cut as
    the module docstring lays it out for vectors of up to `depth` floats; the
    caches are the start of rest (_cuda.row_plan sizes the whole).
    """
    zero = F(0.0)

    @cuda.jit(device=True)
    def layout(depth):
        threads = cuda.blockDim.x
        shared = cuda.shared.array(0, F)
        return shared[:threads], shared[threads:threads + depth], shared[threads + depth:]

    @cuda.jit(device=True)
    def stage(mat, rows, cache):
        cols = mat.shape[1]
        for i in range(cuda.threadIdx.x, rows * cols, cuda.blockDim.x):
            k = i // cols
            cache[i] = mat[k, i - k * cols]

    @cuda.jit(device=True)
    def matvec(vec, mat, cache, cached, out, scratch, vs):
        # Indices into shared memory are unsigned and advanced by addition: a
        # signed index gets a negative-index check, and a 64-bit multiply is
        # several instructions on a GPU, per element of an otherwise one-FMA loop.
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        depth, cols = mat.shape[0], mat.shape[1]
        for k in range(tid, depth, threads):
            vs[k] = vec[k]
        cuda.syncthreads()
        split = min(threads // cols, depth)
        if split >= 2:
            c = tid % cols
            s = tid // cols
            if s < split:
                acc = zero
                k = s
                at = u64(s * cols + c)
                stride = u64(split * cols)
                while k < cached:
                    acc += vs[u64(k)] * cache[at]
                    k += split
                    at += stride
                while k < depth:
                    acc += vs[u64(k)] * mat[k, c]
                    k += split
                scratch[u64(s * cols + c)] = acc
            cuda.syncthreads()
            if tid < cols:
                total = zero
                at = u64(tid)
                for _ in range(split):
                    total += scratch[at]
                    at += u64(cols)
                out[tid] = total
        else:
            for c in range(tid, cols, threads):
                acc = zero
                at = u64(c)
                for k in range(cached):
                    acc += vs[u64(k)] * cache[at]
                    at += u64(cols)
                for k in range(cached, depth):
                    acc += vs[u64(k)] * mat[k, c]
                out[c] = acc

    # Per-gate recurrent dropout (kernels/fastmath/dropout.py): masks [G*H] for this row, mats
    # [G, H, H] the gate blocks U_g (or their transposes), rows hm / part [G*H] in global
    # memory; matvec reads no cached rows here (cached 0: vs stands in for the cache).

    @cuda.jit(device=True)
    def dropped_matvec(vec, masks, mats, hm, out, scratch, vs):
        # out[gH:(g+1)H] = (vec * m_g) @ U_g for each gate g.
        units = vec.shape[0]
        gates = mats.shape[0]
        for i in range(cuda.threadIdx.x, gates * units, cuda.blockDim.x):
            g = i // units
            hm[i] = vec[i - g * units] * masks[i]
        cuda.syncthreads()
        for g in range(gates):
            o = g * units
            matvec(hm[o:o + units], mats[g], vs, 0, out[o:o + units], scratch, vs)
            cuda.syncthreads()

    @cuda.jit(device=True)
    def dropped_matvec_t(vec, masks, mats_t, part, out, scratch, vs):
        # out[k] = sum_g (vec[gH:(g+1)H] @ U_g^T)[k] * m_g[k].
        units = out.shape[0]
        gates = mats_t.shape[0]
        for g in range(gates):
            o = g * units
            matvec(vec[o:o + units], mats_t[g], vs, 0, part[o:o + units], scratch, vs)
            cuda.syncthreads()
        for k in range(cuda.threadIdx.x, units, cuda.blockDim.x):
            acc = zero
            for g in range(gates):
                acc += part[g * units + k] * masks[g * units + k]
            out[k] = acc
        cuda.syncthreads()

    return SimpleNamespace(matvec=matvec, stage=stage, layout=layout,
                           dropped_matvec=dropped_matvec, dropped_matvec_t=dropped_matvec_t)
