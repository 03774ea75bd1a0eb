"""fastrnn.RNN(cell) against keras.layers.RNN(cell) with the same weights.

Stock cells (LSTMCell, GRUCell both reset_after, SimpleRNNCell, fastrnn.MinGRUCell)
and StackedRNNCells of them run fastrnn's kernels: outputs, every returned state
and every gradient match Keras' generic loop, with masks, go_backwards,
zero_output_for_mask, initial states and seeded dropout. Other cells keep Keras'
loop, and the route report says so.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn
from fastrnn import _routes

pytestmark = pytest.mark.usefixtures("cpu_route")

B, T, I = 5, 7, 3
TOL = dict(rtol=2e-5, atol=2e-6)


def make_cell(kind, seed=None, **kwargs):
    if kind == "lstm":
        return keras.layers.LSTMCell(4, seed=seed, **kwargs)
    if kind == "gru":
        return keras.layers.GRUCell(4, seed=seed, **kwargs)
    if kind == "gru_reset_before":
        return keras.layers.GRUCell(4, reset_after=False, seed=seed, **kwargs)
    if kind == "simple_rnn":
        return keras.layers.SimpleRNNCell(4, seed=seed, **kwargs)
    if kind == "mingru":
        return fastrnn.MinGRUCell(4, seed=seed, **kwargs)
    if kind == "stacked":
        return keras.layers.StackedRNNCells([
            keras.layers.LSTMCell(4, seed=seed, **kwargs),
            keras.layers.GRUCell(5, seed=None if seed is None else seed + 1, **kwargs),
            keras.layers.SimpleRNNCell(3, seed=None if seed is None else seed + 2, **kwargs)])
    if kind == "list":   # RNN([cells]) builds a StackedRNNCells itself
        return [keras.layers.GRUCell(4, seed=seed, **kwargs),
                keras.layers.LSTMCell(3, seed=None if seed is None else seed + 1, **kwargs)]
    raise ValueError(kind)


KINDS = ["lstm", "gru", "gru_reset_before", "simple_rnn", "mingru", "stacked", "list"]


def pair(kind, seed=None, cell_kwargs=None, **layer_kwargs):
    cell_kwargs = cell_kwargs or {}
    ref = keras.layers.RNN(make_cell(kind, seed, **cell_kwargs), **layer_kwargs)
    fast = fastrnn.RNN(make_cell(kind, seed, **cell_kwargs), **layer_kwargs)
    ref.build((None, T, I))
    fast.build((None, T, I))
    rng = np.random.default_rng(1)
    ref.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                     for w in ref.get_weights()])
    fast.set_weights(ref.get_weights())
    return ref, fast


def mask_of():
    mask = np.ones((B, T), bool)
    mask[1, 4:] = False
    mask[3, :2] = False
    return tf.constant(mask)


def outputs_and_grads(layer, x, training=False, graph=False, **call):
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ys = layer(x, training=training, **call)
            flat = tf.nest.flatten(ys)
            loss = sum(tf.reduce_sum(y * y) for y in flat)
        return ys, tape.gradient(loss, [x] + layer.trainable_weights)

    return (tf.function(f) if graph else f)(x)


def assert_same(got, expected):
    assert tf.nest.map_structure(lambda t: tuple(t.shape), got) == \
        tf.nest.map_structure(lambda t: tuple(t.shape), expected)
    # test_parity's measure: the error relative to the largest element of the tensor
    # (a gradient summed over batch and time cancels in some elements).
    for g, e in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        err = np.abs(g - e).max(initial=0) / max(np.abs(e).max(initial=0), 1.0)
        assert err <= 2e-5, f"relative error {err:.2e}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("go_backwards,zero_output,masked",
                         [(False, False, False), (True, False, True), (False, True, True)])
@pytest.mark.parametrize("graph", [False, True])
def test_matches_keras_rnn(kind, go_backwards, zero_output, masked, graph):
    ref, fast = pair(kind, return_sequences=True, return_state=True, go_backwards=go_backwards,
                     zero_output_for_mask=zero_output)
    x = tf.constant(np.random.default_rng(2).standard_normal((B, T, I)).astype("float32"))
    call = {"mask": mask_of()} if masked else {}
    seen = len(_routes.notes())
    got, got_grads = outputs_and_grads(fast, x, graph=graph, **call)
    expected, expected_grads = outputs_and_grads(ref, x, graph=graph, **call)
    assert_same(got, expected)
    assert_same(got_grads, expected_grads)
    routes = {route for name, _, route, _ in _routes.notes()[seen:] if name == fast.name}
    assert routes and _routes.KERAS not in routes


@pytest.mark.parametrize("kind", ["lstm", "simple_rnn", "stacked"])
def test_initial_state(kind):
    ref, fast = pair(kind, return_state=True)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((B, T, I)).astype("float32"))

    def states(structure):
        return tf.nest.map_structure(
            lambda t: tf.constant(rng.standard_normal(t.shape).astype("float32")), structure)

    initial = states(ref.cell.get_initial_state(batch_size=B))
    assert_same(fast(x, initial_state=initial), ref(x, initial_state=initial))


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn", "mingru", "stacked"])
def test_seeded_input_dropout_gives_keras_numbers(kind):
    # implementation 2 (one input mask; LSTM/GRU with recurrent_dropout=0): the masks
    # are the cells' own, drawn by RNN.call as Keras' loop draws them.
    kwargs = {"dropout": 0.3}
    if kind == "simple_rnn":
        kwargs["recurrent_dropout"] = 0.3
    ref, fast = pair(kind, seed=7, cell_kwargs=kwargs, return_sequences=True)
    x = tf.constant(np.random.default_rng(4).standard_normal((B, T, I)).astype("float32"))
    got = outputs_and_grads(fast, x, training=True)
    expected = outputs_and_grads(ref, x, training=True)
    assert_same(got, expected)


class _AddCell(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state_size = 2

    def call(self, x, states):
        h = x[:, :2] + states[0]
        return h, [h]


class _DoubledLSTMCell(keras.layers.LSTMCell):
    def call(self, inputs, states, training=False):
        h, new_states = super().call(inputs, states, training=training)
        return 2 * h, new_states


@pytest.mark.parametrize("cell", [_AddCell, lambda: _DoubledLSTMCell(4),
                                  lambda: keras.layers.StackedRNNCells(
                                      [keras.layers.LSTMCell(4), _AddCell()])],
                         ids=["custom", "overridden-call", "stack-with-custom"])
def test_custom_cells_keep_keras_loop_and_say_so(cell):
    x = np.random.default_rng(5).standard_normal((B, T, I)).astype("float32")
    ref, fast = keras.layers.RNN(cell()), fastrnn.RNN(cell())
    ref.build((None, T, I))
    fast.build((None, T, I))
    fast.set_weights(ref.get_weights())
    seen = len(_routes.notes())
    with pytest.warns(UserWarning, match="not a stock Keras cell"):
        got = fast(x)
    np.testing.assert_allclose(got, ref(x), **TOL)
    reasons = [reason for name, _, route, reason in _routes.notes()[seen:]
               if name == fast.name and route == _routes.KERAS]
    assert reasons and "custom cells keep Keras' loop" in reasons[0]


def test_subclass_keeping_the_stock_step_runs_the_kernels():
    class Named(keras.layers.GRUCell):
        pass

    layer = fastrnn.RNN(Named(4))
    seen = len(_routes.notes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(np.zeros((2, T, I), np.float32))
    assert {r for n, _, r, _ in _routes.notes()[seen:] if n == layer.name} - {_routes.KERAS}


def test_fit_save_and_load(tmp_path):
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((33, T, I)).astype("float32"), rng.standard_normal((33, 1))
    models = []
    for rnn in (keras.layers.RNN, fastrnn.RNN):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((T, I)), rnn(make_cell("stacked")),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        models.append(model)
    models[1].set_weights(models[0].get_weights())
    losses = [m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
              for m in models]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    path = tmp_path / "m.keras"
    models[1].save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[0]) is fastrnn.RNN
    np.testing.assert_allclose(loaded.predict(x, verbose=0), models[1].predict(x, verbose=0),
                               rtol=1e-6)


def test_patch_gives_fastrnn_rnn_and_stock_files_load():
    with fastrnn.patched(cells=["rnn"]):
        layer = keras.layers.RNN(keras.layers.LSTMCell(3))
        assert type(layer) is fastrnn.RNN
        assert keras.layers.LSTM is not fastrnn.LSTM  # only the cells asked for
    assert keras.layers.RNN is not fastrnn.RNN
