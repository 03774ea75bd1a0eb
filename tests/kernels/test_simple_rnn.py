import numpy as np
import pytest
from conftest import DTYPES, MASKS, SHAPES, check_kernel_against_reference, make_mask

from fastrnn import kernels
from fastrnn.kernels.simple_rnn import reference


def _case(rng, shape, dtype, use_bias=True, use_h0=True):
    B, T, I, H = shape
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) if use_h0 else None
    W = (rng.standard_normal((I, H)) / np.sqrt(I)).astype(dtype)
    U = (rng.standard_normal((H, H)) * 0.9 / np.sqrt(H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype) * 0.3 if use_bias else None
    return x, h0, W, U, b


def check_against_reference(rng, shape, dtype, mask_kind, go_backwards, activation,
                            use_bias=True, use_h0=True):
    x, h0, W, U, b = _case(rng, shape, dtype, use_bias, use_h0)
    return check_kernel_against_reference(
        kernels.simple_rnn_forward, kernels.simple_rnn_backward,
        reference.simple_rnn_forward, reference.simple_rnn_backward,
        dict(x=x, h0=h0, kernel=W, recurrent_kernel=U, bias=b), dtype, rng,
        activation=activation, mask=make_mask(mask_kind, shape[0], shape[1], rng),
        go_backwards=go_backwards)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(rng, shape, mask_kind, go_backwards, dtype):
    check_against_reference(rng, shape, dtype, mask_kind, go_backwards, "tanh")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "linear", "hard_sigmoid", None])
def test_activations(rng, activation, dtype):
    check_against_reference(rng, (3, 23, 4, 9), dtype, "holes", False, activation)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias_no_initial_state(rng, dtype):
    check_against_reference(rng, (2, 9, 3, 6), dtype, "holes", True, "tanh",
                            use_bias=False, use_h0=False)


def test_reference_gradients_by_finite_differences(rng):
    from fastrnn.testing import check_gradients

    for activation in ["tanh", "relu", "sigmoid", "linear", "hard_sigmoid"]:
        for go_backwards in (False, True):
            x, h0, W, U, b = _case(rng, (3, 6, 4, 5), np.float64)
            mask = make_mask("holes", 3, 6, rng)
            mask[0, :] = False
            check_gradients(reference.simple_rnn_forward, reference.simple_rnn_backward,
                            dict(x=x, h0=h0, kernel=W, recurrent_kernel=U, bias=b),
                            activation=activation, mask=mask, go_backwards=go_backwards)


def test_masked_outputs_follow_keras():
    # Row 0: masked at step 0 (output 0, state h0 kept), then unmasked, then masked
    # (output and state repeat step 1's).
    x = np.ones((1, 3, 1))
    h0 = np.full((1, 1), 0.5)
    W, U, b = np.ones((1, 1)), np.ones((1, 1)), np.zeros(1)
    mask = np.array([[False, True, False]])
    out, h, _ = kernels.simple_rnn_forward(x, h0, W, U, b, mask=mask)
    h1 = np.tanh(1.0 + 0.5)
    np.testing.assert_allclose(out[0, :, 0], [0.0, h1, h1], rtol=1e-15)
    np.testing.assert_allclose(h[0, 0], h1, rtol=1e-15)


def test_go_backwards_outputs_in_processing_order():
    rng = np.random.default_rng(0)
    x, h0, W, U, b = _case(rng, (2, 5, 3, 4), np.float64)
    out_b, h_b, _ = kernels.simple_rnn_forward(x, h0, W, U, b, go_backwards=True)
    out_f, h_f, _ = kernels.simple_rnn_forward(x[:, ::-1].copy(), h0, W, U, b)
    np.testing.assert_array_equal(out_b, out_f)
    np.testing.assert_array_equal(h_b, h_f)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_recurrent_mask(rng, dtype, go_backwards):
    # Keras' recurrent dropout: h_{t-1} * m before U, one [B, H] mask for every step.
    x, h0, W, U, b = _case(rng, (3, 17, 4, 6), dtype)
    m = ((rng.random((3, 6)) > 0.4) / 0.6).astype(dtype)
    check_kernel_against_reference(
        kernels.simple_rnn_forward, kernels.simple_rnn_backward,
        reference.simple_rnn_forward, reference.simple_rnn_backward,
        dict(x=x, h0=h0, kernel=W, recurrent_kernel=U, bias=b), dtype, rng,
        mask=make_mask("holes", 3, 17, rng), go_backwards=go_backwards, recurrent_mask=m)


def test_recurrent_mask_reference_by_finite_differences(rng):
    from fastrnn.testing import check_gradients

    x, h0, W, U, b = _case(rng, (2, 5, 3, 4), np.float64)
    m = (rng.random((2, 4)) > 0.5) * 2.0
    check_gradients(reference.simple_rnn_forward, reference.simple_rnn_backward,
                    dict(x=x, h0=h0, kernel=W, recurrent_kernel=U, bias=b),
                    mask=make_mask("holes", 2, 5, rng), recurrent_mask=m)


def test_recurrent_mask_validation():
    x = np.ones((2, 3, 1))
    with pytest.raises(ValueError, match=r"recurrent_mask.*\(2, 4\).*\(2, 3\)"):
        kernels.simple_rnn_forward(x, None, np.ones((1, 4)), np.ones((4, 4)), None,
                                   recurrent_mask=np.ones((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("steps", [1, 3])
def test_backward_in_blocks_of_steps(rng, monkeypatch, steps, mask_kind, go_backwards, dtype):
    # The backward hands its gradients to the dx and weight GEMMs a block of steps
    # at a time (_cpu_common.BLOCK_BYTES); blocks of 1 and 3 steps over T=7 (the
    # last block short) against the reference.
    from fastrnn.kernels.fastmath import common as _cpu_common

    B, T, I, H = 3, 7, 4, 5
    monkeypatch.setattr(_cpu_common, "BLOCK_BYTES", steps * B * H * np.dtype(dtype).itemsize)
    check_against_reference(rng, (B, T, I, H), dtype, mask_kind, go_backwards, "tanh",
                            use_bias=steps == 1)
    x, h0, W, U, b = _case(rng, (B, T, I, H), dtype)
    m = ((rng.random((B, H)) > 0.4) / 0.6).astype(dtype)  # and under recurrent dropout
    check_kernel_against_reference(
        kernels.simple_rnn_forward, kernels.simple_rnn_backward,
        reference.simple_rnn_forward, reference.simple_rnn_backward,
        dict(x=x, h0=h0, kernel=W, recurrent_kernel=U, bias=b), dtype, rng,
        mask=make_mask(mask_kind, B, T, rng), go_backwards=go_backwards, recurrent_mask=m)
