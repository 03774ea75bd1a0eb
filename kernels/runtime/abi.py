"""Cores compiled once, called through a table: the C-ABI form of a cell's nopython core.

Numba links the LLVM IR of every @njit callee into its caller and optimizes the
whole again, so each level of callers pays again for everything below it. A
cell's core (forward or backward, a few thousand lines of IR with its loops) was
optimized three times on the way to a TensorFlow op kernel (the loops, the core,
the op's cfunc): about 30 s of CPU for GRU float32, most of it repeated work.

Here each core is compiled once per dtype, as a cfunc `void(int64* args)` whose
args hold the arrays' addresses and the sizes and settings. Its address goes
into a fixed slot of a process-wide table (`CORES`, the symbol
"fastrnn_core_table"); its callers, the launchers' thin @njit wrappers and the
TF ops' cfuncs, load the address from the slot when they run and carry none of
its IR. The slot numbers never change, so callers cached on disk stay valid. A
core is compiled (or loaded from Numba's cache) when `ensure(name, dtype)` first
asks for it, which every caller does before it runs; callers themselves may be
compiled first. (The cores were bound to symbol names at first, resolved when a
caller is linked: then every core a caller could reach had to be compiled before
the caller, one after another. Now a cold first use compiles the op kernels in
this process while a helper process compiles the cores: see `ensure`.)

A core cannot raise through the C ABI: when Numba code inside it raises (a
MemoryError from a scratch allocation), the cfunc prints the exception and
returns. So args ends with one flag slot that `call` clears and the core's
cfunc sets to 1 as its last statement: `call` returns whether the
core ran to the end, and its callers turn False into their own error (a Python
exception in the launchers, a TensorFlow error in the ops). Catching inside the
core instead (try/except around it) measured about 5 s more of cold compile per
core.
"""

import atexit
import ctypes
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba import carray, njit, types
from numba.extending import intrinsic, overload

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
SIGNATURE = types.void(types.voidptr)

_factories = {}   # name -> factory(dtype) -> cfunc
_modules = {}     # name -> the module that registers it (a helper process imports it)
_bound = {}       # (name, suffix) -> cfunc (kept alive: the symbol points into it)
_lock = threading.RLock()
_aside = {}       # (name, suffix) -> the helper process compiling it (subprocess.Popen)
_aside_lock = threading.Lock()


@intrinsic
def address_to_pointer(typingctx, address):
    """An integer address as a void* (for numba.carray)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


# Every core's slot in the process-wide table "fastrnn_core_table" (one per core
# and dtype: 2 * index for float32, 2 * index + 1 for float64). Callers load the
# address from their slot when they run, so a caller compiles (or loads from
# cache) before its core does, and a core is compiled only when something asks
# for it (`ensure`). The order is fixed: cached callers hold slot numbers.
CORES = ("prepare", "gru_forward", "gru_backward", "lstm_forward", "lstm_backward",
         "simple_rnn_forward", "simple_rnn_backward", "mingru_forward", "mingru_backward",
         "gru_forward_reset_before", "gru_backward_reset_before", "mingru_prepare")
_TABLE_NAME = "fastrnn_core_table"


def shared_table(name, size):
    """An int64 [size] table known to compiled code as symbol `name`: one per
    process, even where this module is imported twice (under two package names): a
    second import uses the memory the symbol already names, or the first import's
    entries would be read from an empty table."""
    address = llvm.address_of_symbol(name)
    if address:
        return np.ctypeslib.as_array((ctypes.c_int64 * size).from_address(address))
    table = np.zeros(size, np.int64)
    llvm.add_symbol(name, table.ctypes.data)
    _tables.append(table)
    return table


_tables = []
_table = shared_table(_TABLE_NAME, 2 * len(CORES))  # kept by this module for the process: the symbol points into it


def slot(name, dtype):
    """Core `name`'s slot for dtype in the table."""
    return 2 * CORES.index(name) + (0 if np.dtype(dtype) == np.float32 else 1)


@intrinsic
def call_slot(typingctx, index, args):
    """Call the core at table[index] on `args` (the address of its int64 args) when
    one is bound there; returns whether one was."""
    if not isinstance(index, types.Integer) or not isinstance(args, types.Integer):
        return None

    def codegen(context, builder, signature, llargs):
        module = builder.module
        table = module.globals.get(_TABLE_NAME)
        if table is None:
            table = cgutils.add_global_variable(
                module, ir.ArrayType(ir.IntType(64), len(_table)), _TABLE_NAME)
            table.linkage = "external"
        zero = ir.Constant(ir.IntType(32), 0)
        entry = builder.gep(table, [zero, llargs[0]])
        address = builder.load_atomic(entry, "acquire", 8)
        bound = builder.icmp_unsigned("!=", address, ir.Constant(ir.IntType(64), 0))
        with builder.if_then(bound):
            core_type = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
            core = builder.inttoptr(address, core_type.as_pointer())
            builder.call(core, [builder.inttoptr(llargs[1], ir.IntType(8).as_pointer())])
        return bound

    return types.boolean(index, args), codegen


ARGS = {}  # core name -> how many int64 arguments it reads before its done flag


def register(name, factory, args):
    """Declare core `name` (one of CORES): factory(dtype) makes its cfunc (signature
    SIGNATURE). Returns `call(sample, args)`, callable from @njit code: runs the
    core for sample's dtype (an array, or a dtype such as np.float32) on the int64
    array args (its last slot the done flag) and returns whether the core finished
    (False: it raised, and Numba printed why; or it was never `ensure`d)."""
    if name not in CORES:
        raise ValueError(f"core {name!r} has no slot: add it to kernels.runtime.abi.CORES")
    ARGS[name] = args
    _factories[name] = factory
    _modules[name] = factory.__module__
    slots = {types.float32: slot(name, np.float32), types.float64: slot(name, np.float64)}

    def call(sample, args):
        raise NotImplementedError(f"fastrnn core {name} is callable from @njit code only")

    @overload(call, inline="always")
    def _call(sample, args):
        dtype = sample.dtype if isinstance(sample, types.Array) else sample.instance_type
        index = slots[dtype]

        def impl(sample, args):
            last = args.shape[0] - 1
            args[last] = 0
            call_slot(index, args.ctypes.data)
            return args[last] != 0

        return impl

    return call


def register_cell(cell, forward_factory, backward_factory, args, variant=""):
    """Register a cell's two cores, `<cell>_forward<variant>` and
    `<cell>_backward<variant>` (variant: "" or a suffix such as "_reset_before").
    Returns (forward call, backward call, prepare_cores): see `register`;
    prepare_cores(dtype) compiles (or loads) and binds both for dtype, once per
    process."""
    forward_name, backward_name = f"{cell}_forward{variant}", f"{cell}_backward{variant}"
    forward = register(forward_name, forward_factory, args[0])
    backward = register(backward_name, backward_factory, args[1])

    def prepare_cores(dtype):
        ensure(forward_name, dtype, aside=(backward_name,))
        ensure(backward_name, dtype)

    prepare_cores.__doc__ = (f"Compile (or load) and bind the {cell}{variant} cores for dtype, "
                             "once (cold, the backward one in a helper process meanwhile).")
    return forward, backward, prepare_cores


def finished(ok, what):
    """Raise for a core that did not finish (`call` returned False): `what` names
    the kernel."""
    if not ok:
        raise RuntimeError(f"{what} failed inside its compiled core (Numba printed the error "
                           "above; out of memory?)")


def ensure(name, dtype, aside=()):
    """Compile (or load from cache) core `name` for dtype and put its address in its
    table slot, once.

    `aside`: names of cores the caller will ensure next. When this one compiles
    rather than loads (it is still running after ASIDE_AFTER_S), a helper process
    compiles those into Numba's disk cache meanwhile, on another core; their own
    `ensure` then loads one it finished, waits for one it is compiling, and
    compiles one it has not started here (see `_start_aside`)."""
    suffix = _SUFFIX[np.dtype(dtype)]
    key = (name, suffix)
    if key in _bound:
        return
    with _lock:
        if key in _bound:
            return
        _join_aside(key)
        timer = aside_when_slow(aside, dtype)
        try:
            compiled = _factories[name](np.dtype(dtype).type)
        finally:
            timer.cancel()
        _bound[key] = compiled
        _table[slot(name, dtype)] = compiled.address


def ensure_all(names, dtype):
    """ensure() every core in `names`, preferring the order given, but a core a
    helper process is compiling is waited for only when nothing else is left: the
    others are compiled (or loaded) here meanwhile."""
    suffix = _SUFFIX[np.dtype(dtype)]
    pending = [name for name in names if (name, suffix) not in _bound]
    while pending:
        with _aside_lock:
            busy = {name for name in pending if (name, suffix) in _aside
                    and _aside[(name, suffix)].state.get(name) == "start"}
        name = next((name for name in pending if name not in busy), pending[0])
        # The rest aside: compiled here cold, this one starts a helper for them
        # when none has them yet (op cfuncs loaded from cache start none).
        ensure(name, dtype, aside=[other for other in pending
                                   if other != name and other not in busy])
        pending.remove(name)


# Cold compiles in a helper process. Numba compiles under one lock per process, so
# what a first use compiles (op kernels, cores) runs one after another on one CPU;
# cached on disk, what one process compiles another loads in well under a second.
# The helper is a fresh interpreter (this Python, this sys.path, this Numba cache
# directory) that imports the cores' modules and ensures them in the order given,
# reporting each start and end on its stdout, then exits. `ensure` of a core the
# helper has finished loads it; of one it is compiling, waits for it; of one it has
# not started, compiles it here meanwhile (so the helper gets the largest first, the
# backward core, and the caller takes the others: `ensure_all`). Each core is claimed first, by whichever process gets
# to it, with a file created exclusively in a directory the two share: the helper
# skips a core this process took over (compiling it twice cost the other compile
# its CPU: a GRU's first step took 2 s longer). If the helper fails, is switched
# off or cannot start, the process compiles everything itself, as before: it only
# ever saves time.
# Measured here (2-core EPYC, float32, a fresh process, empty cache), the first
# training step of Input -> LSTM(16) -> Dense(1) took 27.8 s compiled in one
# process, and about 19 s with the helper.
ASIDE_ENV = "FASTRNN_COMPILE_ASIDE"  # "0": never start a helper process
ASIDE_AFTER_S = 0.5   # a compile still running after this is cold (not a cache load)
ASIDE_WAIT_S = 600.0  # the longest wait for a helper's core before compiling it here


class _NoTimer:
    def cancel(self):
        pass


def aside_when_slow(names, dtype):
    """Start a timer: if the caller's compile is still running after ASIDE_AFTER_S
    (a cold compile, not a cache load), a helper process compiles cores `names`
    for dtype, in that order, meanwhile (see above). The caller cancels the timer
    (`.cancel()`) when its own compile is done."""
    suffix = _SUFFIX[np.dtype(dtype)]
    todo = [name for name in names if (name, suffix) not in _bound]
    if not todo or not aside_enabled():
        return _NoTimer()
    timer = threading.Timer(ASIDE_AFTER_S, _start_aside, (todo, suffix))
    timer.daemon = True
    timer.start()
    return timer


def aside_enabled():
    """Whether cold compiles may use a helper process: not switched off by
    FASTRNN_COMPILE_ASIDE=0, and a second CPU to run it."""
    return os.environ.get(ASIDE_ENV, "1") != "0" and (os.cpu_count() or 1) > 1


class _Helper:
    """A helper process and what it reported: name -> "start", "done" or "skip"
    (claimed by this process first)."""

    def __init__(self, process, claims):
        self.process = process
        self.claims = claims  # the directory of claim files (see _claim)
        self.state = {}
        self.changed = threading.Condition()
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()

    def _read(self):
        for line in self.process.stdout:
            event, _, name = line.strip().partition(" ")
            with self.changed:
                self.state[name] = event
                self.changed.notify_all()
        self.process.wait()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, name):
        """Block while the helper is compiling core `name` (or has claimed it); True
        when it finished it, False when this process is to compile it: the helper
        had not claimed it (it is claimed for this process now), or failed."""
        with self.changed:
            if name not in self.state and _claim(self.claims, name):
                return False
            self.changed.wait_for(lambda: self.state.get(name) in ("done", "skip")
                                  or self.process.poll() is not None, timeout=ASIDE_WAIT_S)
            return self.state.get(name) == "done"


def _claim(claims, name):
    """Claim core `name` for the calling process: True for the first caller, False
    for later ones, and where the directory is gone (the other process is done)."""
    try:
        os.close(os.open(os.path.join(claims, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return False
    return True


def _start_aside(names, suffix):
    """Start a helper process compiling cores `names` for dtype suffix."""
    from numba.core import config

    with _aside_lock:
        names = [name for name in names
                 if (name, suffix) not in _aside and (name, suffix) not in _bound]
        if not names:
            return
        env = dict(os.environ)
        env[ASIDE_ENV] = "0"  # the helper starts no helpers of its own
        env["PYTHONPATH"] = os.pathsep.join(path or os.getcwd() for path in sys.path)
        if config.CACHE_DIR:
            env["NUMBA_CACHE_DIR"] = config.CACHE_DIR
        dtype = "float32" if suffix == "f32" else "float64"
        try:
            claims = tempfile.mkdtemp(prefix="fastrnn-compile-")
        except OSError:
            return  # no helper: ensure compiles them here
        command = [sys.executable, "-c",
                   "import sys; from fastrnn.kernels.runtime import abi; abi.compile_here(sys.argv[1:])",
                   dtype, claims] + [f"{_modules[name]}:{name}" for name in names]
        try:
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True)
        except OSError:
            shutil.rmtree(claims, ignore_errors=True)
            return  # no helper: ensure compiles them here
        helper = _Helper(process, claims)
        for name in names:
            _aside[(name, suffix)] = helper


def _join_aside(key):
    """Before ensure compiles or loads core `key`: wait while the helper is
    compiling it. Stop the helper once nothing more is wanted from it."""
    with _aside_lock:
        helper = _aside.pop(key, None)
        others = helper is not None and helper in _aside.values()
    if helper is None:
        return
    try:
        helper.wait_for(key[0])
    finally:
        if not others:
            if helper.process.poll() is None:
                helper.process.kill()  # what it does now, this process has done
            shutil.rmtree(helper.claims, ignore_errors=True)


@atexit.register
def _stop_asides():
    with _aside_lock:
        for helper in set(_aside.values()):
            if helper.process.poll() is None:
                helper.process.kill()
            shutil.rmtree(helper.claims, ignore_errors=True)
        _aside.clear()


def compile_here(argv):
    """A helper process' work: argv = [dtype, claims directory, "module:name", ...],
    ensured in order, each start and end reported on stdout; a core the caller
    claimed first (see _claim) is skipped."""
    dtype, claims = np.dtype(argv[0]), argv[1]
    for spec in argv[2:]:
        module, name = spec.split(":")
        if not _claim(claims, name):
            print("skip", name, flush=True)
            continue
        importlib.import_module(module)
        print("start", name, flush=True)
        ensure(name, dtype)
        print("done", name, flush=True)
    shutil.rmtree(claims, ignore_errors=True)  # the caller's later claims fail: it is done


def bound():
    """The (name, dtype suffix) of every core bound in this process."""
    return sorted(_bound)


# Arrays travel in args as 4 slots each: address, then up to 3 dimensions.
SLOTS = 4


@njit(cache=True, nogil=True)
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
