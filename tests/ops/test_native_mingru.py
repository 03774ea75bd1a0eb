"""The minGRU native ops (FastrnnMinGRUForward/Backward) against the kernels called
directly: outputs, final state and every gradient, in one part and split over the
batch; the launchers' sequential method and the ops run the same cores."""

import numpy as np
import pytest
import tensorflow as tf

from fastrnn import kernels
from fastrnn.kernels.batch import parts as _parts

native = pytest.importorskip("fastrnn.ops.native", reason="the C API route cannot be set up")

B, T, I, H = 5, 7, 3, 4
TOL = {"float32": 2e-6, "float64": 1e-13}
NAMES = ["out", "h_last", "dx", "dh0", "d_kernel", "d_bias"]


def data(dtype, use_bias=True, masked=False, seed=0, shape=(B, T, I, H)):
    b, t, i, h = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, i)).astype(dtype)
    h0 = rng.standard_normal((b, h)).astype(dtype)
    kernel = (rng.standard_normal((i, 2 * h)) * 0.5).astype(dtype)
    bias = rng.standard_normal(2 * h).astype(dtype) if use_bias else None
    mask = None
    if masked:
        mask = rng.random((b, t)) > 0.3
        mask[0] = False
        mask[1, :2] = False
    d_out = rng.standard_normal((b, t, h)).astype(dtype)
    d_h = rng.standard_normal((b, h)).astype(dtype)
    return x, h0, kernel, bias, mask, d_out, d_h


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    err = np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1.0)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def through_ops(x, h0, kernel, bias, mask, d_out, d_h, parts=1, go_backwards=False):
    """(out, h_last, dx, dh0, d_kernel, d_bias) through native.mingru."""
    tensors = [tf.constant(a) for a in (x, h0, kernel)]
    b = None if bias is None else tf.constant(bias)
    with tf.GradientTape() as tape:
        tape.watch(tensors + ([b] if b is not None else []))
        out, h_last = native.mingru(*tensors, b, None if mask is None else tf.constant(mask),
                                    go_backwards=go_backwards, max_parts=parts)
        loss = tf.reduce_sum(out * d_out) + tf.reduce_sum(h_last * d_h)
    grads = tape.gradient(loss, tensors + ([b] if b is not None else []))
    return [out, h_last] + grads + ([None] if b is None else [])


def through_kernels(x, h0, kernel, bias, mask, d_out, d_h, go_backwards=False, method="auto"):
    out, h_last, saved = kernels.mingru_forward(x, h0, kernel, bias, mask=mask,
                                                go_backwards=go_backwards, method=method)
    return [out, h_last, *kernels.mingru_backward(saved, d_out, d_h)]


def check(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        else:
            close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("masked,go_backwards", [(False, False), (False, True), (True, False),
                                                 (True, True)])
def test_ops_match_kernels(dtype, use_bias, masked, go_backwards):
    args = data(dtype, use_bias, masked)
    got = through_ops(*args, go_backwards=go_backwards)
    check(got, through_kernels(*args, go_backwards=go_backwards), dtype)
    # The launcher's Blelloch path: the same results up to rounding.
    check(got, through_kernels(*args, go_backwards=go_backwards, method="blelloch"), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_several_blocks_of_rows(dtype):
    # Rows long enough that a block (kernels.mingru.cpu.BLOCK_BYTES of gates) holds
    # 3 of them: the ops' blocks over 7 rows, the last one short, against the launcher.
    from fastrnn.kernels.mingru import cpu

    width = 16
    time = cpu.BLOCK_BYTES // (3 * 2 * width * np.dtype(dtype).itemsize)
    args = data(dtype, masked=True, shape=(7, time, 2, width), seed=1)
    assert cpu.rows_per_block(7, time, 2 * width, np.dtype(dtype).itemsize) == 3
    for go_backwards in (False, True):
        check(through_ops(*args, go_backwards=go_backwards),
              through_kernels(*args, go_backwards=go_backwards), dtype)


def test_one_input_feature():
    # I = 1: the projection is an outer product (kernels.fastmath.common.project).
    args = data("float64", masked=True, shape=(3, 6, 1, 5))
    check(through_ops(*args), through_kernels(*args), "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_matches_one_part(dtype, monkeypatch):
    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    args = data(dtype, masked=True)
    split = tf.function(lambda: through_ops(*args, parts=3, go_backwards=True))
    graph = split.get_concrete_function().graph
    assert sum(op.type == "FastrnnMinGRUForward" for op in graph.get_operations()) == 3
    assert sum(op.type == "FastrnnMinGRUBackward" for op in graph.get_operations()) == 3
    one = through_ops(*args, parts=1, go_backwards=True)
    for name, a, b in zip(NAMES, split(), one):
        close(a, b, dtype, f"split {name}")


def test_inference_runs_the_forward_op_alone():
    x, h0, kernel, bias, _, _, _ = data("float32")
    fn = tf.function(lambda x: native.mingru(x, h0, kernel, bias, None, go_backwards=False,
                                             max_parts=1)[0])
    ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
    assert "FastrnnMinGRUForward" in ops and "FastrnnMinGRUBackward" not in ops
    np.testing.assert_array_equal(fn(tf.constant(x)).numpy(),
                                  kernels.mingru_forward(x, h0, kernel, bias)[0])


@pytest.mark.parametrize("use_bias", [True, False])
def test_empty_batch(use_bias):
    x, h0, kernel, bias, _, d_out, d_h = data("float32", use_bias)
    got = through_ops(x[:0], h0[:0], kernel, bias, None, d_out[:0], d_h[:0])
    assert got[0].shape == (0, T, H) and got[1].shape == (0, H) and got[2].shape == (0, T, I)
    assert got[3].shape == (0, H)
    for g, w in zip(got[4:], (kernel, bias)):
        if w is None:
            assert g is None
        else:
            assert g.shape == w.shape and not np.any(g.numpy())


def test_the_layer_takes_the_native_route():
    import fastrnn
    from fastrnn.ops import recurrence

    layer = fastrnn.MinGRU(H, return_sequences=True, return_state=True, device="cpu")
    x = tf.constant(data("float32")[0])
    layer(x)
    assert recurrence.route_name("cpu") == "native op"
    fn = tf.function(lambda x: layer(x))
    ops = [op.type for op in fn.get_concrete_function(x).graph.get_operations()]
    assert "FastrnnMinGRUForward" in ops


@pytest.mark.parametrize("go_backwards", [False, True])
def test_launcher_takes_read_only_arrays(go_backwards):
    # The numpy_function route hands the launchers read-only views of TF's tensors.
    args = data("float32", masked=True)
    want = through_kernels(*args, go_backwards=go_backwards)
    frozen = [None if a is None else a.copy() for a in args]
    for a in frozen:
        if a is not None:
            a.flags.writeable = False
    x, h0, kernel, bias, mask, d_out, d_h = frozen
    out, h_last, saved = kernels.mingru_forward(x, h0, kernel, bias, mask=mask,
                                                go_backwards=go_backwards, method="sequential")
    got = [out, h_last, *kernels.mingru_backward(saved, d_out, d_h)]
    for name, a, b in zip(NAMES, got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
