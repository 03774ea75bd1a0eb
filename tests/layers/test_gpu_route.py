"""device="auto" on a machine where TensorFlow has a GPU, with the device list and
Keras' cuDNN rule mocked (this machine has no GPU).

Where Keras' own layer would run cuDNN (LSTM/GRU, its `cudnn_ok` rules, no
recurrent dropout, use_cudnn not False) the layer delegates to Keras' own
inner_loop; elsewhere it runs fastrnn's CUDA kernels when CuPy + numba-cuda can,
else Keras' loop. It never runs the CPU op on a TensorFlow GPU.
"""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn
from fastrnn import _routes
from fastrnn.kernels.gpu import cuda as _cuda

keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

B, T, I, H = 3, 6, 4, 5


@pytest.fixture
def gpu_machine(monkeypatch):
    """set(cupy=bool): TensorFlow lists a GPU, Keras' cudnn_ok sees one; CuPy +
    numba-cuda present or not. Keras' cuDNN call itself is a spy that records the
    call and declines (NotImplementedError), so Keras' layer then runs its generic
    loop, as it does where cuDNN cannot take a call."""
    list_devices = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/GPU:0"] if kind == "GPU" else list_devices(kind))
    monkeypatch.setattr(keras_tf_rnn, "_is_gpu_available", lambda: True)
    asked = []

    def declines(name):
        def spy(*args, **kwargs):
            asked.append(name)
            raise NotImplementedError
        return spy

    from keras.src import backend
    monkeypatch.setattr(backend, "lstm", declines("lstm"))
    monkeypatch.setattr(backend, "gru", declines("gru"))

    def set_cupy(present):
        monkeypatch.setattr(_cuda, "gpu_available", lambda: present)
        return asked
    return set_cupy


def _route_of(layer, x, **call):
    """The routes the layer noted (once per route), after calling it on x."""
    layer(x, **call)
    return [(route, reason) for name, _, route, reason in _routes.notes()
            if name == layer.name]


def _x():
    return tf.constant(np.random.default_rng(0).standard_normal((B, T, I)).astype("float32"))


CUDNN_CASES = [(fastrnn.LSTM, {}), (fastrnn.GRU, {}), (fastrnn.LSTM, {"dropout": 0.2})]


@pytest.mark.parametrize("cls,kwargs", CUDNN_CASES)
@pytest.mark.parametrize("cupy", [False, True])
def test_where_keras_uses_cudnn_the_layer_runs_keras(gpu_machine, cls, kwargs, cupy):
    asked = gpu_machine(cupy)
    keras_cls = {fastrnn.LSTM: keras.layers.LSTM, fastrnn.GRU: keras.layers.GRU}[cls]
    fast, ref = cls(H, return_sequences=True, **kwargs), keras_cls(H, return_sequences=True,
                                                                    **kwargs)
    x = _x()
    ref(x)
    fast(x)
    fast.set_weights(ref.get_weights())
    before = len(asked)
    routes = _route_of(fast, x)
    assert [r for r, _ in routes] == [_routes.KERAS_CUDNN]
    assert asked[before:] == [keras_cls.__name__.lower()]  # Keras' cuDNN call was what ran
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-6, atol=1e-6)
    assert "Keras' cuDNN" in _routes.report()


NO_CUDNN_CASES = [
    (fastrnn.SimpleRNN, {}),
    (fastrnn.LSTM, {"recurrent_dropout": 0.2}),
    (fastrnn.GRU, {"reset_after": False}),
    (fastrnn.GRU, {"activation": "relu"}),
    (fastrnn.LSTM, {"use_cudnn": False}),
    (fastrnn.MinGRU, {}),
]


@pytest.mark.parametrize("cls,kwargs", NO_CUDNN_CASES)
def test_where_keras_has_no_cudnn_path_cuda_kernels_or_keras_loop(gpu_machine, cls, kwargs):
    gpu_machine(True)
    layer = cls(H, **kwargs)
    assert layer._gpu_route() == ("cuda", None)   # CuPy present: fastrnn's CUDA kernels
    gpu_machine(False)
    routes = _route_of(layer, _x(), training=True)   # no CuPy: Keras' own loop
    assert [r for r, _ in routes] == [_routes.KERAS]
    assert "without CuPy" in routes[0][1]


def test_rnn_of_a_stock_cell_on_a_gpu(gpu_machine):
    # Keras' RNN(cell) has no cuDNN path: CUDA kernels with CuPy, else Keras' loop.
    gpu_machine(True)
    layer = fastrnn.RNN(keras.layers.LSTMCell(H))
    assert layer._gpu_route() == ("cuda", None)
    gpu_machine(False)
    assert [r for r, _ in _route_of(layer, _x())] == [_routes.KERAS]


def test_device_cpu_keeps_the_cpu_op_and_no_gpu_keeps_it_too(gpu_machine, monkeypatch):
    gpu_machine(False)
    layer = fastrnn.LSTM(H, device="cpu")
    assert layer._gpu_route() is None
    assert [r for r, _ in _route_of(layer, _x())] != [_routes.KERAS]
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])
    assert fastrnn.LSTM(H)._gpu_route() is None


@pytest.mark.parametrize("cls,keras_cls", [(fastrnn.LSTM, keras.layers.LSTM),
                                           (fastrnn.GRU, keras.layers.GRU)])
def test_per_gate_input_dropout_without_cupy_runs_keras_generic_loop(gpu_machine, cls,
                                                                     keras_cls):
    # implementation=1 input dropout (no recurrent dropout): Keras' own inner_loop would
    # try cuDNN with the list of per-gate masks as one mask and fail. Without CuPy the
    # layer runs Keras' generic loop: Keras' numbers (use_cudnn=False) and no cuDNN call.
    asked = gpu_machine(False)
    config = dict(units=H, dropout=0.3, implementation=1, seed=4, return_sequences=True)
    fast, ref = cls(**config), keras_cls(**config, use_cudnn=False)
    x = _x()
    fast.build(x.shape)
    ref.build(x.shape)
    fast.set_weights(ref.get_weights())
    before = len(asked)
    got = fast(x, training=True)
    assert asked[before:] == []
    assert [r for n, _, r, _ in _routes.notes() if n == fast.name] == [_routes.KERAS]
    np.testing.assert_allclose(got, ref(x, training=True), rtol=1e-6, atol=1e-6)
