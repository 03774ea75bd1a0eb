"""exp, tanh and sigmoid that LLVM can vectorize (Numba calls libm one value at a time).

exp(x) = 2^k * e^r with k = round(x / ln 2) and r = x - k ln 2 (Cody-Waite, |r| <=
ln2 / 2), e^r by its Taylor polynomial: degree 12 in float64 (truncation < 2e-16
relative), degree 7 in float32 (< 6e-9). 2^k is built from its bits; k is rounded
by adding 1.5 * 2^52 (2^23 in float32), so that no float->int conversion, which
AVX2 lacks for 64-bit lanes, is needed. float32 stays float32 (8 lanes with AVX2),
float64 stays float64.

Callers must be compiled with error_model="numpy" (no zero-division branch), or
the loops around these functions do not vectorize.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


def _bitcast(from_type, to_type, to_ir):
    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], to_ir)
        return to_type(from_type), codegen

    return cast


_f64_bits = _bitcast(types.float64, types.int64, ir.IntType(64))
_f64_from_bits = _bitcast(types.int64, types.float64, ir.DoubleType())
_f32_bits = _bitcast(types.float32, types.int32, ir.IntType(32))
_f32_from_bits = _bitcast(types.int32, types.float32, ir.FloatType())


def _taylor(n, dtype):
    return tuple(dtype(1.0 / float(np.prod(np.arange(1, k + 1)))) for k in range(n + 1))


_C64 = _taylor(12, np.float64)
_C32 = _taylor(7, np.float32)
_F = np.float32


@njit(cache=True, inline="always", error_model="numpy")
def _exp64(x):
    x = min(max(x, -708.0), 709.0)
    shifted = x * 1.4426950408889634 + 6755399441055744.0
    k = shifted - 6755399441055744.0
    r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    p = _C64[12]
    p = p * r + _C64[11]
    p = p * r + _C64[10]
    p = p * r + _C64[9]
    p = p * r + _C64[8]
    p = p * r + _C64[7]
    p = p * r + _C64[6]
    p = p * r + _C64[5]
    p = p * r + _C64[4]
    p = p * r + _C64[3]
    p = p * r + _C64[2]
    p = p * r + _C64[1]
    p = p * r + _C64[0]
    return p * _f64_from_bits((_f64_bits(shifted) - 0x4338000000000000 + 1023) << 52)


_E32_LO, _E32_HI = _F(-87.0), _F(88.0)
_LOG2E32, _SHIFT32 = _F(1.44269504), _F(12582912.0)
_LN2_HI32, _LN2_LO32 = _F(0.693359375), _F(-2.12194440e-4)


@njit(cache=True, inline="always", error_model="numpy")
def _exp32(x):
    x = min(max(x, _E32_LO), _E32_HI)
    shifted = x * _LOG2E32 + _SHIFT32
    k = shifted - _SHIFT32
    r = (x - k * _LN2_HI32) - k * _LN2_LO32
    p = _C32[7]
    p = p * r + _C32[6]
    p = p * r + _C32[5]
    p = p * r + _C32[4]
    p = p * r + _C32[3]
    p = p * r + _C32[2]
    p = p * r + _C32[1]
    p = p * r + _C32[0]
    return p * _f32_from_bits((_f32_bits(shifted) - np.int32(0x4B400000) + np.int32(127))
                              << np.int32(23))


def exp(x):
    """e**x for float32 or float64 scalars; callable from @njit code only."""
    raise NotImplementedError("callable from @njit code only")


def sigmoid(x):
    """1 / (1 + e**-x); callable from @njit code only."""
    raise NotImplementedError("callable from @njit code only")


def tanh(x):
    """tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|); callable from @njit code only."""
    raise NotImplementedError("callable from @njit code only")


_OPTS = dict(inline="always", jit_options={"error_model": "numpy"})


@overload(exp, **_OPTS)
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: _exp64(np.float64(x))


@overload(sigmoid, **_OPTS)
def _sigmoid_impl(x):
    if x == types.float32:
        one = _F(1.0)
        return lambda x: one / (one + _exp32(-x))
    return lambda x: 1.0 / (1.0 + _exp64(-np.float64(x)))


# tanh's odd Taylor series x (1 + c1 x^2 + c2 x^4 + ...) for small |x|, where
# 1 - e^-2|x| would cancel: used below 0.125 (float32) and 0.0625 (float64),
# where its truncation is far below one ulp.
_TANH_SERIES = (-1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155925.0,
                21844.0 / 6081075.0)
_T32 = tuple(_F(c) for c in _TANH_SERIES[:4])


@overload(tanh, **_OPTS)
def _tanh_impl(x):
    if x == types.float32:
        one, two, small = _F(1.0), _F(-2.0), _F(0.125)

        def tanh32(x):
            a = abs(x)
            t = _exp32(two * a)
            y = (one - t) / (one + t)
            y = y if x >= 0 else -y
            x2 = x * x
            s = x + x * x2 * (_T32[0] + x2 * (_T32[1] + x2 * (_T32[2] + x2 * _T32[3])))
            return s if a < small else y

        return tanh32

    c = _TANH_SERIES

    def tanh64(x):
        x = np.float64(x)
        a = abs(x)
        t = _exp64(-2.0 * a)
        y = (1.0 - t) / (1.0 + t)
        y = y if x >= 0.0 else -y
        x2 = x * x
        s = x + x * x2 * (c[0] + x2 * (c[1] + x2 * (c[2] + x2 * (c[3] + x2 * (c[4] + x2 * c[5])))))
        return s if a < 0.0625 else y

    return tanh64
