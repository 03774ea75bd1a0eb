"""Large calls split the batch into one part per core (fastrnn.ops.recurrence).

Forced here onto tiny inputs (no work threshold, one row per part at least), the
split must give the same outputs and final states as one part, and the same
gradients up to the order in which the parts' weight gradients are added.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import record as tf_record

import fastrnn
from fastrnn import ops
from fastrnn.kernels.blas import microgemm as _microgemm
from fastrnn.kernels.batch import parts as _parts
from fastrnn.ops import _threads, recurrence

from test_parity import compare, random_mask

B, T, I, H = 5, 7, 3, 4


# Both CPU routes split: the numpy_function route on threads of its own
# (ops/_threads.run_parts, forward and backward), the native route in the graph
# (one op per part, planned once per call by native.plan_parts).
pytestmark = pytest.mark.usefixtures("cpu_route")


@pytest.fixture
def split_into(monkeypatch):
    """force(parts) -> the list of part counts the calls then used."""
    from fastrnn.ops import native

    used = []
    run_parts = _threads.run_parts
    plan_parts = native.plan_parts

    def spy(fn, n):
        used.append(n)
        return run_parts(fn, n)

    def plan_spy(*args):
        parts = plan_parts(*args)
        used.append(parts)
        return parts


    def force(parts):
        monkeypatch.setattr(_parts, "SMALL_WORK", 0)
        monkeypatch.setattr(_parts, "MIN_ROWS", 1)
        monkeypatch.setattr(_threads, "MAX_PARTS", parts)
        monkeypatch.setattr(_threads, "_FORCED_THREADS", None)
        monkeypatch.setattr(_threads, "run_parts", spy)
        monkeypatch.setattr(native, "plan_parts", plan_spy)
        return used
    return force


def test_plan(monkeypatch):
    # Small calls: one part, one BLAS thread. Large: one part per core with at
    # least MIN_ROWS rows, one BLAS thread each; too few rows: one thread for the
    # recurrent cells where the packed per-step product runs (kernels.blas.microgemm),
    # else (minGRU, or without it) the library's threads.
    small = np.empty((4, 3, 2), np.float32)
    assert _threads.plan(small, 12, 2) == (1, 1)
    large = np.empty((64, 100, 128), np.float32)
    assert _threads.plan(large, 768, 2) == (2, 1)
    assert _threads.plan(large, 768, 16) == (64 // _parts.MIN_ROWS, 1)
    few = large[:_parts.MIN_ROWS + 1]
    assert _threads.plan(few, 768, 2, recurrent=False) == (1, None)
    monkeypatch.setattr(_microgemm, "ENABLED", True)
    assert _threads.plan(few, 768, 2) == (1, 1)
    monkeypatch.setattr(_microgemm, "ENABLED", False)
    assert _threads.plan(few, 768, 2) == (1, None)
    assert _threads.plan(large, 768, 1) == (1, None)
    assert [(s.start, s.stop) for s in _parts.slices(5, 3)] == [(0, 1), (1, 3), (3, 5)]


@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn"])
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("graph", [False, True])
def test_split_layers_match_keras(split_into, cell, parts, graph):
    # test_parity's batch of 3: with 3 parts, one row each (one of them masked throughout).
    used = split_into(parts)
    compare(cell, graph=graph, mask=random_mask(3), initial_state=True, return_sequences=True,
            return_state=True, go_backwards=parts == 3)
    assert used and set(used) == {parts}  # forward and backward both split


def _op_inputs(cell, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    gates = {"gru": 3, "lstm": 4, "simple_rnn": 1, "mingru": 2}[cell]
    x = tf.constant(rng.standard_normal((B, T, I)).astype(dtype))
    mask = rng.random((B, T)) > 0.3
    mask[1] = False
    states = [tf.constant(rng.standard_normal((B, H)).astype(dtype))
              for _ in range(2 if cell == "lstm" else 1)]
    kernel = tf.constant(rng.standard_normal((I, gates * H)).astype(dtype) * 0.5)
    rec = tf.constant(rng.standard_normal((H, gates * H)).astype(dtype) * 0.5)
    bias = tf.constant(rng.standard_normal((2, 3 * H) if cell == "gru" else (gates * H,))
                       .astype(dtype) * 0.1)
    return x, tf.constant(mask), states, kernel, rec, bias


def _run_op(cell, inputs, graph, recurrent_mask=None):
    x, mask, states, kernel, rec, bias = inputs

    def f(x, states, kernel, rec, bias):
        with tf.GradientTape() as tape:
            tape.watch([x, *states, kernel, rec, bias])
            if cell == "mingru":
                out, h = ops.mingru(x, states[0], kernel, bias, mask, go_backwards=True)
                results = [out, h]
            elif cell == "simple_rnn":
                results = list(ops.simple_rnn(x, states[0], kernel, rec, bias, mask,
                                              recurrent_mask=recurrent_mask))
            else:
                results = list(getattr(ops, cell)(x, *states, kernel, rec, bias, mask))
            loss = sum(tf.reduce_sum(r * r) for r in results)
        sources = [x, *states, kernel, bias] + ([] if cell == "mingru" else [rec])
        return results, tape.gradient(loss, sources)

    return (tf.function(f) if graph else f)(x, states, kernel, rec, bias)


@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_op_equals_one_part(split_into, cell, dtype):
    inputs = _op_inputs(cell, dtype)
    rmask = None
    if cell == "simple_rnn":  # recurrent dropout's [B, H] mask is split with the batch
        rmask = tf.constant((np.random.default_rng(1).random((B, H)) > 0.4).astype(dtype) * 1.7)
    want_out, want_grads = _run_op(cell, inputs, False, rmask)
    used = split_into(2)
    for graph in (False, True):
        got_out, got_grads = _run_op(cell, inputs, graph, rmask)
        for a, b in zip(got_out, want_out):  # same rows, same arithmetic: identical
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        for a, b in zip(got_grads, want_grads):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol,
                                       atol=rtol * np.abs(b.numpy()).max())
    assert used and set(used) == {2}


def test_split_backward_when_the_forward_carried_nothing(split_into, monkeypatch):
    # A forward built while no tape could record (a tf.function traced for
    # inference, then differentiated) carries nothing to the backward, which then
    # re-runs each part's forward. Forced here by making the op believe so.
    layer = fastrnn.GRU(H, return_sequences=True)
    x = tf.constant(np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32))

    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    want = grads()
    used = split_into(2)
    monkeypatch.setattr(tf_record, "could_possibly_record", lambda: False)
    got = grads()
    # numpy_function: the forward, then the backward (each part re-runs its forward);
    # native: the forward ops, differentiated through their registered gradient.
    assert used == ([2] if recurrence.get_route() == "native" else [2, 2])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_bidirectional_split_matches_keras(split_into):
    # Two directions split at once: both calls share the parts' thread pool.
    import keras

    split_into(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 11, I)).astype(np.float32)
    ref = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))
    fast = keras.layers.Bidirectional(fastrnn.LSTM(H, return_sequences=True))
    ref.build(x.shape)
    fast.build(x.shape)
    fast.set_weights(ref.get_weights())
    xt = tf.constant(x)

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, [xt] + layer.trainable_weights)

    for a, b in zip(tf.function(lambda: grads(fast))(), grads(ref)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-5)


def test_a_forked_child_gets_its_own_part_threads(split_into):
    # The hook registered for fork drops the parent's executor; the next split call
    # makes a new one (checked in-process: forking a process that runs TensorFlow is
    # not safe in itself).
    split_into(2)
    assert _threads.run_parts(lambda i: i * 10, 2) == [0, 10]
    before = _threads._executor
    assert before is not None
    _threads.forget_executor()
    assert _threads._executor is None
    assert _threads.run_parts(lambda i: i + 1, 2) == [1, 2]
    assert _threads._executor is not None and _threads._executor is not before

