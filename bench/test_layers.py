"""Keras-level benchmarks: fastrnn layers beside keras.layers.* in the same run.

Layer forward+backward (inside tf.function) at the seed shapes and the mid shape,
training steps and predictions of the seed-style models, and the fixed overhead
of one layer call (py_function round trip) on a one-element input.
"""

import os

import numpy as np
import pytest

from bench.cases import tf_forward_backward

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LAYER_SHAPES = {
    "B32 T15 I1 H45": (32, 15, 1, 45),
    "B128 T17 I100 H150": (128, 17, 100, 150),
    "B64 T100 I128 H256": (64, 100, 128, 256),
    "B16 T1024 I64 H128": (16, 1024, 64, 128),  # --full only
}


def _classes(impl):
    import keras

    import fastrnn

    if impl == "keras":
        from bench.mingru_anchors import DenseLoopMinGRU

        # minGRU's Keras anchor: Dense gates + a tf loop, as Keras tutorials write it.
        return {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM,
                "simple_rnn": keras.layers.SimpleRNN, "mingru": DenseLoopMinGRU}
    return {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM, "simple_rnn": fastrnn.SimpleRNN,
            "mingru": fastrnn.MinGRU}


def layer_step(impl, cell, shape, mode="forward+backward"):
    import tensorflow as tf

    B, T, I, H = shape
    layer = _classes(impl)[cell](H, return_sequences=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((B, T, I)).astype("float32"))
    dy = tf.constant(rng.standard_normal((B, T, H)).astype("float32"))
    layer.build((B, T, I))
    if mode == "forward":
        return tf.function(lambda: layer(x))
    return tf_forward_backward(layer, x, dy)


def _padded_reviews(rng, vocab=5000, batch=32, length=200):
    """Token ids right-padded with 0 to `length`, for Embedding(mask_zero=True)."""
    x = rng.integers(1, vocab, (batch, length))
    for row, n in zip(x, rng.integers(20, length, batch)):
        row[n:] = 0
    return x, rng.integers(0, 2, (batch, 1))


def _model(impl, name):
    import keras

    classes = _classes(impl)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "forecast SimpleRNN(3)":
        model = keras.Sequential([keras.Input((15, 1)), classes["simple_rnn"](3),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1))
        loss = "mse"
    elif name == "forecast GRU(256)":
        model = keras.Sequential([keras.Input((15, 1)), classes["gru"](256),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1))
        loss = "mse"
    elif name == "next-word SimpleRNN(50, relu)":
        vocab = 2000
        model = keras.Sequential([keras.Input((10,), dtype="int32"),
                                  keras.layers.Embedding(vocab, 64),
                                  classes["simple_rnn"](50, activation="relu"),
                                  keras.layers.Dense(vocab, activation="softmax")])
        x, y = rng.integers(0, vocab, (128, 10)), rng.integers(0, vocab, (128,))
        loss = "sparse_categorical_crossentropy"
    elif name in ("sentiment BiGRU(64) T200", "sentiment BiLSTM(64) T200"):
        cell = "gru" if "GRU" in name else "lstm"
        model = keras.Sequential([keras.Input((200,), dtype="int32"),
                                  keras.layers.Embedding(5000, 64, mask_zero=True),
                                  keras.layers.Bidirectional(classes[cell](64)),
                                  keras.layers.Dense(1, activation="sigmoid")])
        x, y = _padded_reviews(rng)
        loss = "binary_crossentropy"
    elif name == "forecast stacked LSTM(45)":
        model = keras.Sequential([keras.Input((15, 1)),
                                  classes["lstm"](45, return_sequences=True),
                                  keras.layers.Dropout(0.2),
                                  classes["lstm"](45, return_sequences=True),
                                  keras.layers.Dropout(0.2),
                                  keras.layers.TimeDistributed(keras.layers.Dense(1))])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 15, 1))
        loss = "mse"
    elif name == "next-word LSTM(150) V8200":
        vocab = 8200
        model = keras.Sequential([keras.Input((10,), dtype="int32"),
                                  keras.layers.Embedding(vocab, 100),
                                  classes["lstm"](150),
                                  keras.layers.Dense(vocab, activation="softmax")])
        x, y = rng.integers(0, vocab, (128, 10)), rng.integers(0, vocab, (128,))
        loss = "sparse_categorical_crossentropy"
    else:
        raise ValueError(name)
    model.compile(optimizer="adam", loss=loss)
    return model, x.astype("int32" if x.dtype.kind == "i" else "float32"), y


MODELS = ["forecast SimpleRNN(3)", "forecast GRU(256)", "next-word SimpleRNN(50, relu)",
          "sentiment BiGRU(64) T200", "forecast stacked LSTM(45)", "sentiment BiLSTM(64) T200",
          "next-word LSTM(150) V8200"]


@pytest.mark.parametrize("shape", list(LAYER_SHAPES))
@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])  # first in the id: -k forward-
def test_layer(run_paired, benchmark, cell, shape, mode):
    benchmark.group = f"layer {cell} | {shape} | {mode}"
    fns = {impl: layer_step(impl, cell, LAYER_SHAPES[shape], mode) for impl in ("fastrnn", "keras")}
    run_paired(fns, cell=f"layer {cell}", shape=shape, mode=mode)


def _model_call(impl, name, mode):
    model, x, y = _model(impl, name)
    if mode == "train_on_batch":
        return lambda: model.train_on_batch(x, y)
    return lambda: model.predict_on_batch(x)


@pytest.mark.parametrize("mode", ["train_on_batch", "predict_on_batch"])
@pytest.mark.parametrize("name", MODELS)
def test_model(run_paired, benchmark, name, mode):
    benchmark.group = f"model {name} | {mode}"
    fns = {impl: _model_call(impl, name, mode) for impl in ("fastrnn", "keras")}
    run_paired(fns, cell=name, shape="", mode=mode)


def _overhead_call(impl):
    import tensorflow as tf

    if impl == "tf.numpy_function":
        x = tf.ones((1, 1, 1))
        return tf.function(lambda: tf.numpy_function(lambda a: a, [x], Tout=tf.float32))
    if impl == "fastrnn kernel":
        from fastrnn import kernels

        x = np.ones((1, 1, 1), np.float32)
        W, U, b = np.ones((1, 3), np.float32), np.ones((1, 3), np.float32), np.ones((2, 3), np.float32)
        return lambda: kernels.gru_forward(x, None, W, U, b)
    layer = _classes("keras" if impl == "keras" else "fastrnn")["gru"](1)
    x = tf.ones((1, 1, 1))
    layer.build((1, 1, 1))
    return tf.function(lambda: layer(x))


def test_fixed_overhead(run_paired, benchmark):
    """One GRU(1) call on a [1, 1, 1] input: what a call costs beyond the arithmetic.

    'tf.numpy_function' is a bare round trip (identity, inside tf.function): the
    part of fastrnn's overhead that belongs to TensorFlow.
    """
    benchmark.group = "overhead GRU(1) on [1, 1, 1]"
    fns = {impl: _overhead_call(impl)
           for impl in ("fastrnn kernel", "tf.numpy_function", "fastrnn", "keras")}
    run_paired(fns, cell="overhead GRU(1)", shape="B1 T1 I1 H1", mode="forward")
