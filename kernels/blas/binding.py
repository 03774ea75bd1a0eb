"""One matrix product for the per-step recurrent GEMMs inside @njit kernels.

`gemm(a, b, out, accumulate)` computes ``out = a @ b`` (or ``out += a @ b``) for
C-contiguous 2-D arrays of one float dtype; `gemm_tn` the same with ``a.T``.

Numba's own ``np.dot`` goes through SciPy's bundled OpenBLAS. NumPy's wheels
bundle a newer OpenBLAS whose small-matrix sgemm measured about twice as fast
here (2-core AMD EPYC, [16, 128] @ [128, 384] float32, one thread: 29 us
against 55 us), and the per-step product is exactly that kind of matrix. So the
kernels call a CBLAS symbol of our own name, `fastrnn_cblas_[sd]gemm`, which is
bound at import to NumPy's ILP64 CBLAS when NumPy has one, and otherwise to a
Numba cfunc that calls ``np.dot`` (SciPy's BLAS). The symbol's name and ABI
never change, so kernels cached on disk stay valid whichever backend is bound.
"""

import contextlib
import ctypes
import threading

import llvmlite.binding as llvm
import numpy as np
from numba import carray, cfunc, types
from numba.extending import overload

_ROW_MAJOR = 101
_NO_TRANS = 111
_TRANS = 112

_SIGNATURES = {
    "s": types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                    types.float32, types.voidptr, types.int64, types.voidptr, types.int64,
                    types.float32, types.voidptr, types.int64),
    "d": types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                    types.float64, types.voidptr, types.int64, types.voidptr, types.int64,
                    types.float64, types.voidptr, types.int64),
}

_sgemm = types.ExternalFunction("fastrnn_cblas_sgemm", _SIGNATURES["s"])
_dgemm = types.ExternalFunction("fastrnn_cblas_dgemm", _SIGNATURES["d"])


def _fallback(dtype):
    # Row-major, contiguous operands, a possibly transposed: all the kernels ever ask for.
    @cfunc(_SIGNATURES["s" if dtype == np.float32 else "d"], cache=True)
    def gemm(order, trans_a, trans_b, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):
        if trans_a == _TRANS:
            a = np.ascontiguousarray(carray(a_ptr, (k, m), dtype).T)
        else:
            a = carray(a_ptr, (m, k), dtype)
        b = carray(b_ptr, (k, n), dtype)
        c = carray(c_ptr, (m, n), dtype)
        if beta == 0.0:
            np.dot(a, b, c)
        else:
            c += np.dot(a, b)

    return gemm.address


def _numpy_cblas(kind):
    import numpy._core._multiarray_umath as umath

    lib = ctypes.CDLL(umath.__file__)
    for name in (f"scipy_cblas_{kind}gemm64_", f"cblas_{kind}gemm64_"):
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value, name
        except AttributeError:
            continue
    return None, None


def _bind():
    backends = {}
    for kind, dtype in (("s", np.float32), ("d", np.float64)):
        try:
            address, name = _numpy_cblas(kind)
        except (ImportError, OSError):
            address, name = None, None
        if address is None:
            address, name = _fallback(dtype), "numba np.dot (SciPy BLAS)"
        llvm.add_symbol(f"fastrnn_cblas_{kind}gemm", address)
        backends[kind] = name
    return backends


BACKENDS = _bind()


def gemm(a, b, out, accumulate):
    """out = a @ b, or out += a @ b when accumulate; C-contiguous 2-D, one dtype.

    Callable from @njit code only.
    """
    raise NotImplementedError("fastrnn.kernels.blas.binding.gemm is callable from @njit code only")


def gemm_tn(a, b, out, accumulate):
    """out = a.T @ b, or out += a.T @ b when accumulate; a [K, M], b [K, N] and out
    [M, N] C-contiguous, one dtype. Callable from @njit code only."""
    raise NotImplementedError("fastrnn.kernels.blas.binding.gemm_tn is callable from @njit code only")


def _overload_gemm(fn, trans_a):
    @overload(fn, inline="always")
    def _impl(a, b, out, accumulate):
        blas = _sgemm if a.dtype == types.float32 else _dgemm
        scalar = np.float32 if a.dtype == types.float32 else np.float64
        trans = _TRANS if trans_a else _NO_TRANS

        def impl(a, b, out, accumulate):
            # a is stored row-major either way, so its leading dimension is its row length.
            rows, cols = a.shape
            m, k = (cols, rows) if trans_a else (rows, cols)
            n = b.shape[1]
            blas(_ROW_MAJOR, trans, _NO_TRANS, m, n, k, scalar(1.0), a.ctypes, cols,
                 b.ctypes, n, scalar(accumulate), out.ctypes, n)

        return impl


_overload_gemm(gemm, trans_a=False)
_overload_gemm(gemm_tn, trans_a=True)


def _threads_setter():
    import numpy._core._multiarray_umath as umath

    try:
        lib = ctypes.CDLL(umath.__file__)
        setter = lib.openblas_set_num_threads_local
    except (OSError, AttributeError):
        return None
    setter.argtypes = [ctypes.c_int]
    setter.restype = ctypes.c_int
    return setter


# OpenBLAS >= 0.3.27 names this "_local", but in NumPy's pthreads build it sets
# the count for the whole process (measured: a worker thread setting 1 made the
# main thread's 2000 x 2000 sgemm 2x slower). So every change goes through
# `limit_threads`, which counts who holds a limit and restores the count only
# when the last holder leaves: two callers interleaving (two directions of a
# Bidirectional layer in TensorFlow's thread pool) cannot leave it at 1.
_set_threads = _threads_setter()
_limit_lock = threading.Lock()
_limit_holders = 0
_count_before = None


def hold_threads(n):
    """Set OpenBLAS threads for the whole process to n until the matching
    `release_threads()` (nestable, thread-safe): the count from before the first
    holder is restored when the last one releases. A no-op where NumPy's BLAS is
    not OpenBLAS. Prefer `limit_threads`; this pair skips the context manager's
    cost (about 2 us) on the layers' per-call path."""
    global _limit_holders, _count_before, _held_count
    if _set_threads is None:
        return
    with _limit_lock:
        previous = _set_threads(int(n))
        if _limit_holders == 0:
            _count_before = previous
        _limit_holders += 1
        _held_count = int(n)


def release_threads():
    global _limit_holders
    if _set_threads is None:
        return
    with _limit_lock:
        _limit_holders -= 1
        if _limit_holders == 0:
            _set_threads(_count_before)


def _threads_getter():
    import numpy._core._multiarray_umath as umath

    try:
        lib = ctypes.CDLL(umath.__file__)
    except OSError:
        return None
    for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                 "openblas_get_num_threads"):
        getter = getattr(lib, name, None)
        if getter is not None:
            getter.argtypes = []
            getter.restype = ctypes.c_int
            return getter
    return None


_get_threads = _threads_getter()
_held_count = None  # the count the current holders set


def single_threaded():
    """Whether NumPy's BLAS runs on one thread now: a holder set it to one, or
    OpenBLAS is set so. False where it is not OpenBLAS (its threads are unknown)."""
    if _limit_holders:
        return _held_count == 1
    return _get_threads is not None and _get_threads() == 1


def holders():
    """How many callers hold a thread limit now (see hold_threads)."""
    return _limit_holders


@contextlib.contextmanager
def limit_threads(n):
    """OpenBLAS threads for the whole process set to n while inside (see hold_threads)."""
    hold_threads(n)
    try:
        yield
    finally:
        release_threads()
