"""TensorFlow ops registered at run time through TensorFlow's C API, with Numba
cfuncs as their CPU kernels: no compiler, no shared library of our own.

Registration (here, in Python) goes through ctypes on the already loaded
`libtensorflow_framework` (tensorflow/c/ops.h, tensorflow/c/kernels.h: the same
registries as TensorFlow's own ops). The kernels are `numba.cfunc`s with the
compute signature `void(void* state, TF_OpKernelContext* ctx)`; they reach the C
API through `types.ExternalFunction`s whose symbols are made known to Numba's
linker with `llvmlite.binding.add_symbol`, so calls resolve by name at link time
and the cfuncs are cached on disk like any @njit code.

This is the one module of fastrnn that uses TensorFlow's private Python modules:
`op_def_registry` and `kernels` (is an op or kernel registered already: a second
registration of an op aborts the process, of a kernel makes every call fail),
and `_pywrap_python_op_gen` (the Python wrappers, as `tf.load_op_library` makes
them). Tested on TensorFlow 2.21 (Keras 3.15, Numba 0.68) on Linux x86-64.

Kernel-side rules (see also ops/native/_shell.py):
- a cfunc never lets a Numba exception escape (it would be printed and the op
  would return with its outputs unset): every failure is `fail(...)`, a TF
  InvalidArgumentError (or Internal) that names the op and what was wrong. The
  kernels take their scratch from TensorFlow (`scratch`: TF_AllocateTemp) rather
  than NumPy, so nothing in them raises; the cores they call through their table
  slots report a failure through their done flag (kernels.runtime.abi);
- messages are small global byte arrays, embedded in the compiled code as
  constants (a Python int holding an address would be frozen stale in the cache).
"""

import ctypes
import os
import sys
import threading

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.runtime import cache as _cache

# The op kernels (here and in native/) compile in this folder's code and the
# kernels': their cache is stamped with both (kernels.runtime.cache).
_cache.add_tree(os.path.dirname(os.path.abspath(__file__)))

TESTED_TF = ("2.21",)
_LIBRARY = {"linux": "libtensorflow_framework.so.2",
            "darwin": "libtensorflow_framework.2.dylib"}

TF_FLOAT, TF_DOUBLE, TF_INT32, TF_INT64, TF_BOOL = 1, 2, 3, 9, 10
TF_DTYPE = {np.dtype(np.float32): TF_FLOAT, np.dtype(np.float64): TF_DOUBLE}
INVALID_ARGUMENT, INTERNAL = 3, 13
MAX_DIMS = 4

_lock = threading.Lock()
_state = {}


class Unavailable(RuntimeError):
    """The C API route cannot be set up in this process (and why)."""


def _library():
    import tensorflow as tf

    name = _LIBRARY.get(sys.platform)
    if name is None:
        raise Unavailable(f"TensorFlow's C API library is not known on {sys.platform}")
    path = os.path.join(tf.sysconfig.get_lib(), name)
    try:
        return ctypes.CDLL(path)
    except OSError as error:
        raise Unavailable(f"cannot load {path}: {error}") from error


# The C functions the kernels call, by name: (return type, argument types).
_ip, _i32, _i64 = types.intp, types.int32, types.int64
_KERNEL_SYMBOLS = {
    "TF_NewStatus": (_ip,),
    "TF_DeleteStatus": (types.void, _ip),
    "TF_GetCode": (_i32, _ip),
    "TF_SetStatus": (types.void, _ip, _i32, _ip),
    "TF_NumInputs": (_i32, _ip),
    "TF_GetInput": (types.void, _ip, _i32, _ip, _ip),
    "TF_NumDims": (_i32, _ip),
    "TF_Dim": (_i64, _ip, _i32),
    "TF_TensorType": (_i32, _ip),
    "TF_TensorData": (types.voidptr, _ip),
    "TF_AllocateOutput": (_ip, _ip, _i32, _i32, _ip, _i32, types.uint64, _ip),
    "TF_AllocateTemp": (_ip, _ip, _i32, _ip, _i32, _ip, _ip),
    "TF_DeleteTensor": (types.void, _ip),
    "TF_OpKernelContext_Failure": (types.void, _ip, _ip),
    "TF_OpKernelConstruction_GetAttrInt64": (types.void, _ip, _ip, _ip, _ip),
    "TF_NewShapeHandle": (_ip,),
    "TF_DeleteShapeHandle": (types.void, _ip),
    "TF_ShapeInferenceContextGetInput": (types.void, _ip, _i32, _ip, _ip),
    "TF_ShapeInferenceContextSetOutput": (types.void, _ip, _i32, _ip, _ip),
    "TF_ShapeInferenceContextSetUnknownShape": (types.void, _ip, _ip),
}
# Our own names for the symbols: the cached code links against these.
_ALIAS = "fastrnn_capi_"


def _extern(name):
    restype, *argtypes = _KERNEL_SYMBOLS[name]
    return types.ExternalFunction(_ALIAS + name, restype(*argtypes))


TF_NewStatus = _extern("TF_NewStatus")
TF_DeleteStatus = _extern("TF_DeleteStatus")
TF_GetCode = _extern("TF_GetCode")
TF_SetStatus = _extern("TF_SetStatus")
TF_NumInputs = _extern("TF_NumInputs")
TF_GetInput = _extern("TF_GetInput")
TF_NumDims = _extern("TF_NumDims")
TF_Dim = _extern("TF_Dim")
TF_TensorType = _extern("TF_TensorType")
TF_TensorData = _extern("TF_TensorData")
TF_AllocateOutput = _extern("TF_AllocateOutput")
TF_AllocateTemp = _extern("TF_AllocateTemp")
TF_DeleteTensor = _extern("TF_DeleteTensor")
TF_OpKernelContext_Failure = _extern("TF_OpKernelContext_Failure")
TF_OpKernelConstruction_GetAttrInt64 = _extern("TF_OpKernelConstruction_GetAttrInt64")
TF_NewShapeHandle = _extern("TF_NewShapeHandle")
TF_DeleteShapeHandle = _extern("TF_DeleteShapeHandle")
TF_ShapeInferenceContextGetInput = _extern("TF_ShapeInferenceContextGetInput")
TF_ShapeInferenceContextSetOutput = _extern("TF_ShapeInferenceContextSetOutput")
TF_ShapeInferenceContextSetUnknownShape = _extern("TF_ShapeInferenceContextSetUnknownShape")

KERNEL_SIGNATURE = types.void(types.intp, types.intp)  # compute(state, ctx) and shape fns

# NumPy's OpenBLAS thread count, set and read by the op kernels (see blas_enter).
_BLAS_THREADS_SIGNATURE = types.void(types.int32)
fastrnn_blas_set_threads = types.ExternalFunction("fastrnn_blas_set_threads",
                                                  _BLAS_THREADS_SIGNATURE)
fastrnn_blas_get_threads = types.ExternalFunction("fastrnn_blas_get_threads", types.int32())


def messages(op, texts):
    """Row k: "<op>: texts[k]" NUL-terminated, as one uint8 array: a compile-time
    constant of the kernel that uses it (`fail(..., table[k])`)."""
    rows = [f"{op}: {text}".encode() + b"\0" for text in texts]
    table = np.zeros((len(rows), max(map(len, rows))), np.uint8)
    for k, row in enumerate(rows):
        table[k, :len(row)] = np.frombuffer(row, np.uint8)
    return table


# ---------------------------------------------------------------- kernel side --


@intrinsic
def _blas_state(typingctx):
    """Address of the process-wide int64[2] "fastrnn_blas_state" (ops running now,
    the thread count to restore), bound by name like the functions."""
    def codegen(context, builder, signature, args):
        slot = builder.module.globals.get("fastrnn_blas_state")
        if slot is None:
            slot = cgutils.add_global_variable(builder.module, ir.ArrayType(ir.IntType(64), 2),
                                               "fastrnn_blas_state")
            slot.linkage = "external"
        return builder.ptrtoint(slot, ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _atomic_add(typingctx, address, delta):
    """*address += delta atomically; returns the value before."""
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "seq_cst")

    return types.int64(types.int64, types.int64), codegen


@njit(cache=True, nogil=True)
def blas_enter():
    """An op kernel starts: NumPy's OpenBLAS runs one thread while any op runs.

    Parallelism belongs to the graph (one op per batch part on TensorFlow's
    threads). A multi-threaded OpenBLAS inside an op wakes workers that then spin
    about 0.1 s for more work, taking cores from TensorFlow's threads: a 4-layer
    LSTM(45) training step measured 530 ms against 20 ms with one thread."""
    state = _blas_state()
    if _atomic_add(state, 1) == 0:
        _atomic_add(state + 8, np.int64(fastrnn_blas_get_threads()) - _atomic_add(state + 8, 0))
        fastrnn_blas_set_threads(1)


@njit(cache=True, nogil=True)
def blas_leave():
    """An op kernel ends: the last one running restores the count from before."""
    state = _blas_state()
    if _atomic_add(state, -1) == 1:
        fastrnn_blas_set_threads(np.int32(_atomic_add(state + 8, 0)))


@njit(cache=True, nogil=True)
def fail(ctx, status, code, table, k):
    """Report failure k of `messages` table to TensorFlow (the outputs are then not read)."""
    TF_SetStatus(status, code, table[k].ctypes.data)
    TF_OpKernelContext_Failure(ctx, status)


@njit(cache=True, nogil=True)
def get_input(ctx, i, status, dims):
    """(TF_Tensor*, rank) of input i; dims[:rank] gets its shape. The caller deletes
    the tensor (TF_DeleteTensor). Rank above MAX_DIMS reads as -1."""
    slot = np.zeros(1, np.intp)
    TF_GetInput(ctx, i, slot.ctypes.data, status)
    tensor = slot[0]
    if TF_GetCode(status) != 0 or tensor == 0:
        return tensor, -1
    rank = TF_NumDims(tensor)
    if rank > dims.shape[0]:
        return tensor, -1
    for d in range(rank):
        dims[d] = TF_Dim(tensor, d)
    return tensor, rank


@njit(cache=True, nogil=True)
def get_inputs(ctx, status, tensors, dims, ranks):
    """Every input: tensors[i], its rank ranks[i] and shape dims[i, :rank]. False when
    one could not be read (status set, or a rank above MAX_DIMS: ranks[i] = -1)."""
    ok = True
    for i in range(tensors.shape[0]):
        tensors[i], ranks[i] = get_input(ctx, i, status, dims[i])
        if ranks[i] < 0:
            ok = False
    return ok


@njit(cache=True, nogil=True)
def delete_tensors(tensors):
    for i in range(tensors.shape[0]):
        if tensors[i] != 0:
            TF_DeleteTensor(tensors[i])
            tensors[i] = 0


@njit(cache=True, nogil=True)
def allocate(ctx, i, dtype_code, itemsize, dims, rank, status):
    """TF_AllocateOutput for output i of shape dims[:rank]; 0 on failure (status set)."""
    size = itemsize
    for d in range(rank):
        size *= dims[d]
    return TF_AllocateOutput(ctx, i, dtype_code, dims.ctypes.data, rank, size, status)


# TF_AllocatorAttributes {size_t struct_size; TF_Bool on_host}: struct_size is the
# offset of the end of on_host (9), on_host (byte 8) is 1. A compile-time constant.
_ON_HOST = np.array([9, 1], np.int64)


@njit(cache=True, nogil=True)
def scratch(ctx, dtype_code, dims, rank, status):
    """A temporary tensor of shape dims[:rank] from TensorFlow's allocator
    (TF_AllocateTemp): the op's scratch memory, without NumPy allocations that could
    raise inside the kernel. 0 on failure (status set); the caller deletes it
    (delete_tensors) when done."""
    return TF_AllocateTemp(ctx, dtype_code, dims.ctypes.data, rank, _ON_HOST.ctypes.data, status)


@njit(cache=True, nogil=True)
def zero_tensor(tensor, nbytes):
    """Every byte of an allocated tensor's nbytes set to 0 (element loops: see
    kernels.fastmath.common.copy_1d)."""
    data = carray(TF_TensorData(tensor), nbytes, np.uint8)
    for i in range(nbytes):
        data[i] = 0


# ---------------------------------------------------------------- Python side --


def _bind():
    """Load the library, resolve every symbol (kernel side and registration side)."""
    import tensorflow as tf

    version = tf.__version__
    lib = _library()
    missing = [name for name in list(_KERNEL_SYMBOLS) + list(_REGISTRATION)
               if not hasattr(lib, name)]
    if missing:
        raise Unavailable(f"TensorFlow {version}'s C API lacks {', '.join(missing)}")
    for name in _KERNEL_SYMBOLS:
        llvm.add_symbol(_ALIAS + name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    _bind_blas_threads()
    calls = {}
    for name, (restype, *argtypes) in _REGISTRATION.items():
        calls[name] = ctypes.CFUNCTYPE(restype, *argtypes)((name, lib))
    return calls


def _bind_blas_threads():
    """Bind fastrnn_blas_[sg]et_threads to NumPy's OpenBLAS (no-ops where NumPy's
    BLAS is not OpenBLAS) and fastrnn_blas_state to memory of this process."""
    setter = getter = None
    try:
        import numpy._core._multiarray_umath as umath

        numpy_lib = ctypes.CDLL(umath.__file__)
        for set_name, get_name in (("scipy_openblas_set_num_threads64_",
                                    "scipy_openblas_get_num_threads64_"),
                                   ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                                   ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(numpy_lib, set_name) and hasattr(numpy_lib, get_name):
                setter, getter = getattr(numpy_lib, set_name), getattr(numpy_lib, get_name)
                break
    except (ImportError, OSError):
        pass
    if setter is None:
        _KEEP.blas_stubs = (cfunc(_BLAS_THREADS_SIGNATURE, cache=True)(_no_threads),
                            cfunc(types.int32(), cache=True)(_one_thread))
        setter, getter = _KEEP.blas_stubs
    for name, function in (("fastrnn_blas_set_threads", setter),
                           ("fastrnn_blas_get_threads", getter)):
        address = getattr(function, "address", None) or ctypes.cast(function, ctypes.c_void_p).value
        llvm.add_symbol(name, address)
    if getattr(_KEEP, "blas_state", None) is None:
        _KEEP.blas_state = np.zeros(2, np.int64)
    llvm.add_symbol("fastrnn_blas_state", _KEEP.blas_state.ctypes.data)


def _no_threads(n):
    pass


def _one_thread():
    return 1


_P, _S = ctypes.c_void_p, ctypes.c_char_p
_REGISTRATION = {
    "TF_NewOpDefinitionBuilder": (_P, _S),
    "TF_OpDefinitionBuilderAddInput": (None, _P, _S),
    "TF_OpDefinitionBuilderAddOutput": (None, _P, _S),
    "TF_OpDefinitionBuilderAddAttr": (None, _P, _S),
    "TF_OpDefinitionBuilderSetShapeInferenceFunction": (None, _P, _P),
    "TF_RegisterOpDefinition": (None, _P, _P),
    "TF_NewKernelBuilder": (_P, _S, _S, _P, _P, _P),
    "TF_KernelBuilder_TypeConstraint": (None, _P, _S, ctypes.c_int32, _P),
    "TF_RegisterKernelBuilder": (None, _S, _P, _P),
    "TF_NewStatus": (_P,),
    "TF_DeleteStatus": (None, _P),
    "TF_GetCode": (ctypes.c_int32, _P),
    "TF_Message": (_S, _P),
}

# TensorFlow keeps raw pointers to cfuncs (kernels, shape functions): they live as
# long as the process, also across importlib.reload of this module.
_KEEP = sys.modules.setdefault("_fastrnn_capi_keepalive", type(sys)("_fastrnn_capi_keepalive"))
if not hasattr(_KEEP, "objects"):
    _KEEP.objects = []
    _KEEP.calls = None
    _KEEP.error = None


def calls():
    """The registration functions, binding the library on first use; raises
    Unavailable (with the reason) where the C API route cannot be set up."""
    with _lock:
        if _KEEP.calls is None and _KEEP.error is None:
            try:
                _KEEP.calls = _bind()
            except Unavailable as error:
                _KEEP.error = error
            except (OSError, AttributeError, ImportError) as error:
                _KEEP.error = Unavailable(f"{type(error).__name__}: {error}")
        if _KEEP.error is not None:
            raise _KEEP.error
        return _KEEP.calls


def _check(c, status, what):
    code, text = c["TF_GetCode"](status), c["TF_Message"](status)
    c["TF_DeleteStatus"](status)
    if code != 0:
        raise RuntimeError(f"{what}: TensorFlow status {code}: {text.decode(errors='replace')}")


def register_op(name, inputs, outputs, attrs, shape_fn):
    """Register op `name` once per process (a second registration would abort it)."""
    from tensorflow.python.framework import op_def_registry

    c = calls()
    with _lock:
        if op_def_registry.get(name) is not None:
            return False
        builder = c["TF_NewOpDefinitionBuilder"](name.encode())
        for attr in attrs:
            c["TF_OpDefinitionBuilderAddAttr"](builder, attr.encode())
        for spec in inputs:
            c["TF_OpDefinitionBuilderAddInput"](builder, spec.encode())
        for spec in outputs:
            c["TF_OpDefinitionBuilderAddOutput"](builder, spec.encode())
        c["TF_OpDefinitionBuilderSetShapeInferenceFunction"](builder, shape_fn.address)
        _KEEP.objects.append(shape_fn)
        status = c["TF_NewStatus"]()
        c["TF_RegisterOpDefinition"](builder, status)  # TensorFlow owns the builder now
        _check(c, status, f"registering op {name}")
        return True


def register_kernel(op, compute, dtype_code, create=None):
    """Register `compute` as op's CPU kernel for T = dtype_code, once per process (a
    second registration of the same kernel makes every call of the op fail);
    `create` (a cfunc or None) makes each kernel instance's state."""
    from tensorflow.python.framework import kernels as tf_kernels

    c = calls()
    with _lock:
        for kernel in tf_kernels.get_registered_kernels_for_op(op).kernel:
            allowed = [tuple(k.allowed_values.list.type) for k in kernel.constraint
                       if k.name == "T"]
            if kernel.device_type == "CPU" and allowed == [(dtype_code,)]:
                return False
        builder = c["TF_NewKernelBuilder"](op.encode(), b"CPU",
                                           None if create is None else create.address,
                                           compute.address, None)
        _KEEP.objects.extend([compute, create])
        status = c["TF_NewStatus"]()
        c["TF_KernelBuilder_TypeConstraint"](builder, b"T", dtype_code, status)
        _check(c, status, f"constraining the kernel of {op}")
        status = c["TF_NewStatus"]()
        c["TF_RegisterKernelBuilder"](f"{op}_CPU_{dtype_code}".encode(), builder, status)
        _check(c, status, f"registering the kernel of {op}")
        return True


def python_wrappers(names, module_name):
    """A module with a Python function per op (what tf.load_op_library makes):
    eager execution, graph building and gradient recording as for any TF op."""
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.framework import _pywrap_python_op_gen, op_def_registry

    ops = op_def_pb2.OpList(op=[op_def_registry.get(name) for name in names])
    source = _pywrap_python_op_gen.GetPythonWrappers(ops.SerializeToString())
    module = type(sys)(module_name)
    exec(source, module.__dict__)  # noqa: S102 - TensorFlow's generated wrappers
    return module
