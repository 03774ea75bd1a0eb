"""Keras-level benchmarks: fastrnn layers beside keras.layers.* in the same run.

Layer forward+backward (inside tf.function) at the seed shapes and the mid shape,
and training steps and predictions of the seed-style models: Keras' layers,
fastrnn's (native ops), fastrnn's on the tf.numpy_function route and a stand-in
(a Dense in place of each recurrent layer), so that the recurrent layers' share
of a step shows. The fixed cost of one call is in test_bridge.py.
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


def _recurrent(impl):
    """impl's recurrent layers: make(cell, units, bidirectional=False, **kwargs).

    "keras": keras.layers.* (minGRU: Dense gates + a tf loop); "fastrnn" and
    "numpy_function": fastrnn's layers (the route is chosen when the model's step
    is traced, see _model_call); "stand-in": bench.standin.StandIn, a Dense on the
    inputs of the same output shape (twice the units for a Bidirectional)."""
    import keras

    if impl == "stand-in":
        from bench.standin import StandIn

        def make(cell, units, bidirectional=False, return_sequences=False, **_):
            return StandIn(2 * units if bidirectional else units, return_sequences)
        return make
    classes = _classes("keras" if impl == "keras" else "fastrnn")

    def make(cell, units, bidirectional=False, **kwargs):
        layer = classes[cell](units, **kwargs)
        return keras.layers.Bidirectional(layer) if bidirectional else layer
    return make


def _model(impl, name):
    """(compiled model, x, y) of the seed-style model `name` with impl's recurrent layers."""
    import keras

    rnn = _recurrent(impl)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "forecast SimpleRNN(3)":
        model = keras.Sequential([keras.Input((15, 1)), rnn("simple_rnn", 3),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1))
        loss = "mse"
    elif name == "forecast GRU(256)":
        model = keras.Sequential([keras.Input((15, 1)), rnn("gru", 256),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1))
        loss = "mse"
    elif name == "next-word SimpleRNN(50, relu)":
        vocab = 2000
        model = keras.Sequential([keras.Input((10,), dtype="int32"),
                                  keras.layers.Embedding(vocab, 64),
                                  rnn("simple_rnn", 50, activation="relu"),
                                  keras.layers.Dense(vocab, activation="softmax")])
        x, y = rng.integers(0, vocab, (128, 10)), rng.integers(0, vocab, (128,))
        loss = "sparse_categorical_crossentropy"
    elif name in ("sentiment BiGRU(64) T200", "sentiment BiLSTM(64) T200"):
        cell = "gru" if "GRU" in name else "lstm"
        model = keras.Sequential([keras.Input((200,), dtype="int32"),
                                  keras.layers.Embedding(5000, 64, mask_zero=True),
                                  rnn(cell, 64, bidirectional=True),
                                  keras.layers.Dense(1, activation="sigmoid")])
        x, y = _padded_reviews(rng)
        loss = "binary_crossentropy"
    elif name == "forecast stacked LSTM(45)":
        model = keras.Sequential([keras.Input((15, 1)),
                                  rnn("lstm", 45, return_sequences=True),
                                  keras.layers.Dropout(0.2),
                                  rnn("lstm", 45, return_sequences=True),
                                  keras.layers.Dropout(0.2),
                                  keras.layers.TimeDistributed(keras.layers.Dense(1))])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 15, 1))
        loss = "mse"
    elif name == "forecast stacked LSTM(45) x4":
        # The bridge case's model (bench/bridge.py) with real LSTMs.
        model = keras.Sequential([keras.Input((15, 1)),
                                  *[rnn("lstm", 45, return_sequences=i < 3) for i in range(4)],
                                  keras.layers.Dense(1)])
        x, y = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1))
        loss = "mse"
    elif name == "next-word LSTM(150) V8200":
        vocab = 8200
        model = keras.Sequential([keras.Input((10,), dtype="int32"),
                                  keras.layers.Embedding(vocab, 100),
                                  rnn("lstm", 150),
                                  keras.layers.Dense(vocab, activation="softmax")])
        x, y = rng.integers(0, vocab, (128, 10)), rng.integers(0, vocab, (128,))
        loss = "sparse_categorical_crossentropy"
    elif name == "lm minGRU(128) B32 T32":
        from bench import lm

        # bench/lm.py's language model (Embedding(mask_zero) -> minGRU(128) -> Dense),
        # one batch of its corpus.
        x, y, vocab = lm.corpus(max_sequences=32)
        return lm.model(rnn("mingru", 128, return_sequences=True), vocab), x, y
    else:
        raise ValueError(name)
    model.compile(optimizer="adam", loss=loss)
    return model, x.astype("int32" if x.dtype.kind == "i" else "float32"), y


MODELS = ["forecast SimpleRNN(3)", "forecast GRU(256)", "next-word SimpleRNN(50, relu)",
          "sentiment BiGRU(64) T200", "forecast stacked LSTM(45)", "forecast stacked LSTM(45) x4",
          "sentiment BiLSTM(64) T200", "next-word LSTM(150) V8200", "lm minGRU(128) B32 T32"]
# What each model case times, in the same rounds: Keras' layers, fastrnn's (the route
# it picks: native ops where they can be set up), fastrnn's on the tf.numpy_function
# route, and the stand-in (bench.standin.StandIn in place of every recurrent layer).
MODEL_IMPLS = ("keras", "fastrnn", "numpy_function", "stand-in")


@pytest.mark.parametrize("shape", list(LAYER_SHAPES))
@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])  # first in the id: -k forward-
def test_layer(run_paired, benchmark, cell, shape, mode):
    benchmark.group = f"layer {cell} | {shape} | {mode}"
    fns = {impl: layer_step(impl, cell, LAYER_SHAPES[shape], mode) for impl in ("fastrnn", "keras")}
    run_paired(fns, cell=f"layer {cell}", shape=shape, mode=mode)


def _under_route(route, fn):
    """fn run with fastrnn's CPU route set to `route` (the layers read it when traced)."""
    from fastrnn.ops import recurrence

    def run():
        before = recurrence.get_route()
        recurrence.set_route(route)
        try:
            return fn()
        finally:
            recurrence.set_route(before)
    return run


def _model_call(impl, name, mode):
    """(the model's step as a zero-argument callable, the routes its fastrnn layers
    took: sorted names, empty for Keras and the stand-in)."""
    from fastrnn import _routes

    model, x, y = _model(impl, name)
    if mode == "train_on_batch":
        call = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        call = lambda: model.predict_on_batch(x)  # noqa: E731
    if impl == "numpy_function":
        call = _under_route("numpy_function", call)
    seen = len(_routes.notes())
    call()  # traces: the layers note their route
    return call, sorted({route for _, _, route, _ in _routes.notes()[seen:]})


@pytest.mark.parametrize("mode", ["train_on_batch", "predict_on_batch"])
@pytest.mark.parametrize("name", MODELS)
def test_model(run_paired, benchmark, name, mode):
    benchmark.group = f"model {name} | {mode}"
    calls = {impl: _model_call(impl, name, mode) for impl in MODEL_IMPLS}
    extra = run_paired({impl: call for impl, (call, _) in calls.items()},
                       cell=name, shape="", mode=mode, kind="model")
    for impl, (_, routes) in calls.items():
        extra[impl]["routes"] = routes  # the table flags a route other than the column's
