"""The layers' `device` argument: "auto" | "cpu" | "cuda".

No GPU here, so the CUDA kernels themselves are tested in tests/cuda; these
tests cover the choice, its errors, its config, and the tf.py_function route
the GPU path takes (exercised with CPU tensors, which it hands to the NumPy
kernels), compared with Keras like every other path.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_parity import B, I, PAIRS, T, assert_same, make_pair, run

import fastrnn
from fastrnn.ops import _bridge, recurrence, route

ALL = {**{k: v[1] for k, v in PAIRS.items()}, "mingru": fastrnn.MinGRU}


@pytest.mark.parametrize("cls", list(ALL.values()), ids=list(ALL))
def test_bad_device_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=r"device must be one of \('auto', 'cpu', 'cuda'\), got 'gpu'"):
        cls(4, device="gpu")


@pytest.mark.parametrize("cls", list(ALL.values()), ids=list(ALL))
def test_device_is_in_the_config(cls):
    layer = cls(4, device="cpu")
    assert layer.get_config()["device"] == "cpu"
    assert cls.from_config(layer.get_config())._device == "cpu"
    assert cls(4)._device == "auto"


def test_cuda_without_a_gpu_says_what_is_missing():
    layer = fastrnn.GRU(4, device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda' was asked for, but .*device='auto' or 'cpu'"):
        layer(np.ones((2, 3, I), np.float32))


def test_auto_takes_the_cpu_kernels_without_a_gpu():
    assert not recurrence.use_gpu_route("auto")
    assert not recurrence.use_gpu_route("cpu")


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("cell", list(PAIRS))
def test_py_function_route_matches_keras(cell, graph, monkeypatch):
    # Force the GPU route's plumbing (tf.py_function, the backward re-running the
    # forward); with CPU tensors it runs the NumPy kernels.
    monkeypatch.setattr(route, "use_gpu_route", lambda device: True)
    calls = []
    real = _bridge._eager
    monkeypatch.setattr(_bridge, "_eager", lambda fn: calls.append(fn) or real(fn))
    ref, fast = make_pair(cell)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((B, T, I)).astype(np.float32))
    mask = tf.constant(rng.random((B, T)) > 0.3)
    n_out = 1 + (2 if cell == "lstm" else 1)
    weights = [tf.constant(rng.standard_normal(s).astype(np.float32))
               for s in [(B, T, 5)] + [(B, 5)] * (n_out - 1)]
    kw = dict(mask=mask, training=True)
    ref.return_sequences = fast.return_sequences = True
    ref.return_state = fast.return_state = True
    want_y, want_g = run(ref, x, weights, graph, **kw)
    got_y, got_g = run(fast, x, weights, graph, **kw)
    assert len(calls) == 2, "forward and backward should both go through tf.py_function"
    for a, b in zip(got_y, want_y):
        assert_same(a, b, "float32", "output")
    for a, b in zip(got_g, want_g):
        assert_same(a, b, "float32", "gradient")


def test_keras_model_with_device_cpu_trains():
    model = keras.Sequential([keras.Input((T, I)), fastrnn.LSTM(5, device="cpu"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((8, T, I)).astype(np.float32)
    history = model.fit(x, x[:, -1, :1], epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
