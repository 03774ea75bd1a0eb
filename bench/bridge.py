"""Bench-only layers that do no recurrent work: what the bridge to TensorFlow costs.

- `FastrnnBenchNoopForward(x: T) -> y: T` and `FastrnnBenchNoopBackward(x: T, dy: T)
  -> dx: T`: a native op pair registered through fastrnn's C API route
  (fastrnn/ops/_capi.py), whose cfunc kernels allocate their output through
  TensorFlow (the shape of x) and fill it with zeros. The same pair as
  `tf.numpy_function`s returning `np.zeros_like(x)`.
- `BridgeLayer`: a recurrent layer's outside (a kernel [I, units] and a bias, the
  projection x W + b) whose inside is one of `BRIDGES`: the native pair, the
  numpy_function pair, or nothing (`tf.identity`). Four of them stacked in the
  forecasting model (`bridge_model`) show what one layer's forward+backward bridge
  costs in a training step: (step with the pair - step with nothing) / 4.

Importing this module imports TensorFlow and binds the C API (the cfuncs below are
compiled, or loaded from Numba's cache, at import).
"""

import keras
import numpy as np
import tensorflow as tf
from numba import carray, cfunc

from fastrnn.ops import _capi
from fastrnn.ops._capi import (
    INTERNAL,
    INVALID_ARGUMENT,
    KERNEL_SIGNATURE,
    MAX_DIMS,
    TF_DTYPE,
    TF_FLOAT,
    TF_TensorData,
    TF_TensorType,
    allocate,
    delete_tensors,
    fail,
    get_inputs,
    messages,
)

# The kernels link against the C API by symbol name: bind it before they compile.
_capi.calls()

FORWARD = "FastrnnBenchNoopForward"
BACKWARD = "FastrnnBenchNoopBackward"

_FORWARD_ERRORS = messages(FORWARD, (
    "could not read x (rank above 4?)",
    "could not allocate y",
))
_BACKWARD_ERRORS = messages(BACKWARD, (
    "could not read x or dy (rank above 4?)",
    "could not allocate dx",
    "dy must have the shape of x",
))


@cfunc(KERNEL_SIGNATURE, cache=True)
def _shape_like_x(ictx, status):
    handle = _capi.TF_NewShapeHandle()
    _capi.TF_ShapeInferenceContextGetInput(ictx, 0, handle, status)
    if _capi.TF_GetCode(status) == 0:
        _capi.TF_ShapeInferenceContextSetOutput(ictx, 0, handle, status)
    _capi.TF_DeleteShapeHandle(handle)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _noop_forward(state, ctx):
    """y = zeros with the shape and dtype of x."""
    status = _capi.TF_NewStatus()
    tensors = np.zeros(1, np.intp)
    outputs = np.zeros(1, np.intp)
    dims = np.zeros((1, MAX_DIMS), np.int64)
    ranks = np.zeros(1, np.int64)
    if not get_inputs(ctx, status, tensors, dims, ranks):
        fail(ctx, status, INVALID_ARGUMENT, _FORWARD_ERRORS, 0)
    else:
        code = TF_TensorType(tensors[0])
        size = 4 if code == TF_FLOAT else 8
        outputs[0] = allocate(ctx, 0, code, size, dims[0], ranks[0], status)
        if outputs[0] == 0:
            fail(ctx, status, INTERNAL, _FORWARD_ERRORS, 1)
        else:
            nbytes = size
            for d in range(ranks[0]):
                nbytes *= dims[0, d]
            if nbytes > 0:
                carray(TF_TensorData(outputs[0]), nbytes, np.uint8)[:] = 0
    delete_tensors(outputs)
    delete_tensors(tensors)
    _capi.TF_DeleteStatus(status)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _noop_backward(state, ctx):
    """dx = zeros with the shape and dtype of x (dy checked to match x)."""
    status = _capi.TF_NewStatus()
    tensors = np.zeros(2, np.intp)
    outputs = np.zeros(1, np.intp)
    dims = np.zeros((2, MAX_DIMS), np.int64)
    ranks = np.zeros(2, np.int64)
    error = -1
    if not get_inputs(ctx, status, tensors, dims, ranks):
        error = 0
    elif ranks[0] != ranks[1]:
        error = 2
    else:
        for d in range(ranks[0]):
            if dims[0, d] != dims[1, d]:
                error = 2
    if error < 0:
        code = TF_TensorType(tensors[0])
        size = 4 if code == TF_FLOAT else 8
        outputs[0] = allocate(ctx, 0, code, size, dims[0], ranks[0], status)
        if outputs[0] == 0:
            error = 1
        else:
            nbytes = size
            for d in range(ranks[0]):
                nbytes *= dims[0, d]
            if nbytes > 0:
                carray(TF_TensorData(outputs[0]), nbytes, np.uint8)[:] = 0
    if error >= 0:
        fail(ctx, status, INTERNAL if error == 1 else INVALID_ARGUMENT, _BACKWARD_ERRORS, error)
    delete_tensors(outputs)
    delete_tensors(tensors)
    _capi.TF_DeleteStatus(status)


_T = "T: {float, double}"
_capi.register_op(FORWARD, ["x: T"], ["y: T"], [_T], _shape_like_x)
_capi.register_op(BACKWARD, ["x: T", "dy: T"], ["dx: T"], [_T], _shape_like_x)
for _code in TF_DTYPE.values():
    _capi.register_kernel(FORWARD, _noop_forward, _code)
    _capi.register_kernel(BACKWARD, _noop_backward, _code)
_gen = _capi.python_wrappers([FORWARD, BACKWARD], "bench._gen_noop")

native_forward = _gen.fastrnn_bench_noop_forward
native_backward = _gen.fastrnn_bench_noop_backward


def _zeros_like(x):
    return np.zeros_like(x)


def _zeros_like_first(x, dy):
    return np.zeros_like(x)


def numpy_forward(x):
    """What FastrnnBenchNoopForward does, as a tf.numpy_function."""
    y = tf.numpy_function(_zeros_like, [x], x.dtype, stateful=False)
    y.set_shape(x.shape)
    return y


def numpy_backward(x, dy):
    """What FastrnnBenchNoopBackward does, as a tf.numpy_function."""
    dx = tf.numpy_function(_zeros_like_first, [x, dy], x.dtype, stateful=False)
    dx.set_shape(x.shape)
    return dx


def _pair(forward, backward):
    @tf.autograph.experimental.do_not_convert  # autograph would rewrite grad's closure
    @tf.custom_gradient
    def pair(x):
        def grad(dy):
            return backward(x, dy)

        return forward(x), grad

    return pair


# What a layer's inside can be: (name, function of the projection [B, T, units]).
BRIDGES = {
    "native op pair": _pair(native_forward, native_backward),
    "numpy_function pair": _pair(numpy_forward, numpy_backward),
    "nothing": tf.identity,
}


class BridgeLayer(keras.layers.Layer):
    """h = x W + b, then `bridge` on h (output zeros for the pairs, h for "nothing").

    Args:
        units: output features.
        bridge: a key of BRIDGES.
        return_sequences: [B, T, units] if True, else the last step [B, units].
    """

    def __init__(self, units, bridge, return_sequences=False, **kwargs):
        super().__init__(**kwargs)
        if bridge not in BRIDGES:
            raise ValueError(f"bridge must be one of {list(BRIDGES)}, got {bridge!r}")
        self.units, self.bridge, self.return_sequences = units, bridge, return_sequences
        self.supports_jit = False  # as fastrnn's layers: XLA cannot compile these ops

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        h = BRIDGES[self.bridge](tf.einsum("btf,fu->btu", x, self.kernel) + self.bias)
        return h if self.return_sequences else h[:, -1]

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (*input_shape[:2], self.units)
        return (input_shape[0], self.units)


LAYERS, UNITS, BATCH, TIME = 4, 45, 32, 15


def bridge_model(bridge, seed=0):
    """The stacked forecasting model (Input(15, 1) -> 4 layers of 45 units, sequences on
    all but the last -> Dense(1), mse) with BridgeLayers. Returns (model, x, y)."""
    keras.utils.set_random_seed(seed)
    layers = [BridgeLayer(UNITS, bridge, return_sequences=i < LAYERS - 1) for i in range(LAYERS)]
    model = keras.Sequential([keras.Input((TIME, 1)), *layers, keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    return (model, rng.standard_normal((BATCH, TIME, 1)).astype("float32"),
            rng.standard_normal((BATCH, 1)).astype("float32"))
