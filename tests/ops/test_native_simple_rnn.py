"""The SimpleRNN native ops (FastrnnSimpleRNNForward/Backward) against the kernels
called directly: outputs, final state and every gradient, in one part and split over
the batch (the recurrent dropout mask split with it)."""

import numpy as np
import pytest
import tensorflow as tf

from fastrnn import kernels
from fastrnn.kernels.batch import parts as _parts
from fastrnn.kernels.checks.validate import ACTIVATIONS

native = pytest.importorskip("fastrnn.ops.native", reason="the C API route cannot be set up")

B, T, I, H = 5, 7, 3, 4
TOL = {"float32": 2e-6, "float64": 1e-13}
NAMES = ["out", "h_last", "dx", "dh0", "d_kernel", "d_recurrent_kernel", "d_bias"]


def data(dtype, use_bias=True, masked=False, dropout=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    kernel = (rng.standard_normal((I, H)) * 0.5).astype(dtype)
    recurrent = (rng.standard_normal((H, H)) * 0.5).astype(dtype)
    bias = rng.standard_normal(H).astype(dtype) if use_bias else None
    mask = None
    if masked:
        mask = rng.random((B, T)) > 0.3
        mask[0] = False
        mask[1, :2] = False
    rmask = None
    if dropout:
        rmask = ((rng.random((B, H)) > 0.4) / 0.6).astype(dtype)
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    d_h = rng.standard_normal((B, H)).astype(dtype)
    return x, h0, kernel, recurrent, bias, mask, rmask, d_out, d_h


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def through_ops(x, h0, kernel, recurrent, bias, mask, rmask, d_out, d_h, parts=1, **config):
    """(out, h_last, dx, dh0, d_kernel, d_recurrent, d_bias) through native.simple_rnn."""
    tensors = [tf.constant(a) for a in (x, h0, kernel, recurrent)]
    b = None if bias is None else tf.constant(bias)
    with tf.GradientTape() as tape:
        tape.watch(tensors + ([b] if b is not None else []))
        out, h_last = native.simple_rnn(
            *tensors, b, None if mask is None else tf.constant(mask),
            recurrent_mask=None if rmask is None else tf.constant(rmask), max_parts=parts,
            **config)
        loss = tf.reduce_sum(out * d_out) + tf.reduce_sum(h_last * d_h)
    grads = tape.gradient(loss, tensors + ([b] if b is not None else []))
    return [out, h_last] + grads + ([None] if b is None else [])


def through_kernels(x, h0, kernel, recurrent, bias, mask, rmask, d_out, d_h, act, go_backwards):
    activation = {code: name for name, code in ACTIVATIONS.items()}[act]
    out, h_last, saved = kernels.simple_rnn_forward(
        x, h0, kernel, recurrent, bias, activation=activation, mask=mask,
        go_backwards=go_backwards, recurrent_mask=rmask)
    return [out, h_last, *kernels.simple_rnn_backward(saved, d_out, d_h)]


def compare(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        else:
            close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("masked,go_backwards", [(False, False), (True, False), (True, True)])
def test_ops_match_kernels(dtype, use_bias, dropout, masked, go_backwards):
    args = data(dtype, use_bias, masked, dropout)
    config = dict(act=ACTIVATIONS["tanh"], go_backwards=go_backwards)
    compare(through_ops(*args, **config), through_kernels(*args, **config), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "linear", "hard_sigmoid"])
def test_activations(dtype, activation):
    args = data(dtype, masked=True, dropout=activation == "relu", seed=1)
    config = dict(act=ACTIVATIONS[activation], go_backwards=activation == "sigmoid")
    compare(through_ops(*args, **config), through_kernels(*args, **config), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [False, True])
def test_split_matches_one_part(dtype, dropout, monkeypatch):
    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    args = data(dtype, masked=True, dropout=dropout)
    config = dict(act=ACTIVATIONS["tanh"], go_backwards=True)
    split = tf.function(lambda: through_ops(*args, parts=3, **config))
    graph = split.get_concrete_function().graph
    assert sum(op.type == "FastrnnSimpleRNNForward" for op in graph.get_operations()) == 3
    assert sum(op.type == "FastrnnSimpleRNNBackward" for op in graph.get_operations()) == 3
    one = through_ops(*args, parts=1, **config)
    for a, b in zip(split(), one):
        close(a, b, dtype, "split")
    compare(one, through_kernels(*args, **config), dtype)


def test_no_initial_state_is_zeros():
    x, h0, kernel, recurrent, bias, mask, rmask, _, _ = data("float32", masked=True, dropout=True)
    config = dict(act=0, go_backwards=False, recurrent_mask=tf.constant(rmask), max_parts=1)
    got = native.simple_rnn(tf.constant(x), None, kernel, recurrent, bias, mask, **config)
    want = native.simple_rnn(tf.constant(x), np.zeros_like(h0), kernel, recurrent, bias, mask,
                             **config)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_inference_runs_the_forward_op_alone():
    x, h0, kernel, recurrent, bias, _, rmask, _, _ = data("float32", dropout=True)
    fn = tf.function(lambda x: native.simple_rnn(x, h0, kernel, recurrent, bias, None, act=0,
                                                 go_backwards=False, recurrent_mask=rmask,
                                                 max_parts=1)[0])
    ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
    assert "FastrnnSimpleRNNForward" in ops and "FastrnnSimpleRNNBackward" not in ops
    close(fn(tf.constant(x)), kernels.simple_rnn_forward(x, h0, kernel, recurrent, bias,
                                                         recurrent_mask=rmask)[0],
          "float32", "out")


@pytest.mark.parametrize("dropout", [False, True])
def test_empty_batch(dropout):
    x, h0, kernel, recurrent, bias, _, rmask, d_out, d_h = data("float32", dropout=dropout)
    got = through_ops(x[:0], h0[:0], kernel, recurrent, bias, None,
                      None if rmask is None else rmask[:0], d_out[:0], d_h[:0], act=0,
                      go_backwards=False)
    assert got[0].shape == (0, T, H) and got[1].shape == (0, H) and got[2].shape == (0, T, I)
    assert got[3].shape == (0, H)
    for g, w in zip(got[4:], (kernel, recurrent, bias)):
        assert g.shape == w.shape and not np.any(g.numpy())
