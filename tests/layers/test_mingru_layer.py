"""fastrnn.MinGRU against a minGRU written directly in keras.ops, with copied weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops as kops

import fastrnn

# Every test here runs on both CPU routes: the native ops and tf.numpy_function.
pytestmark = pytest.mark.usefixtures("cpu_route")

B, T, I, H = 3, 9, 4, 5


class KerasOpsMinGRU(keras.layers.Layer):
    """The plain formulation: a Python loop over time in keras.ops, Keras' mask rules."""

    def __init__(self, units, go_backwards=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.go_backwards = units, go_backwards

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 2 * self.units), name="kernel")
        self.bias = self.add_weight(shape=(2 * self.units,), name="bias")

    def call(self, x, mask=None, initial_state=None):
        steps = range(x.shape[1])[::-1] if self.go_backwards else range(x.shape[1])
        h = kops.zeros((x.shape[0], self.units)) if initial_state is None else initial_state
        out, outputs = kops.zeros_like(h), []
        for t in steps:
            pre = kops.matmul(x[:, t], self.kernel) + self.bias
            z = kops.sigmoid(pre[:, :self.units])
            new = (1.0 - z) * h + z * pre[:, self.units:]
            keep = kops.ones((x.shape[0], 1), "bool") if mask is None else mask[:, t, None]
            h = kops.where(keep, new, h)
            out = kops.where(keep, new, out)
            outputs.append(out)
        return kops.stack(outputs, axis=1), h


def pair(**config):
    ref = KerasOpsMinGRU(H, go_backwards=config.get("go_backwards", False))
    fast = fastrnn.MinGRU(H, return_sequences=True, return_state=True, **config)
    ref.build((None, None, I))
    fast.build((None, None, I))
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.5 for w in ref.weights]
    ref.set_weights(weights)
    fast.set_weights(weights)
    return ref, fast


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1.0)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_outputs_and_gradients_match_keras_ops(graph, go_backwards, use_mask):
    ref, fast = pair(go_backwards=go_backwards)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((B, T, I)).astype("float32"))
    h0 = tf.constant(rng.standard_normal((B, H)).astype("float32"))
    mask = None
    if use_mask:
        m = rng.random((B, T)) > 0.3
        m[0], m[1, :2] = False, False
        mask = tf.constant(m)
    w_out = tf.constant(rng.standard_normal((B, T, H)).astype("float32"))
    w_h = tf.constant(rng.standard_normal((B, H)).astype("float32"))

    def run(layer, is_ref):
        def f(x, h0):
            with tf.GradientTape() as tape:
                tape.watch([x, h0])
                if is_ref:
                    out, h = layer(x, mask=mask, initial_state=h0)
                else:
                    out, h = layer(x, mask=mask, initial_state=[h0])
                loss = tf.reduce_sum(out * w_out) + tf.reduce_sum(h * w_h)
            return out, h, tape.gradient(loss, [x, h0] + layer.trainable_weights)

        return (tf.function(f) if graph else f)(x, h0)

    r_out, r_h, r_g = run(ref, True)
    f_out, f_h, f_g = run(fast, False)
    assert relative(f_out, r_out) < 2e-5 and relative(f_h, r_h) < 2e-5
    for name, a, b in zip(["x", "h0", "kernel", "bias"], f_g, r_g):
        assert relative(a, b) < 2e-5, name


def test_fast_path_equals_the_cells_own_loop():
    # The kernels and MinGRUCell (the export path) agree, dropout included (same cached mask).
    layer = fastrnn.MinGRU(6, dropout=0.3, seed=5, return_sequences=True)
    x = np.random.default_rng(2).standard_normal((4, 7, 3)).astype("float32")
    layer.build((None, None, 3))
    sequences = tf.constant(x)
    fast = layer(x, training=False)
    exact = layer._keras_loop(sequences, [tf.zeros((4, 6))], None, False)[1]
    assert relative(fast, exact) < 2e-5
    # Training: one mask drawn, then reused by both paths.
    layer._maybe_config_dropout_masks(layer.cell, sequences[:, 0, :], [tf.zeros((4, 6))])
    exact = layer._keras_loop(sequences, [tf.zeros((4, 6))], None, True)[1]
    fast = layer.inner_loop(sequences, [tf.zeros((4, 6))], None, True)[1]
    assert relative(fast, exact) < 2e-5
    assert relative(fast, layer(x, training=False)) > 1e-3  # dropout did something


def test_bidirectional_embedding_save_and_load(tmp_path):
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              keras.layers.Embedding(30, 8, mask_zero=True),
                              keras.layers.Bidirectional(fastrnn.MinGRU(6, return_sequences=True)),
                              fastrnn.MinGRU(4), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).integers(1, 30, (5, 9))
    x[:, 6:] = 0
    y = np.random.default_rng(1).integers(0, 3, (5,))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    model.save_weights(tmp_path / "w.weights.h5")
    assert [w.shape for w in model.layers[1].forward_layer.weights] == [(8, 12), (12,)]


def test_export_and_stateful(tmp_path):
    model = keras.Sequential([keras.Input((None, 3)), fastrnn.MinGRU(4), keras.layers.Dense(1)])
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float32")
    model.export(tmp_path / "exported", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    layer = fastrnn.MinGRU(4, stateful=True)
    layer.build((2, None, 3))
    full = fastrnn.MinGRU(4)
    full.build((2, None, 3))
    full.set_weights(layer.get_weights())
    layer(x[:, :3])
    assert relative(layer(x[:, 3:]), full(x)) < 2e-5
    layer.reset_state()
    assert np.all(np.asarray(layer.states[0]) == 0)


def test_bad_input():
    layer = fastrnn.MinGRU(5)
    layer(np.ones((2, 4, 3), "float32"))
    with pytest.raises(ValueError, match="4 features but the layer was built for 3"):
        layer(np.ones((2, 4, 4), "float32"))
    with pytest.raises(ValueError, match=r"mask must have shape \[batch, time\]"):
        layer(np.ones((2, 4, 3), "float32"), mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="units must be a positive integer"):
        fastrnn.MinGRU(0)


def test_language_model_loss_curve_matches_the_tf_loop_model():
    # The benchmark's workload, small: same weights, same batches, same losses.
    from bench.lm import corpus, paired_models

    x, y, vocab = corpus(seq_len=16, vocab_size=300, max_sequences=96)
    fast, loop = paired_models(units=32, vocab_size=vocab)
    curves = [[float(net.train_on_batch(x[i:i + 32], y[i:i + 32])) for i in range(0, 96, 32)]
              for net in (fast, loop)]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)
    assert curves[0][-1] < curves[0][0]
