"""The per-step recurrent product on one core, with the weights packed once per call.

Each step of a recurrence multiplies a few rows of state by the same recurrent
kernel: per part of a split call, [8, 128] @ [128, 512] for LSTM(128) at B16.
OpenBLAS repacks that [128, 512] operand on every call and then runs at about
half of a core's peak (45-48 GF/s here at M = 8). This module packs the operand
once per kernel call into column panels (`pack`), and `gemm_packed` runs a
register-blocked micro-kernel over them: 4 rows x 3 vectors of accumulators (24
float32 or 12 float64 columns), one broadcast of A and three vector loads of
the panel per k, every multiply-add an explicit `llvm.fma` on 256-bit vectors.
Measured here on one core (2-core AMD EPYC, float32, the kernels' own
per-step shapes), OpenBLAS against this:

    [8, 128] @ [128, 512]    23.0 -> 11.0 us (45.6 -> 95.4 GF/s)
    [8, 512] @ [512, 128]    21.7 -> 11.3 us (the backward's dz @ U^T)
    [16, 128] @ [128, 512]   33.9 -> 22.1 us
    [32, 256] @ [256, 1024]   222 ->  175 us
    [64, 150] @ [150, 600]    131 ->  120 us
    [32, 45] @ [45, 180]      7.2 ->  6.3 us

It runs on one core only, so the kernels use it where their BLAS would run on
one thread anyway (`wanted`): in the parts of a split call, in small calls
(kernels.entry.dispatch holds OpenBLAS at one thread), and in the Keras layers'
one-thread calls. Elsewhere (a mid-sized call that OpenBLAS spreads over the
cores), and on hosts without AVX2 and FMA, the kernels call BLAS as before.

Panels: the columns of B [K, N], padded with zeros to a multiple of the vector
width, in panels of up to 3 vectors; panel p starting at column n0 holds its
K x width block row by row at offset n0 * K. A last panel that runs past N is
computed into a [4, 3 vectors] scratch block (stored after the panels) and its
valid columns copied out.
"""

import threading

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from . import binding as _blas
from .binding import gemm
from ..runtime.options import jit

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
ROWS = 4        # rows of A per micro-kernel call
VECTORS = 3     # vectors of columns per panel


def _host_has_fma():
    """AVX2 + FMA on an x86 host that Numba compiles for (not a generic CPU name)."""
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        if config.CPU_NAME not in (None, "host"):
            return False
        return bool(features.get("avx2")) and bool(features.get("fma"))
    except (RuntimeError, ImportError, AttributeError):
        return False


AVAILABLE = _host_has_fma()
# Tests switch this off to check the BLAS path on a host that has the packed one.
ENABLED = AVAILABLE


def _splat(builder, vector, value):
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count))


def _micro_kernel(rows, vectors):
    """c[row0 : row0 + rows, col0 : col0 + vectors * W] (=, or += when accumulate)
    a[m0 : m0 + rows, :] @ the panel at packed[offset:] (K rows of vectors * W)."""

    @intrinsic
    def micro(typingctx, a, m0, packed, offset, c, row0, col0, accumulate):
        if not (isinstance(a, types.Array) and isinstance(c, types.Array)
                and isinstance(packed, types.Array)
                and a.ndim == 2 and c.ndim == 2 and packed.ndim == 1
                and a.layout == "C" and c.layout == "C" and packed.layout == "C"
                and a.dtype == c.dtype == packed.dtype
                and a.dtype in (types.float32, types.float64)):
            return None
        sig = types.void(a, m0, packed, offset, c, row0, col0, accumulate)

        def codegen(context, builder, signature, args):
            a_type, _, p_type, _, c_type = signature.args[:5]
            a, m0, packed, offset, c, row0, col0, accumulate = args
            A = context.make_array(a_type)(context, builder, a)
            P = context.make_array(p_type)(context, builder, packed)
            C = context.make_array(c_type)(context, builder, c)
            lanes = 8 if a_type.dtype == types.float32 else 4
            vector = ir.VectorType(context.get_value_type(a_type.dtype), lanes)
            pointer = vector.as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector] * 3),
                f"llvm.fma.v{lanes}{'f32' if lanes == 8 else 'f64'}")
            depth = cgutils.unpack_tuple(builder, A.shape, 2)[1]       # K, also A's row length
            ldc = cgutils.unpack_tuple(builder, C.shape, 2)[1]
            width = ir.Constant(_I64, vectors * lanes)
            a_base = builder.gep(A.data, [builder.mul(m0, depth)])
            p_base = builder.gep(P.data, [offset])
            c_base = builder.gep(C.data, [builder.add(builder.mul(row0, ldc), col0)])
            zero = ir.Constant(vector, [0.0] * lanes)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                   for _ in range(rows)]
            with cgutils.for_range(builder, depth) as loop:
                k = loop.index
                p_row = builder.gep(p_base, [builder.mul(k, width)])
                panel = [builder.load(builder.bitcast(
                    builder.gep(p_row, [ir.Constant(_I64, lanes * j)]), pointer), align=4)
                    for j in range(vectors)]
                for r in range(rows):
                    a_rk = builder.load(builder.gep(a_base, [builder.add(
                        builder.mul(ir.Constant(_I64, r), depth), k)]))
                    broadcast = _splat(builder, vector, a_rk)
                    for j in range(vectors):
                        builder.store(builder.call(fma, [broadcast, panel[j],
                                                         builder.load(acc[r][j])]), acc[r][j])
            targets = [[builder.bitcast(builder.gep(c_base, [builder.add(
                builder.mul(ir.Constant(_I64, r), ldc), ir.Constant(_I64, lanes * j))]), pointer)
                for j in range(vectors)] for r in range(rows)]
            with builder.if_else(cgutils.is_true(builder, accumulate)) as (add, store):
                with add:
                    for r in range(rows):
                        for j in range(vectors):
                            old = builder.load(targets[r][j], align=4)
                            builder.store(builder.fadd(old, builder.load(acc[r][j])),
                                          targets[r][j], align=4)
                with store:
                    for r in range(rows):
                        for j in range(vectors):
                            builder.store(builder.load(acc[r][j]), targets[r][j], align=4)
            return context.get_dummy_value()

        return sig, codegen

    return micro


_k11, _k12, _k13 = (_micro_kernel(1, n) for n in (1, 2, 3))
_k21, _k22, _k23 = (_micro_kernel(2, n) for n in (1, 2, 3))
_k31, _k32, _k33 = (_micro_kernel(3, n) for n in (1, 2, 3))
_k41, _k42, _k43 = (_micro_kernel(4, n) for n in (1, 2, 3))


@jit
def _block(a, m0, rows, packed, offset, vectors, c, row0, col0, accumulate):
    if rows == 4:
        if vectors == 3:
            _k43(a, m0, packed, offset, c, row0, col0, accumulate)
        elif vectors == 2:
            _k42(a, m0, packed, offset, c, row0, col0, accumulate)
        else:
            _k41(a, m0, packed, offset, c, row0, col0, accumulate)
    elif rows == 3:
        if vectors == 3:
            _k33(a, m0, packed, offset, c, row0, col0, accumulate)
        elif vectors == 2:
            _k32(a, m0, packed, offset, c, row0, col0, accumulate)
        else:
            _k31(a, m0, packed, offset, c, row0, col0, accumulate)
    elif rows == 2:
        if vectors == 3:
            _k23(a, m0, packed, offset, c, row0, col0, accumulate)
        elif vectors == 2:
            _k22(a, m0, packed, offset, c, row0, col0, accumulate)
        else:
            _k21(a, m0, packed, offset, c, row0, col0, accumulate)
    else:
        if vectors == 3:
            _k13(a, m0, packed, offset, c, row0, col0, accumulate)
        elif vectors == 2:
            _k12(a, m0, packed, offset, c, row0, col0, accumulate)
        else:
            _k11(a, m0, packed, offset, c, row0, col0, accumulate)


def lanes(dtype):
    """Vector width in elements: 8 float32 or 4 float64 (256-bit vectors)."""
    return 32 // np.dtype(dtype).itemsize


@jit
def _packed_length(depth, columns, itemsize):
    w = 32 // itemsize
    return depth * ((columns + w - 1) // w * w) + ROWS * VECTORS * w


def packed_size(depth, columns, dtype):
    """Elements `pack` writes for a [depth, columns] B, scratch block included."""
    return _packed_length(depth, columns, np.dtype(dtype).itemsize)


@jit
def _pack(b, out):
    depth, columns = b.shape
    w = 32 // b.itemsize
    panel = VECTORS * w
    padded = (columns + w - 1) // w * w
    col = 0
    while col < padded:
        width = min(panel, padded - col)
        valid = min(width, columns - col)
        base = col * depth
        for k in range(depth):
            # Copy and zero-fill as two plain loops: one loop with the bounds test
            # inside compiled to masked gathers, and packing was a sixth of a GRU(256)
            # training step (B16 T15).
            source = b[k, col:col + valid]
            row = out[base + k * width:base + (k + 1) * width]
            for j in range(valid):
                row[j] = source[j]
            for j in range(valid, width):
                row[j] = 0.0
        col += width


@jit
def _pack_transposed(a, out):
    # `_pack` of B = a.T [K, N] for a [N, K], read from a directly: a transposed
    # copy first cost as much as the packing itself (GRU(256): 0.15 ms a call).
    columns, depth = a.shape
    w = 32 // a.itemsize
    panel = VECTORS * w
    padded = (columns + w - 1) // w * w
    col = 0
    while col < padded:
        width = min(panel, padded - col)
        valid = min(width, columns - col)
        block = out[col * depth:(col + width) * depth].reshape((depth, width))
        for j in range(valid):
            source = a[col + j]
            for k in range(depth):
                block[k, j] = source[k]
        for k in range(depth):
            for j in range(valid, width):
                block[k, j] = 0.0
        col += width


def pack(b):
    """B [K, N] (C-contiguous float32/float64) in panels for `gemm_packed`."""
    out = np.empty(packed_size(b.shape[0], b.shape[1], b.dtype), b.dtype)
    _pack(b, out)
    return out


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def wanted():
    """Whether a kernel call made now should use the packed product: the host has it
    and OpenBLAS runs on one thread now (held at one by a caller, or set so)."""
    return ENABLED and _blas.single_threaded()


def pack_for(b):
    """`pack(b)` when `wanted()`, else an empty array: what `product` takes."""
    return pack(b) if wanted() else _EMPTY[b.dtype]


@jit
def packed_or_empty(b, use):
    """`pack(b)` when use, else an empty array (BLAS): `pack_for` in nopython code,
    with the choice made by the caller."""
    if not use:
        return np.empty(0, b.dtype)
    out = np.empty(_packed_length(b.shape[0], b.shape[1], b.itemsize), b.dtype)
    _pack(b, out)
    return out


@jit
def transposed_for_product(a, use):
    """(b, packed) standing for B = a.T in `product`: when use, an empty [0, N]
    array (only its shape is read) and a.T packed straight from a; else a.T
    C-contiguous (for BLAS) and an empty array."""
    columns, depth = a.shape
    if not use:
        return np.ascontiguousarray(a.T), np.empty(0, a.dtype)
    out = np.empty(_packed_length(depth, columns, a.itemsize), a.dtype)
    _pack_transposed(a, out)
    return np.empty((0, columns), a.dtype), out


@jit
def gemm_packed(a, packed, columns, c, accumulate):
    """c[M, columns] = (or += when accumulate) a[M, K] @ B, B packed by `pack`.
    a and c C-contiguous, one dtype."""
    m, depth = a.shape
    w = 32 // a.itemsize
    panel = VECTORS * w
    padded = (columns + w - 1) // w * w
    scratch = packed[depth * padded:].reshape((ROWS, panel))
    col = 0
    while col < padded:
        width = min(panel, padded - col)
        vectors = width // w
        offset = col * depth
        if col + width <= columns:
            for m0 in range(0, m, ROWS):
                _block(a, m0, min(ROWS, m - m0), packed, offset, vectors, c, m0, col, accumulate)
        else:
            valid = columns - col
            for m0 in range(0, m, ROWS):
                rows = min(ROWS, m - m0)
                _block(a, m0, rows, packed, offset, vectors, scratch, 0, 0, False)
                for r in range(rows):
                    target = c[m0 + r, col:columns]
                    if accumulate:
                        for j in range(valid):
                            target[j] += scratch[r, j]
                    else:
                        for j in range(valid):
                            target[j] = scratch[r, j]
        col += width


# The micro-kernels are compiled once per dtype, as cfuncs bound to fixed symbol
# names, and every caller links to them by name (as kernels.blas.binding does for BLAS)
# rather than carrying their IR: Numba re-optimizes a callee's IR in every function
# that calls it, and the unrolled micro-kernels made each level of callers cost
# about 5 s of cold compile (the GRU cores and the TF op kernels that call them:
# about 40 s for one cell and dtype). A dtype's micro-kernel is compiled (or loaded
# from Numba's cache) and bound by `ensure(dtype)`, which the cores' factories call
# before their cfunc is compiled or loaded: cached callers link to the symbol, so it
# must be bound first. (It was bound for both dtypes at import: about 3 s of cold
# compile for a dtype a process may never use.)
_PACKED_SIGNATURE = types.void(types.voidptr, types.int64, types.int64, types.voidptr,
                               types.int64, types.int64, types.voidptr, types.boolean)
_packed_f32 = types.ExternalFunction("fastrnn_gemm_packed_f32", _PACKED_SIGNATURE)
_packed_f64 = types.ExternalFunction("fastrnn_gemm_packed_f64", _PACKED_SIGNATURE)


def _packed_cfunc(dtype):
    @cfunc(_PACKED_SIGNATURE, cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
    def run(a, rows, depth, packed, size, columns, c, accumulate):
        gemm_packed(carray(a, (rows, depth), dtype), carray(packed, size, dtype), columns,
                    carray(c, (rows, columns), dtype), accumulate)

    return run


_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_BOUND = {}  # suffix -> cfunc, kept alive: the symbol points into it
_lock = threading.Lock()


def ensure(dtype):
    """Compile (or load from cache) the micro-kernel for dtype and bind its symbol,
    once per process. Needed before any @njit code that calls `product` or
    `packed_product` for dtype is compiled or loaded."""
    suffix = _SUFFIX[np.dtype(dtype)]
    if suffix in _BOUND:
        return
    with _lock:
        if suffix not in _BOUND:
            compiled = _packed_cfunc(np.dtype(dtype).type)
            llvm.add_symbol(f"fastrnn_gemm_packed_{suffix}", compiled.address)
            _BOUND[suffix] = compiled


def packed_product(a, packed, columns, out, accumulate):
    """out[M, columns] = (or +=) a @ B, B packed by `pack`, through the bound
    micro-kernels. Callable from @njit code only."""
    raise NotImplementedError("callable from @njit code only")


@overload(packed_product, inline="always")
def _packed_product(a, packed, columns, out, accumulate):
    run = _packed_f32 if a.dtype == types.float32 else _packed_f64

    def impl(a, packed, columns, out, accumulate):
        run(a.ctypes, a.shape[0], a.shape[1], packed.ctypes, packed.size, columns, out.ctypes,
            accumulate)

    return impl


@jit
def product(a, b, packed, out, accumulate):
    """out = (or += when accumulate) a @ b for C-contiguous 2-D arrays of one dtype:
    through `packed` (b packed by `pack`) when it is not empty, else through BLAS."""
    if packed.size == 0:
        gemm(a, b, out, accumulate)
    else:
        packed_product(a, packed, b.shape[1], out, accumulate)
