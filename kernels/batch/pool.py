"""Reuse of large buffers between kernel calls, and 64-byte alignment.

In a virtual machine a first touch of fresh memory costs a page fault per 4 KiB,
and glibc hands large blocks back to the OS on free, so every call that
allocates its workspaces anew pays those faults again (minGRU B16 T1024 H128
forward+backward: 35 ms with fresh buffers, 27 ms with reused ones, measured
here). `empty` serves large arrays from a small pool of raw byte buffers and
reuses a buffer only when nothing else refers to it: every array or view made
from it holds a reference to it, so a buffer still visible anywhere (a user's
output, a `saved` object waiting for its backward) is never handed out twice.
"""

import math
import sys
import threading

import numpy as np
from numba import njit

_MIN_BYTES = 1 << 20          # smaller arrays are never pooled
# Every array starts on a 64-byte boundary: TensorFlow takes an array a py_func
# returns without copying it only when its data is aligned to EIGEN_MAX_ALIGN_BYTES
# (64); otherwise it copies it (measured: a 40 MB unaligned result cost 27 ms, an
# aligned one 0.45 ms, TF 2.21 here). NumPy's own allocations are 16-byte aligned.
# Below 64 KiB the alignment itself (about 1.5 us) costs more than TensorFlow's
# copy, and a kernel call makes a dozen such arrays, so small arrays are plain
# numpy.empty.
ALIGN = 64
_ALIGN_MIN_BYTES = 1 << 16
_MAX_IDLE_BYTES = 1 << 29     # at most 512 MiB kept while unused
_MAX_BUFFERS = 64             # beyond this, the oldest buffers still in use leave the pool
_lock = threading.Lock()
_buffers = []                 # raw uint8 arrays, most recently used last


def _idle(i):
    # The pool's list and getrefcount's own argument are the only references.
    return sys.getrefcount(_buffers[i]) <= 2


@njit(cache=True)
def _address(raw):
    # The buffer's address: 0.2 us through Numba against 1.4 us for raw.ctypes.data.
    return raw.ctypes.data


def _aligned(raw, nbytes, dtype, shape):
    offset = (-_address(raw)) % ALIGN
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def empty(shape, dtype):
    """Like numpy.empty, 64-byte aligned from 64 KiB on, possibly reusing an idle
    pooled buffer (from 1 MiB on)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _ALIGN_MIN_BYTES:
        return np.empty(shape, dtype)
    if nbytes < _MIN_BYTES:
        return _aligned(np.empty(nbytes + ALIGN, np.uint8), nbytes, dtype, shape)
    with _lock:
        # The smallest idle buffer that fits: a first fit let a small request take
        # a buffer twice its size that a larger request of the same call then
        # missed, and a split call (kernels.batch.parts: parts' arrays half the size of
        # the joined outputs) page-faulted fresh buffers for several calls.
        best = None
        for i in range(len(_buffers)):
            size = _buffers[i].nbytes
            if (nbytes + ALIGN <= size <= 2 * nbytes
                    and (best is None or size < _buffers[best].nbytes) and _idle(i)):
                best = i
        if best is None:
            chosen = np.empty(nbytes + ALIGN, np.uint8)
        else:
            chosen = _buffers.pop(best)
        array = _aligned(chosen, nbytes, dtype, shape)
        _buffers.append(chosen)
        del chosen
        _trim()
    return array


def _trim():
    idle = [i for i in range(len(_buffers)) if _idle(i)]
    total = sum(_buffers[i].nbytes for i in idle)
    drop = []
    for i in idle:  # oldest first
        if total <= _MAX_IDLE_BYTES:
            break
        drop.append(i)
        total -= _buffers[i].nbytes
    for i in reversed(drop):
        del _buffers[i]
    # Buffers still referenced elsewhere (saved objects a caller keeps) need no
    # pool entry: forgetting the oldest keeps each lookup short; numpy frees them.
    while len(_buffers) > _MAX_BUFFERS:
        del _buffers[0]


def clear():
    """Drop every idle buffer (memory still referenced elsewhere stays alive)."""
    with _lock:
        _buffers.clear()


def matmul(a, b):
    """a @ b for 2-D operands, into a pooled buffer.

    np.dot rather than np.matmul: for an inner dimension of 1 (univariate series),
    matmul took 95 us where dot took 14 us ([480, 1] @ [1, 135] float32, here).
    """
    out = empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    return np.dot(a, b, out=out)


def matmul_tn(a, b):
    """a.T @ b for 2-D operands (the weight gradients), into an aligned buffer."""
    out = empty((a.shape[1], b.shape[1]), np.result_type(a, b))
    return np.dot(a.T, b, out=out)


def copy(a):
    """A C-contiguous, aligned copy of a."""
    out = empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def ascontiguous(a):
    """np.ascontiguousarray into a pooled buffer (a copy unless already C-contiguous)."""
    if a.flags.c_contiguous:
        return a
    out = empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out
