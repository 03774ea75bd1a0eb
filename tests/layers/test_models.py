"""fastrnn layers inside real Keras models: training, saving, stateful, Bidirectional, policies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn

PAIRS = {"gru": (keras.layers.GRU, fastrnn.GRU), "simple_rnn": (keras.layers.SimpleRNN, fastrnn.SimpleRNN),
         "lstm": (keras.layers.LSTM, fastrnn.LSTM)}


def assert_close(a, b, tol=2e-5):
    """float32 agreement with Keras: max|a - b| / max(max|b|, 1) <= tol.

    Keras sums over steps one step at a time and fastrnn in one GEMM, so single
    small elements can differ by a few float32 ulps of the array's scale.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def sentiment_model(rnn_cls, vocab=50, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(vocab, 8, mask_zero=True),
        keras.layers.Bidirectional(rnn_cls(6)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


def padded_batches(seed=0, batch=8, length=12, vocab=50):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (batch * 3, length))
    lengths = rng.integers(1, length + 1, batch * 3)
    for row, n in zip(x, lengths):
        row[n:] = 0  # right padding, masked by Embedding(mask_zero=True)
    y = rng.integers(0, 2, (batch * 3, 1)).astype("float32")
    return x, y


@pytest.mark.parametrize("cell", list(PAIRS))
def test_bidirectional_sentiment_model_trains_like_keras(cell):
    keras_cls, fast_cls = PAIRS[cell]
    x, y = padded_batches()
    ref = sentiment_model(keras_cls)
    fast = sentiment_model(fast_cls)
    fast.set_weights(ref.get_weights())
    for model in (ref, fast):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(fast.get_weights(), ref.get_weights()):
        assert_close(a, b)
    assert_close(fast.predict(x, verbose=0), ref.predict(x, verbose=0))
    assert abs(fast.evaluate(x, y, verbose=0) - ref.evaluate(x, y, verbose=0)) < 1e-5


@pytest.mark.parametrize("cell", list(PAIRS))
def test_time_distributed_forecaster_with_unknown_dims(cell):
    keras_cls, fast_cls = PAIRS[cell]

    def build(rnn_cls):
        keras.utils.set_random_seed(1)
        inp = keras.Input((None, 3))  # unknown batch and time
        h = rnn_cls(7, return_sequences=True)(inp)
        h = fast_cls(4, return_sequences=True)(h) if rnn_cls is fast_cls else keras_cls(4, return_sequences=True)(h)
        out = keras.layers.TimeDistributed(keras.layers.Dense(1))(h)
        return keras.Model(inp, out)

    ref, fast = build(keras_cls), build(fast_cls)
    fast.set_weights(ref.get_weights())
    rng = np.random.default_rng(0)
    for time in (5, 11):
        x = rng.standard_normal((4, time, 3)).astype("float32")
        assert_close(fast.predict(x, verbose=0), ref.predict(x, verbose=0))
    for model in (ref, fast):
        model.compile(optimizer="adam", loss="mse")
        model.train_on_batch(x, np.ones((4, 11, 1), "float32"))
    for a, b in zip(fast.get_weights(), ref.get_weights()):
        assert_close(a, b)


@pytest.mark.parametrize("cell", list(PAIRS))
def test_stateful_and_reset_state(cell):
    keras_cls, fast_cls = PAIRS[cell]
    layers = [cls(5, stateful=True, return_sequences=True) for cls in (keras_cls, fast_cls)]
    for layer in layers:
        layer.build((2, None, 3))
    layers[1].set_weights(layers[0].get_weights())
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((2, 4, 3)).astype("float32") for _ in range(3)]
    for chunk in chunks:
        outs = [layer(chunk) for layer in layers]
        assert_close(outs[1], outs[0])
    assert_close(layers[1].states[0], layers[0].states[0])
    assert np.abs(np.asarray(layers[1].states[0])).sum() > 0
    for layer in layers:
        layer.reset_state()
    assert np.all(np.asarray(layers[1].states[0]) == 0)
    outs = [layer(chunks[0]) for layer in layers]
    assert_close(outs[1], outs[0])


@pytest.mark.parametrize("cell", list(PAIRS))
@pytest.mark.parametrize("rates", [dict(dropout=0.4), dict(recurrent_dropout=0.3),
                                   dict(dropout=0.2, recurrent_dropout=0.5)])
def test_dropout_matches_keras_with_the_same_seed(cell, rates):
    # Same seed, same cached masks: the same numbers as Keras' step loop, outputs and
    # gradients (recurrent_dropout: Keras 3's implementation=1, one mask per gate).
    keras_cls, fast_cls = PAIRS[cell]
    layers = [cls(6, seed=7, return_sequences=True, **rates) for cls in (keras_cls, fast_cls)]
    for layer in layers:
        layer.build((3, None, 5))
    layers[1].set_weights(layers[0].get_weights())
    x = np.random.default_rng(0).standard_normal((3, 8, 5)).astype("float32")
    train, grads = [], []
    for layer in layers:
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        train.append(np.asarray(y))
        grads.append(tape.gradient(loss, layer.trainable_weights))
    assert_close(train[1], train[0])
    for a, b in zip(grads[1], grads[0]):
        assert_close(a, b)
    infer = [np.asarray(layer(x, training=False)) for layer in layers]
    assert_close(infer[1], infer[0])
    if cell == "simple_rnn" or "dropout" in rates:
        assert not np.allclose(train[1], infer[1]), "dropout had no effect in training"


def test_dropout_statistics():
    # A unit's input is dropped with probability `rate` (kept inputs scaled by 1/(1-rate)):
    # with a linear SimpleRNN, identity kernel and zero recurrence the output is the
    # dropped input itself, so the kept fraction is measurable.
    layer = fastrnn.SimpleRNN(200, activation="linear", dropout=0.3, seed=3,
                              kernel_initializer="identity", recurrent_initializer="zeros",
                              return_sequences=True)
    x = np.ones((50, 4, 200), "float32")
    y = np.asarray(layer(x, training=True))
    kept = y[:, 0] != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[:, 0][kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(y[:, 0] != 0, y[:, 3] != 0)  # one mask for all steps


@pytest.mark.parametrize("cell", list(PAIRS))
def test_weights_files_move_both_ways(cell, tmp_path):
    keras_cls, fast_cls = PAIRS[cell]
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float32")

    def model(cls):
        return keras.Sequential([keras.Input((None, 3)), cls(5, return_sequences=True),
                                 keras.layers.Dense(2)])

    ref = model(keras_cls)
    ref.save_weights(tmp_path / "ref.weights.h5")
    fast = model(fast_cls)
    fast.load_weights(tmp_path / "ref.weights.h5")
    assert_close(fast.predict(x, verbose=0), ref.predict(x, verbose=0))
    fast.save_weights(tmp_path / "fast.weights.h5")
    back = model(keras_cls)
    back.load_weights(tmp_path / "fast.weights.h5")
    for a, b in zip(back.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", list(PAIRS))
def test_keras_model_file_round_trip(cell, tmp_path):
    _, fast_cls = PAIRS[cell]
    model = keras.Sequential([keras.Input((None, 3)),
                              keras.layers.Bidirectional(fast_cls(5, return_sequences=True)),
                              fast_cls(4, go_backwards=True), keras.layers.Dense(2)])
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[1], fast_cls)
    assert isinstance(loaded.layers[0].forward_layer, fast_cls)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("cell", list(PAIRS))
def test_mixed_float16_policy(cell):
    keras_cls, fast_cls = PAIRS[cell]
    layers = [cls(5, return_sequences=True, dtype="mixed_float16") for cls in (keras_cls, fast_cls)]
    for layer in layers:
        layer.build((2, None, 3))
    layers[1].set_weights(layers[0].get_weights())
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float16")
    outs = [layer(x) for layer in layers]
    assert outs[1].dtype == outs[0].dtype == tf.float16
    # Keras computes in float16 step by step; fastrnn in float32, rounded once at the end.
    # |outputs| <= 1, where a float16 ulp is at most 2**-11 = 4.9e-4; the worst measured
    # over 10 seeds and all three cells was 9.8e-4 (2 ulps), so allow 4 ulps.
    np.testing.assert_allclose(np.asarray(outs[1], np.float32), np.asarray(outs[0], np.float32),
                               rtol=0, atol=4 * 2.0 ** -11)


@pytest.mark.parametrize("cell", list(PAIRS))
def test_bad_input_is_a_clear_error(cell):
    _, fast_cls = PAIRS[cell]
    layer = fast_cls(5)
    x = np.ones((2, 6, 3), "float32")
    layer(x)
    with pytest.raises(ValueError, match="ndim=3"):
        layer(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="4 features but the layer was built for 3"):
        layer(np.ones((2, 6, 4), "float32"))
    with pytest.raises(ValueError, match=r"initial state must have shape \[batch, 5\]"):
        layer(x, initial_state=[np.ones((2, 4), "float32")])
    with pytest.raises(ValueError, match=r"mask must have shape \[batch, time\]"):
        layer(x, mask=np.ones((2, 5), bool))

    @tf.function
    def graph(x, mask):
        return layer(x, mask=mask)

    with pytest.raises(ValueError, match=r"mask must have shape \[batch, time\]"):
        graph(x, np.ones((2, 5), bool))


@pytest.mark.parametrize("cell", list(PAIRS))
def test_bool_features_are_cast_as_keras_casts_them_and_strings_rejected(cell):
    keras_cls, fast_cls = PAIRS[cell]
    # Integer and bool features are cast to the compute dtype, as Keras' cell's first
    # product promotes them: the same outputs as Keras' layer with the same weights.
    x = np.random.default_rng(0).random((2, 6, 3)) > 0.5
    ref, fast = keras_cls(5), fast_cls(5)
    expected = ref(x)
    fast(x)
    fast.set_weights(ref.get_weights())
    np.testing.assert_allclose(fast(x), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(fast(x), fast(x.astype("float32")), rtol=0, atol=0)
    with pytest.raises(ValueError, match="inputs must be floating point, integer or bool "
                                         "features, got dtype string"):
        fast_cls(5)(tf.fill((2, 6, 3), "a"))


EXPORTED_RUNNER = """
import sys
sys.modules["fastrnn"] = None  # this process must not be able to import fastrnn
import numpy as np, tensorflow as tf
x = np.load(sys.argv[2])
loaded = tf.saved_model.load(sys.argv[1])  # keep a reference: it owns the variables
served = loaded.serve(tf.constant(x))
np.save(sys.argv[3], served.numpy())
"""


@pytest.mark.parametrize("cell", list(PAIRS))
def test_export_runs_without_fastrnn(cell, tmp_path):
    import subprocess
    import sys

    _, fast_cls = PAIRS[cell]
    model = keras.Sequential([keras.Input((None, 3)),
                              keras.layers.Bidirectional(fast_cls(5, return_sequences=True)),
                              fast_cls(4), keras.layers.Dense(2)])
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float32")
    model.export(tmp_path / "exported", verbose=False)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "serve.py"
    script.write_text(EXPORTED_RUNNER)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "exported"),
                             str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0))


MIRRORED_RUNNER = """
import sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, fastrnn
cls = getattr(fastrnn, sys.argv[1])
if sys.argv[2:] == ["split"]:  # every call split into parts, as large calls are
    from fastrnn.kernels.batch import parts as _parts
    _parts.SMALL_WORK, _parts.MIN_ROWS = 0, 1
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 7, 3)).astype("float32")
y = rng.standard_normal((16, 1)).astype("float32")

def train(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((None, 3)), cls(6), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model.get_weights()

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
single = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
both = train(mirrored)
for a, b in zip(both, single):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("ok")
"""


@pytest.mark.parametrize("cell,split", [("GRU", False), ("SimpleRNN", False), ("LSTM", False),
                                        ("LSTM", True)])
def test_mirrored_strategy_matches_one_device(cell, split, tmp_path):
    # split: both replicas split their calls at once, sharing the parts' threads.
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_RUNNER)
    result = subprocess.run([sys.executable, str(script), cell] + (["split"] if split else []),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
