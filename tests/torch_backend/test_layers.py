"""fastrnn's layers on Keras' torch backend against Keras' own layers there, with the
same weights: outputs, final states and the gradients of x, the initial states and
every weight; masks, go_backwards, stacks, Bidirectional, dropout, float64, half."""

import warnings

import keras
import numpy as np
import pytest
import torch

import fastrnn
from fastrnn import _routes

B, T, I, H = 3, 7, 4, 5
RTOL = {"float32": 2e-5, "float64": 1e-12}
CLASSES = {"gru": (keras.layers.GRU, fastrnn.GRU), "lstm": (keras.layers.LSTM, fastrnn.LSTM),
           "simple_rnn": (keras.layers.SimpleRNN, fastrnn.SimpleRNN)}
N_STATES = {"gru": 1, "lstm": 2, "simple_rnn": 1}


def pair(cell, dtype="float32", weight_seed=0, **config):
    keras_cls, fast_cls = CLASSES[cell]
    ref, fast = keras_cls(H, dtype=dtype, **config), fast_cls(H, dtype=dtype, **config)
    ref.build((None, None, I))
    fast.build((None, None, I))
    rng = np.random.default_rng(weight_seed)
    ref.set_weights([rng.standard_normal(w.shape).astype(dtype) * 0.5 for w in ref.get_weights()])
    fast.set_weights(ref.get_weights())
    return ref, fast


def run(layer, x, states=None, **call):
    """Outputs and the gradients of a weighted sum of them (x, states, weights)."""
    x = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in states or []]
    if states:
        call["initial_state"] = states
    y = layer(x, **call)
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    weights = [torch.linspace(-1, 1, v.numel(), dtype=v.dtype).reshape(v.shape) for v in ys]
    loss = sum((v * w).sum() for v, w in zip(ys, weights))
    sources = [x] + states + [w.value for w in layer.trainable_weights]
    grads = torch.autograd.grad(loss, sources, allow_unused=True)
    return [v.detach().numpy() for v in ys], [None if g is None else g.numpy() for g in grads]


def assert_same(ref, fast, dtype):
    (ys_r, gs_r), (ys_f, gs_f) = ref, fast
    for what, a, b in [("output", ys_r, ys_f), ("gradient", gs_r, gs_f)]:
        assert len(a) == len(b)
        for k, (u, v) in enumerate(zip(a, b)):
            if u is None:
                assert v is None or not np.any(v), f"{what} {k}"
                continue
            scale = max(float(np.abs(u).max(initial=0)), 1.0)
            err = float(np.abs(np.asarray(u, np.float64) - v).max(initial=0)) / scale
            assert err <= RTOL[dtype], f"{what} {k}: relative error {err:.2e}"


def data(dtype="float32", seed=1, batch=B):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, T, I)).astype(dtype)


@pytest.mark.parametrize("cell", sorted(CLASSES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_matches_keras(cell, dtype, go_backwards):
    ref, fast = pair(cell, dtype, return_sequences=True, return_state=True,
                     go_backwards=go_backwards)
    x = data(dtype)
    if cell == "simple_rnn" and dtype == "float64":
        # Keras' own float64 SimpleRNN on torch is float32-accurate only (measured
        # 1.8e-7 from the float64 reference; fastrnn's 2.8e-16): compare it at float32's
        # tolerance, and fastrnn with the float64 reference at float64's.
        from fastrnn.kernels.simple_rnn import reference

        want = reference.simple_rnn_forward(x, None, *fast.get_weights(),
                                            go_backwards=go_backwards)[0]
        got = fast(torch.tensor(x))[0].detach().numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        dtype = "float32"
    assert_same(run(ref, x), run(fast, x), dtype)
    assert type(fast).__name__ in {r[1] for r in _routes.notes()}


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_masks_and_initial_states(cell):
    ref, fast = pair(cell, return_sequences=True, return_state=True)
    x = data()
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False          # right padding
    mask[1, :2] = False          # left padding
    mask[2, 3] = False           # a hole
    rng = np.random.default_rng(3)
    states = [rng.standard_normal((B, H)).astype("float32") for _ in range(N_STATES[cell])]
    call = dict(mask=torch.tensor(mask))
    assert_same(run(ref, x, states, **call), run(fast, x, states, **call), "float32")


@pytest.mark.parametrize("config", [dict(reset_after=False), dict(activation="relu"),
                                    dict(recurrent_activation="hard_sigmoid"),
                                    dict(use_bias=False)])
def test_gru_options(config):
    ref, fast = pair("gru", **config)
    x = data()
    assert_same(run(ref, x), run(fast, x), "float32")


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_dropout_and_recurrent_dropout_draw_keras_masks(cell):
    config = dict(dropout=0.3, recurrent_dropout=0.4, seed=7, return_sequences=True)
    ref, fast = pair(cell, **config)
    x = data()
    assert_same(run(ref, x, training=True), run(fast, x, training=True), "float32")


def test_stacked_cells_and_bidirectional():
    x = data()
    cells = lambda: [keras.layers.LSTMCell(H), keras.layers.GRUCell(H)]  # noqa: E731
    ref = keras.layers.RNN(cells(), return_sequences=True)
    fast = fastrnn.RNN(cells(), return_sequences=True)
    ref.build((None, None, I))
    fast.build((None, None, I))
    fast.set_weights(ref.get_weights())
    assert_same(run(ref, x), run(fast, x), "float32")
    ref = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True))
    fast = keras.layers.Bidirectional(fastrnn.GRU(H, return_sequences=True))
    ref.build((None, None, I))
    fast.build((None, None, I))
    fast.set_weights(ref.get_weights())
    assert_same(run(ref, x), run(fast, x), "float32")


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_stateful_layers_carry_their_states_across_calls(cell):
    keras_cls, fast_cls = CLASSES[cell]
    ref = keras_cls(H, stateful=True, return_sequences=True)
    fast = fast_cls(H, stateful=True, return_sequences=True)
    for layer in (ref, fast):
        layer.build((B, None, I))
    fast.set_weights(ref.get_weights())
    for seed in (1, 2):
        x = torch.tensor(data(seed=seed))
        np.testing.assert_allclose(fast(x).detach().numpy(), ref(x).detach().numpy(), atol=2e-5)
    fast.reset_state()
    ref.reset_state()
    x = torch.tensor(data(seed=3))
    np.testing.assert_allclose(fast(x).detach().numpy(), ref(x).detach().numpy(), atol=2e-5)


def test_mingru_matches_its_keras_loop():
    x = data()
    fast = fastrnn.MinGRU(H, return_sequences=True, return_state=True)
    ref = keras.layers.RNN(fastrnn.MinGRUCell(H), return_sequences=True, return_state=True)
    fast.build((None, None, I))
    ref.build((None, None, I))
    rng = np.random.default_rng(4)
    ref.set_weights([rng.standard_normal(w.shape).astype("float32") for w in ref.get_weights()])
    fast.set_weights(ref.get_weights())
    mask = np.ones((B, T), bool)
    mask[0, 5:] = False
    call = dict(mask=torch.tensor(mask))
    assert_same(run(ref, x, **call), run(fast, x, **call), "float32")


def test_mixed_precision_computes_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    try:
        ref, fast = keras.layers.GRU(H, return_sequences=True), fastrnn.GRU(H, return_sequences=True)
        ref.build((None, None, I))
        fast.build((None, None, I))
        fast.set_weights(ref.get_weights())
        x = torch.tensor(data())
        y_ref, y_fast = ref(x), fast(x)
        assert y_fast.dtype == torch.float16 == y_ref.dtype
        # Keras rounds every step to float16, the kernels round once at the end: worst
        # seen over 10 seeds 6.1e-4, 1.25 float16 ulps at [0.5, 1) (4.9e-4); two ulps here.
        np.testing.assert_allclose(y_fast.float().detach().numpy(),
                                   y_ref.float().detach().numpy(), atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_integer_features_and_empty_batch():
    ref, fast = pair("lstm")
    x = (np.arange(B * T * I).reshape(B, T, I) % 3).astype("int32")
    np.testing.assert_allclose(fast(x).detach().numpy(), ref(x).detach().numpy(), atol=2e-5)
    out = fast(np.zeros((0, T, I), "float32"))
    assert tuple(out.shape) == (0, H)


def test_bad_input_names_what_is_wrong():
    _, fast = pair("gru")
    with pytest.raises(ValueError, match="features"):
        fast(np.zeros((B, T, I + 1), "float32"))
    with pytest.raises(ValueError, match="initial state"):
        fast(np.zeros((B, T, I), "float32"), initial_state=[torch.zeros(B, H + 1)])
    with pytest.raises(ValueError, match="device must be one of"):
        fastrnn.GRU(H, device="tpu")


def test_custom_cell_and_unknown_activation_keep_keras_loop():
    fast = fastrnn.GRU(H, activation=lambda v: v * 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast(data())
    assert any("Keras' own" in str(w.message) for w in caught)


def test_device_cuda_without_a_gpu_says_so():
    fast = fastrnn.GRU(H, device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        fast(data())


def test_torch_compile_runs_the_kernels_as_one_opaque_call():
    _, fast = pair("simple_rnn", return_sequences=True)
    x = torch.tensor(data())
    want = fast(x).detach().numpy()
    compiled = torch.compile(lambda v: fast(v), backend="eager")
    np.testing.assert_allclose(compiled(x).detach().numpy(), want, rtol=1e-6, atol=1e-6)



@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_split_calls_run_on_torchs_openmp_team(cell, monkeypatch):
    # A call large enough to split runs its parts on torch's OpenMP threads (one
    # part per thread of torch's, each on a thread of its own) and matches Keras.
    # (OpenBLAS' threads call the original parts.run_part, bound at import: the spy
    # sees only the team's calls.)
    from fastrnn import torch_ops
    from fastrnn.kernels.batch import parts

    runner = torch_ops._torch_team()
    assert runner is not None, "torch's CPU build on Linux runs on libgomp"
    idents = []
    run_part = parts.run_part

    def spy(argument):
        import threading

        idents.append(threading.get_ident())
        run_part(argument)

    monkeypatch.setattr(parts, "SMALL_WORK", 0)
    monkeypatch.setattr(parts, "ONE_THREAD_WORK", 0)
    monkeypatch.setattr(parts, "MIN_ROWS", 1)
    monkeypatch.setattr(parts, "run_part", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, fast = pair(cell, return_sequences=True, return_state=True)
        x = data(batch=4)
        assert_same(run(ref, x), run(fast, x), "float32")
    finally:
        torch.set_num_threads(threads)
    assert len(idents) == 4  # forward and backward, two parts each
    assert len(set(idents[:2])) == 2 and len(set(idents[2:])) == 2
