"""Pieces every CUDA launcher shares: finding the GPU stack, the array module,
launches on CuPy's stream, per-dtype kernel sets, and device math.

The CUDA kernels take CuPy arrays and give CuPy arrays back. The GEMMs over
all steps go through CuPy (cuBLAS); each recurrence runs as one numba.cuda
"loop kernel" per call (one block per batch row, every step inside the kernel,
see kernels/gpu/block.py), and the scans and minGRU passes as numba.cuda
kernels; all are launched on CuPy's current stream so that they queue in order
with the GEMMs and nothing synchronizes inside a call.

Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the same launchers take
NumPy arrays and the GEMMs run in NumPy, so every kernel can be checked in CI
without a GPU. `numba.cuda.compile_ptx` checks the real compile (KernelSet.ptx_cases).

Kernels are built once per float type by a factory, so that constants are of
the array's own type: a float64 literal in a float32 kernel would make the
arithmetic float64, which runs at a fraction of the speed on most GPUs.
"""

import functools
import os
import sys
from types import SimpleNamespace

import numpy as np


def simulator():
    """True when Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_cupy_array(x):
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def numpy_conflict():
    """Why this NumPy and numba-cuda cannot work together (None when they can).

    numba-cuda 0.30.4 and earlier register an overload of np.row_stack, which
    NumPy 2.5 removed: their first kernel launch raises AttributeError
    (NVIDIA/numba-cuda#907; numba-cuda is in maintenance mode and will not fix it).
    """
    if hasattr(np, "row_stack"):
        return None
    from importlib import metadata

    try:
        version = metadata.version("numba-cuda")
    except metadata.PackageNotFoundError:
        return None
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts and parts <= (0, 30, 4):
        return (f"numba-cuda {version} cannot launch kernels with NumPy {np.__version__} "
                "(it needs np.row_stack, removed in NumPy 2.5): install numpy<2.5")
    return None


@functools.cache
def gpu_available():
    """True when CuPy and numba-cuda import and a CUDA GPU is visible (never under the simulator)."""
    if simulator() or numpy_conflict() is not None:
        return False
    try:
        import cupy
        from numba import cuda
    except Exception:
        return False
    try:
        return bool(cuda.is_available()) and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def missing_reason():
    """Why the CUDA kernels cannot run here (None when they can)."""
    if simulator() or gpu_available():
        return None
    conflict = numpy_conflict()
    if conflict is not None:
        return conflict
    missing = []
    for module in ("cupy", "numba.cuda"):
        try:
            __import__(module)
        except Exception as e:  # pragma: no cover - depends on the machine
            missing.append(f"{module} ({type(e).__name__}: {e})")
    if missing:
        return ("the CUDA kernels need CuPy and numba-cuda (pip install 'fastrnn[gpu]'); "
                "could not import " + ", ".join(missing))
    return "no CUDA GPU is visible to numba-cuda and CuPy"


def array_module(x, name="x"):
    """CuPy for a CuPy array; NumPy for a NumPy array under the simulator; else TypeError."""
    if is_cupy_array(x):
        import cupy

        return cupy
    if simulator() and isinstance(x, np.ndarray):
        return np
    raise TypeError(
        f"{name} must be a cupy.ndarray for the CUDA kernels, got {type(x).__name__}"
        + (" (NumPy arrays go to the CPU kernels: fastrnn.kernels.*)"
           if isinstance(x, np.ndarray) else "")
    )


def threads_per_block():
    # The simulator runs every thread of a block as a Python thread: keep blocks small there.
    return 32 if simulator() else 256


def blocks_for(n, threads=None):
    threads = threads or threads_per_block()
    return max(1, (n + threads - 1) // threads)


def device(a):
    """The array as numba.cuda sees it, converted once per call, without a stream sync.

    Passing a CuPy array straight to a kernel would re-read its
    __cuda_array_interface__ (and synchronize its stream) at every launch.
    """
    if a is None or isinstance(a, np.ndarray):
        return a
    from numba import cuda

    return cuda.as_cuda_array(a, sync=False)


def stream_for(xp):
    """The numba stream wrapping CuPy's current stream (None under the simulator)."""
    if xp is np:
        return None
    import cupy
    from numba import cuda

    return _external_stream(cupy.cuda.get_current_stream().ptr, cuda)


@functools.lru_cache(maxsize=16)
def _external_stream(ptr, cuda):
    return cuda.external_stream(ptr) if ptr else cuda.default_stream()


def launch(kernel, n, stream, *args):
    """Run `kernel` with one thread per item of n (1-D grid) on `stream`."""
    threads = threads_per_block()
    if stream is None:
        kernel[blocks_for(n, threads), threads](*args)
    else:
        kernel[blocks_for(n, threads), threads, stream](*args)


def rows_threads():
    """Threads per block of the loop kernels (one block per batch row).

    Under the simulator every thread is a Python thread and every barrier is
    released by polling them all: 8 threads keep the tests fast and still run
    both branches of matvec (split sums where a matrix has 4 columns or fewer).
    """
    return 8 if simulator() else ROW_THREADS


ROW_THREADS = 1024
# Registers a loop kernel may use per thread, so that ROW_THREADS fit in one
# block (65536 registers per SM): without a cap the GRU kernels compile to
# more than 128 and fail to launch with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES.
# Measured on an H100 (GRU, float32): 1024 threads capped at 64 registers ran
# B64 T100 H256 forward in 2.9 ms against 3.8 ms with 512 threads at 128, and
# B16 T1024 H128 about the same (7.2 against 7.8 ms).
ROW_REGISTERS = 65536 // ROW_THREADS


def row_jit_options():
    """cuda.jit options of the loop kernels (the simulator takes none)."""
    return {} if simulator() else {"max_registers": ROW_REGISTERS}
DEFAULT_SHARED_BYTES = 48 * 1024  # what a block gets without asking (every GPU since Kepler)
# Under the simulator only a few rows of U fit, so that tests run both the cached
# and the uncached part of _cuda_block.matvec.
SIMULATOR_CACHE_FLOATS = 40


@functools.cache
def _shared_limit_bytes(device_id):
    """Dynamic shared memory one block may have after opting in (227 KiB on an H100)."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    return int(props.get("sharedMemPerBlockOptin", DEFAULT_SHARED_BYTES))


def row_plan(dtype, depth, mats):
    """How a loop kernel uses shared memory: (rows of each matrix cached, shared bytes).

    depth: the longest vector a matvec reads; mats: (rows, cols) of each
    recurrent matrix, whose first rows are cached in the same proportion, as
    many as fit (see kernels/gpu/block.py for the layout).
    """
    itemsize = np.dtype(dtype).itemsize
    base = rows_threads() + depth
    if simulator():
        budget = SIMULATOR_CACHE_FLOATS
    else:
        import cupy

        budget = _shared_limit_bytes(cupy.cuda.Device().id) // itemsize - base
    total = sum(r * c for r, c in mats)
    share = min(1.0, max(budget, 0) / total) if total else 0.0
    cached = [int(share * r) for r, _ in mats]
    floats = base + sum(n * c for n, (_, c) in zip(cached, mats))
    return cached, floats * itemsize


_allowed = {}


def _allow_shared(kernel, args):
    """Let the compiled kernel for `args` take all the dynamic shared memory a block may have.

    Past 48 KiB a kernel must opt in (cuFuncSetAttribute); numba-cuda has no
    launch option for it, so it is set on the compiled function, once.
    """
    from numba.cuda.cudadrv import driver

    compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
    func = compiled._codelibrary.get_cufunc()
    key = (id(compiled), func.device.id)
    if key not in _allowed:
        attr = driver.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        driver.driver.cuKernelSetAttribute(attr, _shared_limit_bytes(func.device.id),
                                           func.handle, func.device.id)
        _allowed[key] = compiled


def launch_rows(kernel, batch, stream, shared, *args):
    """Run a loop kernel with one block per batch row on `stream`, with `shared` bytes
    of dynamic shared memory (see row_plan)."""
    if shared > DEFAULT_SHARED_BYTES and not simulator():
        _allow_shared(kernel, args)
    kernel[batch, rows_threads(), stream or 0, shared](*args)


def matmul(xp, a, b, out=None):
    """a @ b into out (cuBLAS through CuPy on the GPU, NumPy under the simulator)."""
    return xp.matmul(a, b, out=out)


# Argument types for compile_ptx, by code: f1/f2/f3 float arrays (C-contiguous)
# of the kernel's float type, b2 bool [., .], i1 int64 [.], i int64, F a float scalar.
def _signature(spec, F):
    from numba import types

    table = {
        "f1": types.Array(F, 1, "C"), "f2": types.Array(F, 2, "C"), "f3": types.Array(F, 3, "C"),
        "b2": types.Array(types.boolean, 2, "C"), "i1": types.Array(types.int64, 1, "C"),
        "i": types.int64, "F": F,
    }
    return tuple(table[code] for code in spec.split())


class KernelSet:
    """Kernels built by `build(F)` for each float type F, with their argument specs.

    `build` returns a dict name -> numba.cuda kernel; `specs` maps each name to a
    space-separated list of argument codes (see _signature) for compile_ptx.
    """

    def __init__(self, build, specs):
        self._build = build
        self.specs = specs

    @functools.cache
    def _for(self, type_name):
        from numba import types

        return SimpleNamespace(**self._build(getattr(types, type_name)))

    def get(self, dtype):
        return self._for(np.dtype(dtype).name)

    def ptx_cases(self):
        """(name, python function, argument types) for every kernel and float type.

        Built afresh on each call: numba-cuda compiles a kernel's device
        functions for the current device's compute capability and keeps the
        result, so a PTX check for another capability (see compile_ptx) needs
        new device functions.
        """
        from numba import types

        for type_name in ("float32", "float64"):
            F = getattr(types, type_name)
            built = self._build(F)
            for name, spec in self.specs.items():
                yield f"{name}[{type_name}]", built[name].py_func, _signature(spec, F)


def compile_ptx(kernel_set, cc):
    """PTX of every kernel of `kernel_set` for compute capability `cc`, e.g. (8, 0).

    Works without a GPU. numba-cuda asks the current device for its compute
    capability when it compiles a device function called by a kernel; with
    no device present that question is answered with `cc` for the duration.
    Returns {name: ptx}.
    """
    from unittest import mock

    from numba import cuda
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = tuple(cc)

    result = {}
    with mock.patch.object(dispatcher, "get_current_device", lambda: _Device()):
        for name, fn, sig in kernel_set.ptx_cases():
            result[name] = cuda.compile_ptx(fn, sig, cc=tuple(cc))[0]
    return result


def device_math(F):
    """Activation functions by code (as _validate.ACTIVATIONS) as device functions in F.

    0 tanh, 1 relu, 2 sigmoid, 3 linear, 4 hard_sigmoid; the derivative is
    written in terms of the output y = act(v), as on the CPU.
    """
    import math

    from numba import cuda

    zero, one, half, sixth = F(0.0), F(1.0), F(0.5), F(1.0 / 6.0)

    @cuda.jit(device=True)
    def sigmoid(v):
        return one / (one + math.exp(-v))

    @cuda.jit(device=True)
    def activate(code, v):
        if code == 0:
            return math.tanh(v)
        if code == 1:
            return max(v, zero)
        if code == 2:
            return one / (one + math.exp(-v))
        if code == 4:
            return min(max(v * sixth + half, zero), one)
        return v

    @cuda.jit(device=True)
    def activation_grad(code, y):
        if code == 0:
            return one - y * y
        if code == 1:
            return one if y > zero else zero
        if code == 2:
            return y * (one - y)
        if code == 4:
            return sixth if (y > zero and y < one) else zero
        return one

    return SimpleNamespace(zero=zero, one=one, sigmoid=sigmoid, activate=activate,
                           activation_grad=activation_grad)


# ---------------------------------------------------------------------------
# Layout and validation helpers shared by the CUDA launchers.


def dropout_arrays(xp, rec_mask, recurrent_kernel, gates, batch, transposed):
    """(rmask, mats, scratch) for a loop kernel's per-gate recurrent dropout
    (kernels/_cuda_block.dropped_matvec): the masks [B, G*H], the G gate blocks of
    recurrent_kernel [H, G*H] as [G, H, H] (transposed: each block's transpose) and
    a [B, G*H] scratch; without masks [B, 0] and one-element stand-ins."""
    dtype = recurrent_kernel.dtype
    if not rec_mask.size:
        return (xp.zeros((batch, 0), dtype), xp.zeros((1, 1, 1), dtype),
                xp.zeros((1, 1), dtype))
    units = recurrent_kernel.shape[0]
    blocks = recurrent_kernel.reshape(units, gates, units).transpose(1, 0, 2)
    if transposed:
        blocks = blocks.transpose(0, 2, 1)
    return (xp.ascontiguousarray(rec_mask), xp.ascontiguousarray(blocks),
            xp.empty((batch, gates * units), dtype))


def recurrent_gradient(xp, h_prev, d_h, rec_mask, gates=None):
    """dL/dU [H, G*H] from h_prev [T, B, H] and d_h = dL/d(h U) [T, B, G*H]: h_prev^T d_h,
    or under per-gate recurrent dropout (rec_mask [B, G*H]) (h_prev * m_g)^T d_h[..., g]
    for each gate (the first `gates` of them; the others' columns left as zeros)."""
    time, batch, units = h_prev.shape
    width = d_h.shape[2]
    d_h2 = d_h.reshape(time * batch, width)
    if not rec_mask.size:
        return matmul(xp, h_prev.reshape(time * batch, units).T, d_h2)
    out = xp.zeros((units, width), d_h.dtype)
    for g in range(width // units if gates is None else gates):
        cols = slice(g * units, (g + 1) * units)
        hm = (h_prev * rec_mask[None, :, cols]).reshape(time * batch, units)
        out[:, cols] = matmul(xp, hm.T, xp.ascontiguousarray(d_h2[:, cols]))
    return out


def to_time_major(xp, x, go_backwards):
    """[B, T, F] -> C-contiguous [T, B, F] in processing order (one copy)."""
    if go_backwards:
        x = x[:, ::-1]
    return xp.ascontiguousarray(x.transpose(1, 0, 2))


def from_time_major(xp, a_tm, go_backwards):
    a = a_tm.transpose(1, 0, 2)
    if go_backwards:
        a = a[:, ::-1]
    return xp.ascontiguousarray(a)


def time_major_mask(xp, mask, batch, time, go_backwards):
    """(mask [T, B] bool in processing order, first [B] int64), as on the CPU."""
    if mask is None:
        return xp.ones((time, batch), np.bool_), xp.zeros(batch, np.int64)
    m = mask[:, ::-1] if go_backwards else mask
    first = xp.where(m.any(axis=1), m.argmax(axis=1), time).astype(np.int64)
    return xp.ascontiguousarray(m.T), first
