"""The GRU native ops (FastrnnGRUForward/Backward) against the kernels called
directly: outputs, final state and every gradient, bit for bit where both run the
same core on the same arrays, in one part and split over the batch."""

import numpy as np
import pytest
import tensorflow as tf

from fastrnn import kernels
from fastrnn.kernels.batch import parts as _parts

native = pytest.importorskip("fastrnn.ops.native", reason="the C API route cannot be set up")

B, T, I, H = 5, 7, 3, 4
TOL = {"float32": 2e-6, "float64": 1e-13}


def data(dtype, reset_after=True, use_bias=True, masked=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    kernel = (rng.standard_normal((I, 3 * H)) * 0.5).astype(dtype)
    recurrent = (rng.standard_normal((H, 3 * H)) * 0.5).astype(dtype)
    bias = None
    if use_bias:
        bias = rng.standard_normal((2, 3 * H) if reset_after else (3 * H,)).astype(dtype)
    mask = None
    if masked:
        mask = rng.random((B, T)) > 0.3
        mask[0] = False
        mask[1, :2] = False
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    d_h = rng.standard_normal((B, H)).astype(dtype)
    return x, h0, kernel, recurrent, bias, mask, d_out, d_h


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def gate_masks(dtype, seed=3):
    """Per-gate recurrent dropout masks [B, 3H] (Keras' 0 or 1/keep)."""
    rng = np.random.default_rng(seed)
    return ((rng.random((B, 3 * H)) < 0.7) / 0.7).astype(dtype)


def through_ops(x, h0, kernel, recurrent, bias, mask, d_out, d_h, parts=1, recurrent_mask=None,
                **config):
    """(out, h_last, dx, dh0, d_kernel, d_recurrent, d_bias) through native.gru."""
    tensors = [tf.constant(a) for a in (x, h0, kernel, recurrent)]
    b = None if bias is None else tf.constant(bias)
    rm = None if recurrent_mask is None else tf.constant(recurrent_mask)
    with tf.GradientTape() as tape:
        tape.watch(tensors + ([b] if b is not None else []))
        out, h_last = native.gru(*tensors, b, None if mask is None else tf.constant(mask),
                                 max_parts=parts, recurrent_mask=rm, **config)
        loss = tf.reduce_sum(out * d_out) + tf.reduce_sum(h_last * d_h)
    grads = tape.gradient(loss, tensors + ([b] if b is not None else []))
    return [out, h_last] + grads + ([None] if b is None else [])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("masked,go_backwards", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dropout", [False, True])
def test_ops_match_kernels(dtype, reset_after, use_bias, masked, go_backwards, dropout):
    x, h0, kernel, recurrent, bias, mask, d_out, d_h = data(dtype, reset_after, use_bias, masked)
    acts = dict(act=0, ract=2)
    rm = gate_masks(dtype) if dropout else None
    got = through_ops(x, h0, kernel, recurrent, bias, mask, d_out, d_h, reset_after=reset_after,
                      go_backwards=go_backwards, recurrent_mask=rm, **acts)
    out, h_last, saved = kernels.gru_forward(x, h0, kernel, recurrent, bias, mask=mask,
                                             reset_after=reset_after, go_backwards=go_backwards,
                                             recurrent_mask=rm)
    want = [out, h_last, *kernels.gru_backward(saved, d_out, d_h)]
    names = ["out", "h_last", "dx", "dh0", "d_kernel", "d_recurrent_kernel", "d_bias"]
    for name, a, b in zip(names, got, want):
        if b is None:
            assert a is None, name
        else:
            close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reset_after,dropout", [(True, False), (True, True), (False, True)])
def test_split_matches_one_part(dtype, reset_after, dropout, monkeypatch):
    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    args = data(dtype, reset_after, masked=True)
    config = dict(reset_after=reset_after, go_backwards=True, act=0, ract=2,
                  recurrent_mask=gate_masks(dtype) if dropout else None)
    split = tf.function(lambda: through_ops(*args, parts=3, **config))
    graph = split.get_concrete_function().graph
    assert sum(op.type == "FastrnnGRUForward" for op in graph.get_operations()) == 3
    one = through_ops(*args, parts=1, **config)
    for a, b in zip(split(), one):
        close(a, b, dtype, "split")


def test_inference_runs_the_forward_op_alone():
    x, h0, kernel, recurrent, bias, mask, _, _ = data("float32")
    fn = tf.function(lambda x: native.gru(x, h0, kernel, recurrent, bias, None, reset_after=True,
                                          go_backwards=False, act=0, ract=2, max_parts=1)[0])
    ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
    assert "FastrnnGRUForward" in ops and "FastrnnGRUBackward" not in ops


def test_empty_batch():
    x, h0, kernel, recurrent, bias, _, d_out, d_h = data("float32")
    got = through_ops(x[:0], h0[:0], kernel, recurrent, bias, None, d_out[:0], d_h[:0],
                      reset_after=True, go_backwards=False, act=0, ract=2)
    assert got[0].shape == (0, T, H) and got[1].shape == (0, H) and got[2].shape == (0, T, I)
    for g, w in zip(got[4:], (kernel, recurrent, bias)):
        assert g.shape == w.shape and not np.any(g.numpy())


def test_a_forward_traced_without_a_tape_is_differentiable():
    # tf.function traced for inference (no tape: the forward op alone), then
    # called under a tape: the gradient comes from TensorFlow's registry.
    x, h0, kernel, recurrent, bias, _, d_out, d_h = data("float32")
    fn = tf.function(lambda x: native.gru(x, h0, kernel, recurrent, bias, None, reset_after=True,
                                          go_backwards=False, act=0, ract=2, max_parts=1)[0])
    xt = tf.constant(x)
    fn(xt)  # traced here, without a tape
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(fn(xt) * d_out)
    got = tape.gradient(loss, xt)
    out, _, saved = kernels.gru_forward(x, h0, kernel, recurrent, bias)
    close(got, kernels.gru_backward(saved, d_out, None)[0], "float32", "dx")
