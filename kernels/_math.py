"""exp, tanh and sigmoid that LLVM can vectorize (Numba calls libm one value at a time).

exp(x) = 2^k * e^r with k = round(x / ln 2), r = x - k ln 2 (Cody-Waite, |r| <= ln2/2)
and e^r by its degree-12 Taylor polynomial (truncation < 2e-16 relative). 2^k is
built from its bits, and k is rounded with the 1.5 * 2^52 shift so that no
float->int conversion (which AVX2 lacks for 64-bit lanes) is needed. Everything
is computed in float64, so float32 callers get correctly rounded-ish results too.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: adding it rounds to an integer in the low bits
_SHIFT_BITS = 0x4338000000000000
_EXP_BIAS = 1023
_X_MAX = 709.0
_X_MIN = -708.0
_INV_FACT = tuple(1.0 / float(np.prod(np.arange(1, n + 1))) for n in range(13))


@intrinsic
def _float64_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _float64_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_C = _INV_FACT


@njit(cache=True, inline="always", error_model="numpy")
def exp(x):
    x = min(max(np.float64(x), _X_MIN), _X_MAX)
    shifted = x * _LOG2E + _SHIFT
    k = shifted - _SHIFT
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _C[12]
    p = p * r + _C[11]
    p = p * r + _C[10]
    p = p * r + _C[9]
    p = p * r + _C[8]
    p = p * r + _C[7]
    p = p * r + _C[6]
    p = p * r + _C[5]
    p = p * r + _C[4]
    p = p * r + _C[3]
    p = p * r + _C[2]
    p = p * r + _C[1]
    p = p * r + _C[0]
    scale = _float64_from_bits((_float64_bits(shifted) - _SHIFT_BITS + _EXP_BIAS) << 52)
    return p * scale


@njit(cache=True, inline="always", error_model="numpy")
def sigmoid(x):
    return 1.0 / (1.0 + exp(-np.float64(x)))


@njit(cache=True, inline="always", error_model="numpy")
def tanh(x):
    x = np.float64(x)
    t = exp(-2.0 * abs(x))
    y = (1.0 - t) / (1.0 + t)
    return y if x >= 0.0 else -y
