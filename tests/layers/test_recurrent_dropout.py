"""Keras' per-gate dropout (implementation=1, which Keras 3 sets whenever
recurrent_dropout > 0) on the kernels: the same cached masks as Keras' cell, drawn
in Keras' order, so a seeded layer gives Keras' outputs and gradients, on both CPU
routes, with masks, go_backwards, Bidirectional and RNN(cell) stacks."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn
from fastrnn import _routes

B, T, I, H = 5, 7, 3, 4

CASES = {
    "lstm": (keras.layers.LSTM, fastrnn.LSTM, {}),
    "gru": (keras.layers.GRU, fastrnn.GRU, {}),
    "gru_reset_before": (keras.layers.GRU, fastrnn.GRU, {"reset_after": False}),
}
RATES = [dict(dropout=0.3, recurrent_dropout=0.4), dict(recurrent_dropout=0.5),
         dict(dropout=0.4, implementation=1)]


def assert_same(got, expected, tol=2e-5):
    for g, e in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        assert g.shape == e.shape
        err = np.abs(g - e).max(initial=0) / max(np.abs(e).max(initial=0), 1.0)
        assert err <= tol, f"relative error {err:.2e}"


def run(layer, x, mask=None, training=True, graph=False):
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, mask=mask, training=training)
            loss = sum(tf.reduce_sum(t * t) for t in tf.nest.flatten(y))
        return y, tape.gradient(loss, [x] + layer.trainable_weights)

    return (tf.function(f) if graph else f)(x)


def fast_routes(layer, seen):
    return {route for name, _, route, _ in _routes.notes()[seen:] if name == layer.name}


@pytest.mark.parametrize("rates", RATES, ids=["both", "recurrent", "input_impl1"])
@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("masked,go_backwards", [(False, False), (True, False), (True, True)])
def test_seeded_layer_gives_keras_numbers_on_the_kernels(cpu_route, kind, rates, masked,
                                                         go_backwards):
    keras_cls, fast_cls, extra = CASES[kind]
    config = dict(units=H, seed=3, return_sequences=True, return_state=True,
                  go_backwards=go_backwards, **extra, **rates)
    # use_cudnn=False: Keras' own inner_loop fails on implementation=1 input dropout
    # without recurrent dropout (it broadcasts the list of per-gate masks as one mask);
    # its generic loop, which use_cudnn=False runs, is the computation to match.
    ref, fast = keras_cls(**config, use_cudnn=False), fast_cls(**config)
    ref.build((None, T, I))
    fast.build((None, T, I))
    fast.set_weights(ref.get_weights())
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((B, T, I)).astype("float32"))
    mask = None
    if masked:
        m = rng.random((B, T)) > 0.3
        m[0] = False
        m[1, :2] = False
        mask = tf.constant(m)
    seen = len(_routes.notes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        got = run(fast, x, mask)
    assert _routes.KERAS not in fast_routes(fast, seen), "ran Keras' loop"
    expected = run(ref, x, mask)
    assert_same(got, expected)
    # Inference applies no dropout: the same as Keras' inference.
    assert_same(run(fast, x, mask, training=False), run(ref, x, mask, training=False))


@pytest.mark.parametrize("kind", list(CASES))
def test_traced_step_with_unknown_batch(kind):
    # model.fit traces with batch None: the masks split with the batch over the ops.
    keras_cls, fast_cls, extra = CASES[kind]
    config = dict(units=H, seed=5, dropout=0.2, recurrent_dropout=0.3, **extra)
    ref, fast = keras_cls(**config), fast_cls(**config)
    ref.build((None, T, I))
    fast.build((None, T, I))
    fast.set_weights(ref.get_weights())
    x = tf.constant(np.random.default_rng(2).standard_normal((40, T, I)).astype("float32"))
    spec = [tf.TensorSpec([None, T, I], tf.float32)]
    seen = len(_routes.notes())
    got = tf.function(lambda x: run(fast, x), input_signature=spec)(x)
    assert _routes.KERAS not in fast_routes(fast, seen)
    expected = tf.function(lambda x: run(ref, x), input_signature=spec)(x)
    assert_same(got, expected)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_mixed_precision(kind):
    keras_cls, fast_cls, extra = CASES[kind]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config = dict(units=H, seed=6, dropout=0.2, recurrent_dropout=0.3,
                      return_sequences=True, **extra)
        ref, fast = keras_cls(**config, use_cudnn=False), fast_cls(**config)
        ref.build((None, T, I))
        fast.build((None, T, I))
        fast.set_weights(ref.get_weights())
        x = tf.constant(np.random.default_rng(7).standard_normal((B, T, I)).astype("float32"))
        seen = len(_routes.notes())
        got, expected = fast(x, training=True), ref(x, training=True)
        assert got.dtype == expected.dtype == tf.float16
        assert _routes.KERAS not in fast_routes(fast, seen)
        # float16 outputs below 1 in magnitude: 4 of their ulps (2**-11), the bound
        # test_models' policy test uses; measured at most 2**-10 over 12 seeded cases.
        assert_same(got, expected, tol=4 * 2.0 ** -11)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bidirectional_sentiment_fit_matches_keras():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 30, (24, 10))
    for row, n in zip(x, rng.integers(1, 11, 24)):
        row[n:] = 0
    y = rng.integers(0, 2, (24, 1)).astype("float32")
    losses = []
    seen = len(_routes.notes())
    for cls in (keras.layers.LSTM, fastrnn.LSTM):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((None,), dtype="int32"), keras.layers.Embedding(30, 6, mask_zero=True),
            keras.layers.Bidirectional(cls(5, dropout=0.2, recurrent_dropout=0.2, seed=4)),
            keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        losses.append(model.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                                verbose=0).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    routes = {route for _, _, route, _ in _routes.notes()[seen:]}
    assert routes and _routes.KERAS not in routes   # both directions ran the kernels


def test_rnn_of_stacked_cells_with_recurrent_dropout():
    def cells():
        return keras.layers.StackedRNNCells([
            keras.layers.LSTMCell(H, dropout=0.2, recurrent_dropout=0.3, seed=1),
            keras.layers.GRUCell(3, recurrent_dropout=0.4, reset_after=False, seed=2)])

    ref = keras.layers.RNN(cells(), return_sequences=True, go_backwards=True)
    fast = fastrnn.RNN(cells(), return_sequences=True, go_backwards=True)
    ref.build((None, T, I))
    fast.build((None, T, I))
    fast.set_weights(ref.get_weights())
    x = tf.constant(np.random.default_rng(4).standard_normal((B, T, I)).astype("float32"))
    seen = len(_routes.notes())
    got = run(fast, x)
    assert _routes.KERAS not in fast_routes(fast, seen)
    assert_same(got, run(ref, x))
