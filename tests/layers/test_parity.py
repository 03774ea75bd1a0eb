"""fastrnn.SimpleRNN / fastrnn.GRU against keras.layers.* with the same weights.

Outputs, final states and gradients with respect to inputs, initial state and
every weight, eager and inside tf.function.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn

# Every test here runs on both CPU routes: the native ops and tf.numpy_function.
pytestmark = pytest.mark.usefixtures("cpu_route")

B, T, I, H = 3, 9, 4, 5
PAIRS = {"gru": (keras.layers.GRU, fastrnn.GRU), "simple_rnn": (keras.layers.SimpleRNN, fastrnn.SimpleRNN),
         "lstm": (keras.layers.LSTM, fastrnn.LSTM)}
N_STATES = {"gru": 1, "simple_rnn": 1, "lstm": 2}
RTOL = {"float32": 2e-5, "float64": 1e-12}


def make_pair(cell, dtype="float32", seed=0, **config):
    keras_cls, fast_cls = PAIRS[cell]
    ref = keras_cls(H, dtype=dtype, **config)
    fast = fast_cls(H, dtype=dtype, **config)
    ref.build((None, None, I))
    fast.build((None, None, I))
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(w.shape).astype(dtype) * 0.5 for w in ref.get_weights()]
    ref.set_weights(weights)
    fast.set_weights(ref.get_weights())
    return ref, fast


def run(layer, x, grads_of, graph, **call):
    def f(x, *state):
        with tf.GradientTape() as tape:
            tape.watch(x)
            kwargs = dict(call)
            if state:
                tape.watch(list(state))
                kwargs["initial_state"] = list(state)
            y = layer(x, **kwargs)
            ys = y if isinstance(y, (list, tuple)) else [y]
            loss = sum(tf.reduce_sum(v * w) for v, w in zip(ys, grads_of))
        sources = [x] + list(state) + layer.trainable_weights
        return ys, tape.gradient(loss, sources)

    if graph:
        f = tf.function(f)
    states = call.pop("initial_state", None)
    return f(x, *(states if states is not None else []))


def assert_same(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.2e}"


def compare(cell, dtype="float32", graph=False, mask=None, initial_state=False, seed=0,
            **config):
    ref, fast = make_pair(cell, dtype, seed, **config)
    rng = np.random.default_rng(seed + 1)
    x = tf.constant(rng.standard_normal((B, T, I)).astype(dtype))
    call = {}
    if mask is not None:
        call["mask"] = tf.constant(mask)
    if initial_state:
        call["initial_state"] = [tf.constant(rng.standard_normal((B, H)).astype(dtype))
                                 for _ in range(N_STATES[cell])]
    probe = ref(x, **call)
    probe = probe if isinstance(probe, (list, tuple)) else [probe]
    grads_of = [tf.constant(rng.standard_normal(p.shape).astype(dtype)) for p in probe]
    ys_ref, g_ref = run(ref, x, grads_of, graph, **call)
    ys_fast, g_fast = run(fast, x, grads_of, graph, **call)
    for i, (a, b) in enumerate(zip(ys_fast, ys_ref)):
        assert_same(a, b, dtype, f"output {i}")
    names = (["x"] + [f"initial_state[{i}]" for i in range(N_STATES[cell] if initial_state else 0)]
             + [w.path for w in ref.trainable_weights])
    for name, a, b in zip(names, g_fast, g_ref):
        assert_same(a, b, dtype, f"d {name}")


def random_mask(seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, T)) > 0.3
    mask[0] = False          # a row masked throughout
    mask[1, :2] = False      # masked at the first steps
    mask[2, -3:] = False     # right padding
    return mask


@pytest.mark.parametrize("cell", list(PAIRS))
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("return_sequences,return_state", [(True, False), (False, True), (True, True)])
def test_outputs_and_gradients(cell, graph, return_sequences, return_state):
    compare(cell, graph=graph, return_sequences=return_sequences, return_state=return_state)


@pytest.mark.parametrize("cell", list(PAIRS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_mask_initial_state_go_backwards(cell, go_backwards, zero_output_for_mask):
    compare(cell, mask=random_mask(), initial_state=True, return_sequences=True,
            return_state=True, go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_variants(reset_after, use_bias):
    compare("gru", reset_after=reset_after, use_bias=use_bias, return_sequences=True,
            mask=random_mask(1), initial_state=True)


@pytest.mark.parametrize("cell,config", [
    ("lstm", dict(activation="relu", recurrent_activation="hard_sigmoid")),
    ("lstm", dict(use_bias=False, unit_forget_bias=False)),
    ("simple_rnn", dict(activation="relu")),
    ("simple_rnn", dict(activation="sigmoid")),
    ("simple_rnn", dict(activation=None)),
    ("gru", dict(activation="relu", recurrent_activation="hard_sigmoid")),
    ("gru", dict(recurrent_activation="tanh")),
])
def test_activations(cell, config):
    compare(cell, return_sequences=True, **config)


@pytest.mark.parametrize("cell", list(PAIRS))
def test_float64(cell):
    compare(cell, dtype="float64", mask=random_mask(2), initial_state=True, return_sequences=True)


@pytest.mark.parametrize("cell", list(PAIRS))
def test_unsupported_activation_falls_back_exactly(cell):
    with pytest.warns(UserWarning, match="Keras' own"):
        compare(cell, activation="gelu", return_sequences=True)


def test_weights_and_config_are_keras():
    ref, fast = make_pair("gru", reset_after=False)
    assert [w.path.split("/")[-1] for w in fast.weights] == [w.path.split("/")[-1] for w in ref.weights]
    assert [w.shape for w in fast.weights] == [w.shape for w in ref.weights]
    cfg_ref, cfg_fast = ref.get_config(), fast.get_config()
    cfg_ref.pop("name"), cfg_fast.pop("name")
    assert cfg_fast.pop("device") == "auto"  # fastrnn's one extra argument
    assert cfg_fast == cfg_ref
    clone = fastrnn.GRU.from_config(fast.get_config())
    assert isinstance(clone, fastrnn.GRU) and clone.reset_after is False


def test_no_warning_on_the_fast_path():
    _, fast = make_pair("gru")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the fallback's warning class
        fast(np.ones((2, 3, I), np.float32))


@pytest.mark.parametrize("cell", list(PAIRS))
def test_the_fast_path_runs(cell, monkeypatch, cpu_route):
    from fastrnn import ops
    from fastrnn.ops import recurrence

    assert recurrence.route_name("cpu") == {"native": "native op",
                                            "numpy_function": "numpy_function fallback"}[cpu_route]

    calls = []
    original = getattr(ops, cell)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, cell, counted)
    _, fast = make_pair(cell)
    fast(np.ones((2, 3, I), np.float32))
    assert calls, "the layer did not call the fastrnn op"


OP_NAMES = {"gru": "FastrnnGRU", "simple_rnn": "FastrnnSimpleRNN", "lstm": "FastrnnLSTM"}


@pytest.mark.parametrize("cell", list(PAIRS))
def test_the_route_runs_its_ops(cell, cpu_route):
    """The native route puts the cell's forward and backward ops in a training graph;
    the numpy_function route puts PyFuncs there and no native op."""
    _, fast = make_pair(cell)
    x = tf.constant(np.ones((2, 3, I), np.float32))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(fast(x))
        return tape.gradient(y, x)

    types = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    native = {f"{OP_NAMES[cell]}Forward", f"{OP_NAMES[cell]}Backward"}
    if cpu_route == "native":
        assert native <= types and "PyFunc" not in types, sorted(types)
    else:
        assert not native & types and "PyFunc" in types, sorted(types)
