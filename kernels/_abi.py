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

A core cannot raise through the C ABI: when Numba code inside it raises (a
MemoryError from a scratch allocation), the cfunc prints the exception and
returns. So args ends with one flag slot that `call` clears and the core's
cfunc sets to 1 as its last statement: `call` returns whether the
core ran to the end, and its callers turn False into their own error (a Python
exception in the launchers, a TensorFlow error in the ops). Catching inside the
core instead (try/except around it) measured about 5 s more of cold compile per
core.
"""

import threading

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, njit, types
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
    sample's dtype on the int64 array args (its last slot the done flag) and
    returns whether the core finished (False: it raised, and Numba printed why)."""
    _factories[name] = factory
    externals = {suffix: types.ExternalFunction(f"fastrnn_{name}_{suffix}", SIGNATURE)
                 for suffix in ("f32", "f64")}

    def call(sample, args):
        raise NotImplementedError(f"fastrnn core {name} is callable from @njit code only")

    @overload(call, inline="always")
    def _call(sample, args):
        run = externals["f32" if sample.dtype == types.float32 else "f64"]

        def impl(sample, args):
            last = args.shape[0] - 1
            args[last] = 0
            run(args.ctypes)
            return args[last] != 0

        return impl

    return call


def register_cell(cell, forward_factory, backward_factory):
    """Register a cell's two cores, `<cell>_forward` and `<cell>_backward`. Returns
    (forward call, backward call, prepare_cores): see `register`; prepare_cores(dtype)
    compiles (or loads) and binds both for dtype, once per process."""
    forward = register(f"{cell}_forward", forward_factory)
    backward = register(f"{cell}_backward", backward_factory)

    def prepare_cores(dtype):
        ensure(f"{cell}_forward", dtype)
        ensure(f"{cell}_backward", dtype)

    prepare_cores.__doc__ = f"Compile (or load) and bind the {cell} cores for dtype, once."
    return forward, backward, prepare_cores


def finished(ok, what):
    """Raise for a core that did not finish (`call` returned False): `what` names
    the kernel."""
    if not ok:
        raise RuntimeError(f"{what} failed inside its compiled core (Numba printed the error "
                           "above; out of memory?)")


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


# Arrays travel in args as 4 slots each: address, then up to 3 dimensions.
SLOTS = 4


@njit(cache=True, nogil=True, inline="always")
def put(args, k, x):
    """Slots k..k+3 of args = x's address and shape (C-contiguous, ndim <= 3)."""
    args[k] = x.ctypes.data
    for d in range(x.ndim):
        args[k + 1 + d] = x.shape[d]


@njit(cache=True, nogil=True, inline="always")
def view1(args, k, dtype):
    """The 1-D array `put` stored at slot k."""
    return carray(address_to_pointer(args[k]), args[k + 1], dtype)


@njit(cache=True, nogil=True, inline="always")
def view2(args, k, dtype):
    """The 2-D array `put` stored at slot k."""
    return carray(address_to_pointer(args[k]), (args[k + 1], args[k + 2]), dtype)


@njit(cache=True, nogil=True, inline="always")
def view3(args, k, dtype):
    """The 3-D array `put` stored at slot k."""
    return carray(address_to_pointer(args[k]), (args[k + 1], args[k + 2], args[k + 3]), dtype)
