"""Bad input gets a ValueError/TypeError naming the argument; odd layouts are copied."""

import numpy as np
import pytest

from fastrnn import kernels

B, T, I, H = 2, 5, 3, 4


def gru_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(
        x=rng.standard_normal((B, T, I)).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype),
        kernel=rng.standard_normal((I, 3 * H)).astype(dtype),
        recurrent_kernel=rng.standard_normal((H, 3 * H)).astype(dtype),
        bias=rng.standard_normal((2, 3 * H)).astype(dtype),
    )


def rnn_args(dtype=np.float32):
    a = gru_args(dtype)
    return dict(x=a["x"], h0=a["h0"], kernel=a["kernel"][:, :H].copy(),
                recurrent_kernel=a["recurrent_kernel"][:, :H].copy(), bias=a["bias"][0, :H].copy())


CELLS = {
    "gru": (kernels.gru_forward, kernels.gru_backward, gru_args),
    "simple_rnn": (kernels.simple_rnn_forward, kernels.simple_rnn_backward, rnn_args),
}


def call(cell, **changes):
    forward, _, make = CELLS[cell]
    args = make()
    mask = changes.pop("mask", None)
    args.update(changes)
    return forward(*args.values(), mask=mask)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("change,error,words", [
    (dict(x=np.zeros((B, I), np.float32)), ValueError, ["x", "rank 3", "(2, 3)"]),
    # An empty batch is answered (tests/kernels/test_empty_batch.py); empty time is not.
    (dict(x=np.zeros((0, 0, I), np.float32)), ValueError, ["x", "(0, 0, 3)", "time"]),
    (dict(x=np.zeros((0, T, 0), np.float32)), ValueError, ["x", "(0, 5, 0)"]),
    (dict(x=np.zeros((B, 0, I), np.float32)), ValueError, ["x", "(2, 0, 3)"]),
    (dict(x=np.zeros((B, T, I), np.int32)), TypeError, ["x", "int32", "float32 or float64"]),
    (dict(x=[[[1.0]]]), TypeError, ["x", "list"]),
    (dict(h0=np.zeros((B, H + 1), np.float32)), ValueError, ["h0", "(2, 4)", "(2, 5)"]),
    (dict(h0=np.zeros((B, H), np.float64)), TypeError, ["h0", "float64", "float32"]),
    (dict(kernel=np.zeros((I + 1, 3 * H), np.float32)), ValueError, ["kernel", "(4, 12)"]),
    (dict(recurrent_kernel=np.zeros((H, 2 * H), np.float32)), ValueError,
     ["recurrent_kernel", "(4, 8)"]),
    (dict(bias=np.zeros((7,), np.float32)), ValueError, ["bias", "(7,)"]),
    (dict(mask=np.ones((B, T + 1), bool)), ValueError, ["mask", "(2, 6)", "(2, 5)"]),
    (dict(mask=np.ones((B, T), np.int64)), TypeError, ["mask", "int64", "bool"]),
])
def test_bad_input(cell, change, error, words):
    if cell == "simple_rnn" and "kernel" in change:
        change = {"kernel": np.zeros((I + 1, H), np.float32)}
    with pytest.raises(error) as info:
        call(cell, **change)
    message = str(info.value)
    for word in words:
        if cell == "simple_rnn" and word in ("(4, 12)",):
            word = "(4, 4)"
        assert word in message, f"{word!r} not in {message!r}"


def test_cupy_like_input_is_named():
    class FakeCupy:
        __module__ = "cupy._core.core"

    with pytest.raises(TypeError, match="CuPy"):
        kernels.gru_forward(FakeCupy(), None, *list(gru_args().values())[2:])


def test_bad_options():
    a = gru_args()
    with pytest.raises(ValueError, match="activation='gelu'"):
        kernels.gru_forward(*a.values(), activation="gelu")
    with pytest.raises(ValueError, match="recurrent_activation='swish'"):
        kernels.gru_forward(*a.values(), recurrent_activation="swish")
    with pytest.raises(TypeError, match="reset_after"):
        kernels.gru_forward(*a.values(), reset_after="yes")
    with pytest.raises(ValueError, match=r"bias.*\(12,\)"):  # reset_after=False wants [3H]
        kernels.gru_forward(*a.values(), reset_after=False)


@pytest.mark.parametrize("cell", CELLS)
def test_bad_backward_input(cell):
    forward, backward, make = CELLS[cell]
    out, h, saved = forward(*make().values())
    with pytest.raises(TypeError, match="saved"):
        backward({"not": "saved"}, out, h)
    with pytest.raises(ValueError, match=r"d_out.*\(2, 5, 4\).*\(2, 4, 4\)"):
        backward(saved, out[:, :4], h)
    with pytest.raises(TypeError, match="d_h_last.*float64"):
        backward(saved, out, h.astype(np.float64))
    grads = backward(saved, None, None)  # None means zero upstream gradient
    assert all(np.all(g == 0) for g in grads if g is not None)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_and_fortran_inputs_are_copied(cell, dtype):
    forward, backward, make = CELLS[cell]
    args = make(dtype)
    odd = {}
    for name, a in args.items():
        if a.ndim == 3:
            wide = np.zeros(a.shape[:2] + (2 * a.shape[2],), dtype)
            wide[..., ::2] = a
            odd[name] = wide[..., ::2]  # strided view
        else:
            odd[name] = np.asfortranarray(a) if a.ndim == 2 else a
    assert not odd["x"].flags.c_contiguous
    mask = np.ones((B, T), bool)
    mask[:, 1] = False
    want = forward(*args.values(), mask=mask)
    got = forward(*odd.values(), mask=np.asfortranarray(mask))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    d_out = np.ones_like(want[0])[:, ::-1]  # non-contiguous upstream gradient
    for g, w in zip(backward(got[2], d_out, None), backward(want[2], d_out.copy(), None)):
        np.testing.assert_array_equal(g, w)


def test_inputs_are_not_modified():
    args = gru_args()
    copies = {k: v.copy() for k, v in args.items()}
    out, h, saved = kernels.gru_forward(*args.values())
    kernels.gru_backward(saved, np.ones_like(out), np.ones_like(h))
    for k in args:
        np.testing.assert_array_equal(args[k], copies[k])


def test_backward_can_run_twice():
    out, h, saved = kernels.gru_forward(*gru_args().values())
    first = kernels.gru_backward(saved, np.ones_like(out), None)
    second = kernels.gru_backward(saved, np.ones_like(out), None)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_pool_never_hands_out_memory_still_in_use():
    from fastrnn.kernels.batch import pool as _pool

    first = _pool.empty((512, 1024), np.float32)
    view = first[100:]
    del first
    second = _pool.empty((512, 1024), np.float32)  # `view` still holds the first buffer
    assert not np.shares_memory(view, second)
    kept = [_pool.empty((512, 1024), np.float32) for _ in range(100)]
    assert len(_pool._buffers) <= _pool._MAX_BUFFERS
    assert not any(np.shares_memory(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])


@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
@pytest.mark.parametrize("batch,time", [(8, 40), (64, 100)])  # 80 KiB and pooled outputs
def test_outputs_are_64_byte_aligned(cell, batch, time):
    # TensorFlow takes a py_func's result without a copy only when it is 64-byte
    # aligned, so everything of 64 KiB or more that a layer hands back to TF
    # (outputs, final states, the carried `saved` arrays, gradients of x, initial
    # states and weights) is; smaller copies cost less than aligning.
    from fastrnn.kernels.batch import pool as _pool
    from fastrnn.kernels.entry import saved as _saved

    rng = np.random.default_rng(0)
    I, H = 16, 64
    gates = {"gru": 3, "lstm": 4, "simple_rnn": 1, "mingru": 2}[cell]
    x = rng.standard_normal((batch, time, I)).astype(np.float32)
    W = rng.standard_normal((I, gates * H)).astype(np.float32) * 0.3
    forward = getattr(kernels, f"{cell}_forward")
    backward = getattr(kernels, f"{cell}_backward")
    n_states = 2 if cell == "lstm" else 1
    if cell == "mingru":
        *outs, saved = forward(x, None, W, None)
        carried = [saved.gates]
    else:
        U = rng.standard_normal((H, gates * H)).astype(np.float32) * 0.3
        *outs, saved = forward(x, *[None] * n_states, W, U, None)
        carried = _saved.saved_arrays(saved)
    grads = backward(saved, np.ones_like(outs[0]), *[None] * n_states)
    arrays = [a for a in outs + carried + list(grads)
              if a is not None and a.nbytes >= _pool._ALIGN_MIN_BYTES]
    assert len(arrays) >= 2
    assert [a.ctypes.data % 64 for a in arrays] == [0] * len(arrays)


def test_outputs_survive_later_calls():
    # Pooled buffers behind one call's outputs and `saved` are not reused by the next
    # call. Shapes large enough (>= 1 MiB per array) to come from the pool.
    rng = np.random.default_rng(0)
    B, T, I, H = 64, 100, 16, 64
    args = dict(x=rng.standard_normal((B, T, I)).astype(np.float32), h0=None,
                kernel=rng.standard_normal((I, 3 * H)).astype(np.float32) * 0.3,
                recurrent_kernel=rng.standard_normal((H, 3 * H)).astype(np.float32) * 0.3,
                bias=None)
    out, h, saved = kernels.gru_forward(*args.values())
    assert out.nbytes >= 1 << 20
    before = out.copy()
    grads = kernels.gru_backward(saved, np.ones_like(out), None)
    other = dict(args, x=args["x"][::-1].copy() * 2.0)  # different numbers everywhere
    for _ in range(3):
        kernels.gru_forward(*other.values())
    np.testing.assert_array_equal(out, before)
    again = kernels.gru_backward(saved, np.ones_like(out), None)
    for a, b in zip(grads, again):
        np.testing.assert_array_equal(a, b)


def test_cupy_arrays_without_the_cuda_stack_get_a_clear_error(monkeypatch):
    # A CuPy array reaching fastrnn.kernels on a machine where the CUDA kernels
    # cannot run: a RuntimeError saying what is missing, not a crash in Numba.
    import sys
    import types

    from fastrnn.kernels.gpu import cuda as _cuda

    fake = types.ModuleType("cupy")

    class ndarray:  # noqa: N801 - stands in for cupy.ndarray
        pass

    fake.ndarray = ndarray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_cuda, "missing_reason", lambda: "no CUDA GPU is visible")
    with pytest.raises(RuntimeError, match="gru_forward got CuPy arrays, but no CUDA GPU is visible"):
        kernels.gru_forward(ndarray(), None, None, None, None)
    with pytest.raises(RuntimeError, match="linear_scan got CuPy arrays"):
        kernels.linear_scan(ndarray(), ndarray())
