"""Drop-in gaps (issue 18): what keras.layers.SimpleRNN/GRU/LSTM accept, fastrnn's accept.

- jit_compile: XLA cannot compile the kernels' ops, so the layers declare
  supports_jit = False (as Keras' own cuDNN GRU/LSTM do) and Keras trains without XLA.
- Integer features are cast to the compute dtype, as Keras' cell product promotes them.
- An empty batch (a tf.distribute replica's share of an uneven last batch) gives empty
  outputs and zero weight gradients, forward and backward, eager and graph.

Each against Keras with the same weights; minGRU against Keras' own generic RNN loop
over fastrnn.MinGRUCell (pure keras.ops).
"""

import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.trainers.trainer import model_supports_jit

import fastrnn

T, I, H = 5, 3, 4
CELLS = ["GRU", "SimpleRNN", "LSTM", "MinGRU"]


def keras_layer(cell, units, **config):
    if cell == "MinGRU":
        return keras.layers.RNN(fastrnn.MinGRUCell(units), **config)
    return getattr(keras.layers, cell)(units, **config)


def assert_close(a, b, tol=2e-5):
    """float32 agreement with Keras: max|a - b| / max(max|b|, 1) <= tol (as test_models)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def twin_models(cell, input_dtype="float32"):
    """(keras model, fastrnn model) with the same initial weights: the cell, then the
    cell inside Bidirectional."""
    models = []
    for make in (lambda **c: keras_layer(cell, H, **c), lambda **c: getattr(fastrnn, cell)(H, **c)):
        models.append(keras.Sequential([
            keras.Input((None, I), dtype=input_dtype), make(return_sequences=True),
            keras.layers.Bidirectional(make(return_sequences=True)),
            keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)]))
    ref, fast = models
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.5 for w in ref.get_weights()]
    ref.set_weights(weights)
    fast.set_weights(weights)
    return ref, fast, weights


def data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, T, I)).astype("float32"),
            rng.standard_normal((n, 1)).astype("float32"))


# 1. XLA -----------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_jit_compile_true_trains_as_keras_does(cell):
    ref, fast, initial = twin_models(cell)
    assert not model_supports_jit(fast)  # what Keras reads, for "auto" and for True
    x, y = data()
    for model in (ref, fast):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                          jit_compile=model is fast)
        if model is fast:
            assert model.jit_compile is False
            assert any("doesn't support `jit_compile=True`" in str(w.message) for w in caught)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b, w in zip(fast.get_weights(), ref.get_weights(), initial):
        assert_close(a, b)
        assert not np.allclose(b, w), "training did not change every weight"


def test_keras_resolves_auto_jit_to_false_for_fastrnn_models():
    # On a GPU machine Keras turns jit_compile="auto" into True unless a layer says no.
    plain = keras.Sequential([keras.Input((T, I)), keras.layers.Flatten(), keras.layers.Dense(1)])
    assert model_supports_jit(plain)  # the check can say yes
    for cell in CELLS:
        for config in ({}, dict(return_state=True), dict(activation="relu")):
            layer = getattr(fastrnn, cell)(H, **config) if cell != "MinGRU" or not config else (
                fastrnn.MinGRU(H, go_backwards=True))
            assert layer.supports_jit is False
            # a copy made from the config (Bidirectional's backward layer) says so too
            assert type(layer).from_config(layer.get_config()).supports_jit is False


# 2. Integer features ----------------------------------------------------------------


@pytest.mark.parametrize("cell,dtype", [("GRU", "int64"), ("SimpleRNN", "int32"),
                                        ("LSTM", "uint8"), ("MinGRU", "int16")])
def test_integer_features_match_keras(cell, dtype):
    ref, fast = keras_layer(cell, H, return_sequences=True), getattr(fastrnn, cell)(
        H, return_sequences=True)
    x = (np.arange(2 * T * I).reshape(2, T, I) % 7).astype(dtype)
    ref.build((None, None, I))
    fast.build((None, None, I))
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.3 for w in ref.weights]
    ref.set_weights(weights)
    fast.set_weights(weights)
    results = []
    for layer in (ref, fast):
        with tf.GradientTape() as tape:
            out = layer(tf.constant(x))
            loss = tf.reduce_sum(out * tf.range(1.0, H + 1.0))
        assert out.dtype == tf.float32
        results.append([out] + tape.gradient(loss, layer.trainable_variables))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b)
    assert np.abs(results[0][0]).max() > 0.1


def test_integer_features_in_a_model_fit():
    ref, fast, _ = twin_models("GRU", input_dtype="int32")
    rng = np.random.default_rng(3)
    x, y = rng.integers(-3, 4, (8, T, I)).astype("int32"), rng.standard_normal((8, 1))
    for model in (ref, fast):
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(fast.get_weights(), ref.get_weights()):
        assert_close(a, b)


def test_mingru_casts_bool_features_and_rejects_strings():
    layer = fastrnn.MinGRU(H)
    x = np.random.default_rng(0).random((2, T, I)) > 0.5
    np.testing.assert_array_equal(layer(x), layer(x.astype("float32")))
    with pytest.raises(ValueError, match="inputs must be floating point, integer or bool "
                                         "features, got dtype string"):
        fastrnn.MinGRU(H)(tf.fill((2, T, I), "a"))


# 3. Empty batches -------------------------------------------------------------------


def empty_pair(cell, bidirectional=False, **config):
    ref, fast = keras_layer(cell, H, **config), getattr(fastrnn, cell)(H, **config)
    if bidirectional:
        ref, fast = keras.layers.Bidirectional(ref), keras.layers.Bidirectional(fast)
    ref.build((None, T, I))
    fast.build((None, T, I))
    fast.set_weights(ref.get_weights())
    return ref, fast


def outputs_and_gradients(layer, x, graph, mask=None):
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, mask=mask) if mask is not None else layer(x)
            out = tf.nest.flatten(out)
            loss = sum(tf.reduce_sum(o) for o in out)
        return out, tape.gradient(loss, [x] + layer.trainable_variables)

    if graph:  # the batch unknown while tracing
        f = tf.function(f, input_signature=[tf.TensorSpec((None, T, I), tf.float32)])
    return f(x)


CONFIGS = [dict(), dict(return_sequences=True, return_state=True, go_backwards=True)]


@pytest.mark.parametrize("config", CONFIGS, ids=["last", "sequences_state_backwards"])
@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_matches_keras(cell, config):
    ref, fast = empty_pair(cell, **config)
    x = tf.zeros((0, T, I))
    # Keras' reference in a tf.function: Keras' own LSTM fails on an empty batch in
    # eager mode (TF 2.21: "BiasAdd ... Biases must be 1D: [0,16]"), not in a graph.
    ref_out, ref_grads = outputs_and_gradients(ref, x, True)
    for graph in (False, True):
        out, grads = outputs_and_gradients(fast, x, graph)
        assert [tuple(o.shape) for o in out] == [tuple(o.shape) for o in ref_out]
        assert all(o.shape[0] == 0 for o in out)
        assert len(grads) == len(ref_grads)
        for g, r, w in zip(grads, ref_grads, [x] + fast.trainable_variables):
            assert g is not None and tuple(g.shape) == tuple(w.shape)
            assert_close(g, np.zeros(w.shape) if r is None else r)
            assert not np.any(g.numpy())


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_bidirectional_with_mask(cell):
    _, fast = empty_pair(cell, bidirectional=True, return_sequences=True)
    out, grads = outputs_and_gradients(fast, tf.zeros((0, T, I)), False, tf.zeros((0, T), tf.bool))
    assert tuple(out[0].shape) == (0, T, 2 * H)  # as Keras' (in a graph, see above)
    for g, w in zip(grads[1:], fast.trainable_variables):
        assert tuple(g.shape) == tuple(w.shape) and not np.any(g.numpy())


@pytest.mark.parametrize("cell", CELLS)
def test_empty_then_full_batch_in_one_graph(cell):
    # One traced function (unknown batch) called with an empty batch, then a full one:
    # the empty call must leave nothing behind that the next call trips on.
    ref, fast = empty_pair(cell, return_sequences=True)
    x = tf.constant(np.random.default_rng(2).standard_normal((3, T, I)).astype("float32"))
    fns = {id(layer): tf.function(lambda v, layer=layer: outputs_and_gradients(layer, v, False),
                                  input_signature=[tf.TensorSpec((None, T, I), tf.float32)])
           for layer in (ref, fast)}
    for batch in (x[:0], x):
        (ref_out, ref_grads), (out, grads) = (fns[id(layer)](batch) for layer in (ref, fast))
        for a, b in zip(out + grads, ref_out + ref_grads):
            assert_close(a, b)


MIRRORED_RUNNER = """
import sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, fastrnn

# 9 samples in global batches of 4 over 2 replicas: the last batch (1 sample) leaves
# one replica an empty batch.
rng = np.random.default_rng(0)
x = rng.standard_normal((9, 5, 3)).astype("float32")
y = rng.standard_normal((9, 1)).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
last = list(strategy.experimental_distribute_dataset(dataset))[-1][0]
rows = sorted(int(t.shape[0]) for t in strategy.experimental_local_results(last))
assert rows == [0, 1], rows

def model(layers, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((None, 3))] + layers + [keras.layers.Dense(1)])

def rnns(ns):  # a recurrent cell and minGRU (each cell's empty batch: the tests beside)
    return [ns.GRU(4, return_sequences=True), ns.MinGRU(4)]

class Keras:  # Keras' own layers; minGRU as Keras' generic loop over its cell
    GRU = keras.layers.GRU
    MinGRU = staticmethod(lambda units, **kw: keras.layers.RNN(fastrnn.MinGRUCell(units), **kw))

weights = None
trained = []
for ns in (Keras, fastrnn):
    with strategy.scope():
        m = model(rnns(ns), 0)
        if weights is None:
            weights = [w * 0 + np.random.default_rng(1).standard_normal(w.shape).astype("float32")
                       * 0.5 for w in m.get_weights()]
        m.set_weights(weights)
        m.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = m.fit(dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])), history.history
    trained.append(m.get_weights())
for a, b, w in zip(trained[1], trained[0], weights):
    assert not np.allclose(b, w), "Keras' model did not train"
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1.0)
    assert err <= 2e-5, err
print("ok")
"""


def test_mirrored_strategy_with_an_empty_replica_batch_matches_keras(tmp_path):
    script = tmp_path / "mirrored_empty.py"
    script.write_text(MIRRORED_RUNNER)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:] + result.stderr[-3000:])
