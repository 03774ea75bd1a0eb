"""The LSTM native ops (FastrnnLSTMForward/Backward) against the kernels called
directly: outputs, both final states and every gradient, bit for bit where both run
the same core on the same arrays, in one part and split over the batch."""

import numpy as np
import pytest
import tensorflow as tf

from fastrnn import kernels
from fastrnn.kernels.batch import parts as _parts

native = pytest.importorskip("fastrnn.ops.native", reason="the C API route cannot be set up")

B, T, I, H = 5, 7, 3, 4
TOL = {"float32": 2e-6, "float64": 1e-13}
NAMES = ["out", "h_last", "c_last", "dx", "dh0", "dc0", "d_kernel", "d_recurrent_kernel",
         "d_bias"]


def data(dtype, use_bias=True, masked=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    kernel = (rng.standard_normal((I, 4 * H)) * 0.5).astype(dtype)
    recurrent = (rng.standard_normal((H, 4 * H)) * 0.5).astype(dtype)
    bias = rng.standard_normal(4 * H).astype(dtype) if use_bias else None
    mask = None
    if masked:
        mask = rng.random((B, T)) > 0.3
        mask[0] = False
        mask[1, :2] = False
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    d_h = rng.standard_normal((B, H)).astype(dtype)
    d_c = rng.standard_normal((B, H)).astype(dtype)
    return x, h0, c0, kernel, recurrent, bias, mask, d_out, d_h, d_c


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def gate_masks(dtype, seed=3):
    """Per-gate recurrent dropout masks [B, 4H] (Keras' 0 or 1/keep)."""
    rng = np.random.default_rng(seed)
    return ((rng.random((B, 4 * H)) < 0.7) / 0.7).astype(dtype)


def through_ops(x, h0, c0, kernel, recurrent, bias, mask, d_out, d_h, d_c, parts=1,
                recurrent_mask=None, **config):
    """(out, h_last, c_last, dx, dh0, dc0, d_kernel, d_recurrent, d_bias) through native.lstm."""
    tensors = [tf.constant(a) for a in (x, h0, c0, kernel, recurrent)]
    b = None if bias is None else tf.constant(bias)
    rm = None if recurrent_mask is None else tf.constant(recurrent_mask)
    with tf.GradientTape() as tape:
        tape.watch(tensors + ([b] if b is not None else []))
        out, h_last, c_last = native.lstm(*tensors, b,
                                          None if mask is None else tf.constant(mask),
                                          max_parts=parts, recurrent_mask=rm, **config)
        loss = (tf.reduce_sum(out * d_out) + tf.reduce_sum(h_last * d_h)
                + tf.reduce_sum(c_last * d_c))
    grads = tape.gradient(loss, tensors + ([b] if b is not None else []))
    return [out, h_last, c_last] + grads + ([None] if b is None else [])


def through_kernels(x, h0, c0, kernel, recurrent, bias, mask, d_out, d_h, d_c, act=0, ract=2,
                    go_backwards=False, recurrent_mask=None):
    names = {code: name for name, code in kernels.ACTIVATIONS.items()}
    out, h_last, c_last, saved = kernels.lstm_forward(
        x, h0, c0, kernel, recurrent, bias, mask=mask, go_backwards=go_backwards,
        activation=names[act], recurrent_activation=names[ract], recurrent_mask=recurrent_mask)
    return [out, h_last, c_last, *kernels.lstm_backward(saved, d_out, d_h, d_c)]


def compare(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        else:
            close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("masked,go_backwards", [(False, False), (False, True), (True, False),
                                                 (True, True)])
@pytest.mark.parametrize("dropout", [False, True])
def test_ops_match_kernels(dtype, use_bias, masked, go_backwards, dropout):
    args = data(dtype, use_bias, masked)
    config = dict(go_backwards=go_backwards, act=0, ract=2,
                  recurrent_mask=gate_masks(dtype) if dropout else None)
    compare(through_ops(*args, **config), through_kernels(*args, **config), dtype)


@pytest.mark.parametrize("act,ract", [(1, 4), (2, 0), (3, 2)])
def test_other_activations(act, ract):
    for dtype in ("float32", "float64"):
        args = data(dtype, masked=True, seed=1)
        config = dict(go_backwards=True, act=act, ract=ract)
        compare(through_ops(*args, **config), through_kernels(*args, **config), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [False, True])
def test_split_matches_one_part(dtype, dropout, monkeypatch):
    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    args = data(dtype, masked=True)
    config = dict(go_backwards=True, act=0, ract=2,
                  recurrent_mask=gate_masks(dtype) if dropout else None)
    split = tf.function(lambda: through_ops(*args, parts=3, **config))
    graph = split.get_concrete_function().graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("FastrnnLSTMForward") == 3 and types.count("FastrnnLSTMBackward") == 3
    one = through_ops(*args, parts=1, **config)
    for name, a, b in zip(NAMES, split(), one):
        close(a, b, dtype, f"split {name}")


def test_inference_runs_the_forward_op_alone():
    x, h0, c0, kernel, recurrent, bias, _, _, _, _ = data("float32")
    fn = tf.function(lambda x: native.lstm(x, h0, c0, kernel, recurrent, bias, None,
                                           go_backwards=False, act=0, ract=2, max_parts=1)[0])
    ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
    assert "FastrnnLSTMForward" in ops and "FastrnnLSTMBackward" not in ops


@pytest.mark.parametrize("use_bias", [True, False])
def test_empty_batch(use_bias):
    x, h0, c0, kernel, recurrent, bias, _, d_out, d_h, d_c = data("float32", use_bias)
    got = through_ops(x[:0], h0[:0], c0[:0], kernel, recurrent, bias, None, d_out[:0], d_h[:0],
                      d_c[:0], go_backwards=False, act=0, ract=2)
    assert got[0].shape == (0, T, H) and got[1].shape == (0, H) and got[2].shape == (0, H)
    assert got[3].shape == (0, T, I) and got[4].shape == (0, H) and got[5].shape == (0, H)
    for g, w in zip(got[6:], (kernel, recurrent, bias)):
        if w is None:
            assert g is None
        else:
            assert g.shape == w.shape and not np.any(g.numpy())


def test_a_forward_traced_without_a_tape_is_differentiable():
    # tf.function traced for inference (no tape: the forward op alone), then
    # called under a tape: the gradient comes from TensorFlow's registry.
    x, h0, c0, kernel, recurrent, bias, _, d_out, _, d_c = data("float32")

    def run(x):
        out, _, c_last = native.lstm(x, h0, c0, kernel, recurrent, bias, None,
                                     go_backwards=False, act=0, ract=2, max_parts=1)
        return out, c_last

    fn = tf.function(run)
    xt = tf.constant(x)
    fn(xt)  # traced here, without a tape
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out, c_last = fn(xt)
        loss = tf.reduce_sum(out * d_out) + tf.reduce_sum(c_last * d_c)
    got = tape.gradient(loss, xt)
    _, _, _, saved = kernels.lstm_forward(x, h0, c0, kernel, recurrent, bias)
    close(got, kernels.lstm_backward(saved, d_out, None, d_c)[0], "float32", "dx")


def test_the_layer_takes_the_native_route():
    import fastrnn
    from fastrnn.ops import recurrence

    layer = fastrnn.LSTM(H, return_sequences=True, return_state=True, device="cpu")
    x = tf.constant(data("float32")[0])
    layer(x)
    assert recurrence.route_name("cpu") == "native op"
    fn = tf.function(lambda x: layer(x))
    ops = [op.type for op in fn.get_concrete_function(x).graph.get_operations()]
    assert "FastrnnLSTMForward" in ops


@pytest.mark.parametrize("go_backwards", [False, True])
def test_launcher_takes_read_only_arrays(go_backwards):
    # The numpy_function route hands the launchers read-only views of TF's tensors.
    args = data("float32", masked=True)
    want = through_kernels(*args, go_backwards=go_backwards)
    frozen = [None if a is None else a.copy() for a in args]
    for a in frozen:
        if a is not None:
            a.flags.writeable = False
    got = through_kernels(*frozen, go_backwards=go_backwards)
    for name, a, b in zip(NAMES, got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
