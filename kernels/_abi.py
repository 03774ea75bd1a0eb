"""Cores compiled once, called by name: the C-ABI form of a cell's nopython core.

Numba links the LLVM IR of every @njit callee into its caller and optimizes the
whole again, so each level of callers pays again for everything below it. A
cell's core (forward or backward, a few thousand lines of IR with its loops) was
optimized three times on the way to a TensorFlow op kernel (the loops, the core,
the op's cfunc): about 30 s of CPU for GRU float32, most of it repeated work.

Here each core is compiled once per dtype, as a cfunc `void(int64* args)` whose
args hold the arrays' addresses and the sizes and settings, and bound to a fixed
symbol name (`fastrnn_<name>_<f32|f64>`). Its callers, the launchers' thin @njit
wrappers and the TF ops' cfuncs, call it through a `types.ExternalFunction` and
carry none of its IR. Like kernels._blas and the micro-kernels, the name never
changes, so callers cached on disk stay valid; a core is compiled (or loaded from
Numba's cache) when `ensure(name, dtype)` first asks for it, which every caller
does before it can be compiled or loaded.
"""

import threading

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
SIGNATURE = types.void(types.voidptr)

_factories = {}   # name -> factory(dtype) -> cfunc
_bound = {}       # (name, suffix) -> cfunc (kept alive: the symbol points into it)
_lock = threading.RLock()


@intrinsic
def address_to_pointer(typingctx, address):
    """An integer address as a void* (for numba.carray)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


def register(name, factory):
    """Declare core `name`: factory(dtype) makes its cfunc (signature SIGNATURE).
    Returns `call(sample, args)`, callable from @njit code: runs the core for
    sample's dtype on the int64 array args."""
    _factories[name] = factory
    externals = {suffix: types.ExternalFunction(f"fastrnn_{name}_{suffix}", SIGNATURE)
                 for suffix in ("f32", "f64")}

    def call(sample, args):
        raise NotImplementedError(f"fastrnn core {name} is callable from @njit code only")

    @overload(call, inline="always")
    def _call(sample, args):
        run = externals["f32" if sample.dtype == types.float32 else "f64"]

        def impl(sample, args):
            run(args.ctypes)

        return impl

    return call


def ensure(name, dtype):
    """Compile (or load from cache) core `name` for dtype and bind its symbol, once."""
    suffix = _SUFFIX[np.dtype(dtype)]
    key = (name, suffix)
    if key in _bound:
        return
    with _lock:
        if key not in _bound:
            compiled = _factories[name](np.dtype(dtype).type)
            llvm.add_symbol(f"fastrnn_{name}_{suffix}", compiled.address)
            _bound[key] = compiled


def bound():
    """The (name, dtype suffix) of every core bound in this process."""
    return sorted(_bound)
