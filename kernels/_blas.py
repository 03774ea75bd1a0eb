"""One matrix product for the per-step recurrent GEMMs inside @njit kernels.

`gemm(a, b, out, accumulate)` computes ``out = a @ b`` (or ``out += a @ b``) for
C-contiguous 2-D arrays of one float dtype.

Numba's own ``np.dot`` goes through SciPy's bundled OpenBLAS. NumPy's wheels
bundle a newer OpenBLAS whose small-matrix sgemm measured about twice as fast
here (2-core AMD EPYC, [16, 128] @ [128, 384] float32, one thread: 29 us
against 55 us), and the per-step product is exactly that kind of matrix. So the
kernels call a CBLAS symbol of our own name, `fastrnn_cblas_[sd]gemm`, which is
bound at import to NumPy's ILP64 CBLAS when NumPy has one, and otherwise to a
Numba cfunc that calls ``np.dot`` (SciPy's BLAS). The symbol's name and ABI
never change, so kernels cached on disk stay valid whichever backend is bound.
"""

import ctypes

import llvmlite.binding as llvm
import numpy as np
from numba import carray, cfunc, types
from numba.extending import overload

_ROW_MAJOR = 101
_NO_TRANS = 111

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
    # Row-major, no transposes, contiguous operands: all the kernels ever ask for.
    @cfunc(_SIGNATURES["s" if dtype == np.float32 else "d"], cache=True)
    def gemm(order, trans_a, trans_b, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):
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
    raise NotImplementedError("fastrnn.kernels._blas.gemm is callable from @njit code only")


@overload(gemm, inline="always")
def _gemm_impl(a, b, out, accumulate):
    blas = _sgemm if a.dtype == types.float32 else _dgemm
    scalar = np.float32 if a.dtype == types.float32 else np.float64

    def impl(a, b, out, accumulate):
        m, k = a.shape
        n = b.shape[1]
        blas(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, n, k, scalar(1.0), a.ctypes, k,
             b.ctypes, n, scalar(accumulate), out.ctypes, n)

    return impl


def _local_threads_setter():
    import numpy._core._multiarray_umath as umath

    try:
        lib = ctypes.CDLL(umath.__file__)
        setter = lib.openblas_set_num_threads_local
    except (OSError, AttributeError):
        return None
    setter.argtypes = [ctypes.c_int]
    setter.restype = ctypes.c_int
    return setter


_set_local_threads = _local_threads_setter()


def set_local_threads(n):
    """OpenBLAS threads for BLAS calls made from the calling thread only
    (OpenBLAS >= 0.3.27); returns the previous count, or None where unsupported."""
    if _set_local_threads is None:
        return None
    return _set_local_threads(int(n))
