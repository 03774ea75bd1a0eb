"""A batch known only at run time (model.fit's step traced with batch None) on the
native route: the split over the cores is planned in the graph (native.plan_sizes),
one op per possible part, and gives the one-part call's numbers."""

import numpy as np
import pytest
import tensorflow as tf

import fastrnn
from fastrnn.kernels.batch import parts as _parts
from fastrnn.ops import _threads, recurrence

B, T, I, H = 5, 7, 3, 4


@pytest.fixture(autouse=True)
def native_route():
    previous = recurrence.get_route()
    recurrence.set_route("native")
    yield
    recurrence.set_route(previous)


@pytest.mark.parametrize("max_parts", [2, 3])
def test_plan_sizes_at_run_time_are_the_static_plan(monkeypatch, max_parts):
    from fastrnn.ops import native

    # The run-time plan of a [None, T, F] call gives, for each batch, the parts the
    # static plan would (their rows as _parts.slices makes them), empty parts after.
    T_, F_, width = 5, 3, 8
    monkeypatch.setattr(_parts, "SMALL_WORK", native.SPLIT_FRACTION * 40 * T_ * width * (F_ + width))
    plan = tf.function(lambda x: native.plan_sizes(x, F_, width, max_parts),
                       input_signature=[tf.TensorSpec([None, None, F_], tf.float32)])
    for batch in (0, 1, 3, 4, 7, 8, 39, 40, 41, 100, 129):
        x = tf.zeros((batch, T_, F_))
        static = native.plan_parts(x, width, max_parts)
        want = [s.stop - s.start for s in _parts.slices(batch, static)]
        want += [0] * (max_parts - len(want))
        assert plan(x).numpy().tolist() == want, batch


def _op_count(concrete, op_type):
    graphs = [concrete.graph] + [f.graph for f in concrete.graph._functions.values()
                                 if hasattr(f, "graph")]
    return sum(op.type == op_type for g in graphs for op in g.get_operations())


@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
def test_unknown_batch_splits_at_run_time_and_equals_one_part(monkeypatch, cell):
    from fastrnn.ops import native

    monkeypatch.setattr(_threads, "MAX_PARTS", 2)
    monkeypatch.setattr(_parts, "MIN_ROWS", 2)
    layer = {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM, "simple_rnn": fastrnn.SimpleRNN,
             "mingru": fastrnn.MinGRU}[cell](H, return_sequences=True)
    layer.build((None, T, I))
    forward_op = {"gru": "FastrnnGRUForward", "lstm": "FastrnnLSTMForward",
                  "simple_rnn": "FastrnnSimpleRNNForward", "mingru": "FastrnnMinGRUForward"}[cell]

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, [x] + layer.trainable_weights)

    plan_parts = native.plan_parts
    rng = np.random.default_rng(0)
    # SMALL_WORK 0: a batch of at least 2 * MIN_ROWS rows splits, 1 row leaves the
    # second part empty; 1 << 60: nothing splits (the second part is always empty).
    for batch, small_work in ((9, 0), (1, 0), (9, 1 << 60)):
        monkeypatch.setattr(_parts, "SMALL_WORK", small_work)
        x = tf.constant(rng.standard_normal((batch, T, I)).astype(np.float32))
        dynamic = tf.function(step, input_signature=[tf.TensorSpec([None, T, I], tf.float32)])
        got = dynamic(x)
        graph = dynamic.get_concrete_function().graph
        ops_in = [op.type for g in [graph] + [f.graph for f in graph._functions.values()
                                              if hasattr(f, "graph")]
                  for op in g.get_operations()]
        assert ops_in.count(forward_op) == 2   # one op per possible part
        monkeypatch.setattr(native, "plan_parts", lambda *args: 1)
        want = tf.function(step)(x)             # the batch static, one part
        monkeypatch.setattr(native, "plan_parts", plan_parts)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
