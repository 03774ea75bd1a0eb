import numpy as np
import pytest
from conftest import DTYPES, MASKS, SHAPES, check_kernel_against_reference, make_mask

from fastrnn import kernels
from fastrnn.kernels.lstm import reference
from fastrnn.testing import check_gradients


def _arrays(rng, shape, dtype, use_bias=True, use_states=True):
    B, T, I, H = shape
    return dict(
        x=rng.standard_normal((B, T, I)).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype) if use_states else None,
        c0=rng.standard_normal((B, H)).astype(dtype) if use_states else None,
        kernel=(rng.standard_normal((I, 4 * H)) / np.sqrt(I)).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype),
        bias=(rng.standard_normal(4 * H) * 0.3).astype(dtype) if use_bias else None,
    )


def check(rng, shape, dtype, mask_kind, go_backwards, use_bias=True, use_states=True, **acts):
    return check_kernel_against_reference(
        kernels.lstm_forward, kernels.lstm_backward, reference.lstm_forward,
        reference.lstm_backward, _arrays(rng, shape, dtype, use_bias, use_states), dtype, rng,
        mask=make_mask(mask_kind, shape[0], shape[1], rng), go_backwards=go_backwards, **acts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(rng, shape, mask_kind, go_backwards, dtype):
    check(rng, shape, dtype, mask_kind, go_backwards)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias_no_initial_states(rng, dtype):
    check(rng, (3, 11, 4, 6), dtype, "holes", False, use_bias=False, use_states=False)


@pytest.mark.parametrize("activation,recurrent_activation",
                         [("relu", "hard_sigmoid"), ("sigmoid", "tanh"), ("linear", "sigmoid")])
def test_other_activations(rng, activation, recurrent_activation):
    for dtype in DTYPES:
        check(rng, (2, 9, 3, 5), dtype, "holes", True, activation=activation,
              recurrent_activation=recurrent_activation)


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_reference_gradients_by_finite_differences(rng, go_backwards, use_bias):
    arrays = _arrays(rng, (3, 6, 4, 5), np.float64, use_bias)
    mask = make_mask("holes", 3, 6, rng)
    mask[1, :2] = False
    check_gradients(reference.lstm_forward, reference.lstm_backward, arrays, mask=mask,
                    go_backwards=go_backwards)


def test_reference_matches_the_equations_by_hand():
    x, h0, c0 = np.array([[[0.7]]]), np.array([[0.2]]), np.array([[-0.4]])
    W = np.array([[0.1, -0.3, 0.5, 0.2]])
    U = np.array([[0.4, 0.6, -0.2, 0.3]])
    b = np.array([0.01, 1.0, 0.03, 0.04])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i = sig(0.07 + 0.08 + 0.01)
    f = sig(-0.21 + 0.12 + 1.0)
    g = np.tanh(0.35 - 0.04 + 0.03)
    o = sig(0.14 + 0.06 + 0.04)
    c = f * -0.4 + i * g
    for forward in (reference.lstm_forward, kernels.lstm_forward):
        out, h, c_last, _ = forward(x, h0, c0, W, U, b)
        np.testing.assert_allclose([out[0, 0, 0], c_last[0, 0]], [o * np.tanh(c), c], rtol=1e-14)


def test_validation():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 5\)"):
        kernels.lstm_forward(x, None, np.ones((2, 4)), np.ones((4, 20)), np.ones((5, 20)), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(20,\)"):
        kernels.lstm_forward(x, None, None, np.ones((4, 20)), np.ones((5, 20)), np.ones(5))


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
    monkeypatch.setattr(_cpu_common, "BLOCK_BYTES", steps * B * 4 * H * np.dtype(dtype).itemsize)
    check(rng, (B, T, I, H), dtype, mask_kind, go_backwards, use_bias=steps == 1)


def _gate_masks(rng, batch, units, gates, dtype, keep=0.6):
    """Keras-style per-gate dropout masks side by side: [B, G*H] of 0 and 1/keep."""
    return ((rng.random((batch, gates * units)) < keep) / keep).astype(dtype)


def test_recurrent_mask_reference_by_finite_differences(rng):
    arrays = _arrays(rng, (3, 6, 4, 5), np.float64)
    mask = make_mask("holes", 3, 6, rng)
    check_gradients(reference.lstm_forward, reference.lstm_backward, arrays, mask=mask,
                    recurrent_mask=_gate_masks(rng, 3, 5, 4, np.float64))


def test_recurrent_mask_reference_per_gate_by_hand(rng):
    # Masking only gate g's copy of h changes only gate g's recurrent product.
    arrays = _arrays(rng, (2, 1, 3, 4), np.float64)
    H = 4
    for g in range(4):
        m = np.ones((2, 4 * H))
        m[:, g * H:(g + 1) * H] = 0.0
        out_m, _, _, _ = reference.lstm_forward(**arrays, recurrent_mask=m)
        U = arrays["recurrent_kernel"].copy()
        U[:, g * H:(g + 1) * H] = 0.0
        out_u, _, _, _ = reference.lstm_forward(**{**arrays, "recurrent_kernel": U})
        np.testing.assert_allclose(out_m, out_u, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_recurrent_mask(rng, dtype, go_backwards, mask_kind):
    B, T, I, H = 3, 13, 4, 6
    check_kernel_against_reference(
        kernels.lstm_forward, kernels.lstm_backward, reference.lstm_forward,
        reference.lstm_backward, _arrays(rng, (B, T, I, H), dtype), dtype, rng,
        mask=make_mask(mask_kind, B, T, rng), go_backwards=go_backwards,
        recurrent_mask=_gate_masks(rng, B, H, 4, dtype))


@pytest.mark.parametrize("steps", [1, 3])
def test_recurrent_mask_in_blocks_of_steps(rng, monkeypatch, steps):
    from fastrnn.kernels.fastmath import common as _cpu_common

    B, T, I, H = 3, 7, 4, 5
    monkeypatch.setattr(_cpu_common, "BLOCK_BYTES", steps * B * 4 * H * 4)
    for dtype in DTYPES:
        check_kernel_against_reference(
            kernels.lstm_forward, kernels.lstm_backward, reference.lstm_forward,
            reference.lstm_backward, _arrays(rng, (B, T, I, H), dtype, steps == 1), dtype, rng,
            mask=make_mask("holes", B, T, rng), recurrent_mask=_gate_masks(rng, B, H, 4, dtype))


def test_recurrent_mask_kernel_by_finite_differences(rng):
    check_gradients(kernels.lstm_forward, kernels.lstm_backward,
                    _arrays(rng, (2, 5, 3, 4), np.float64), mask=make_mask("holes", 2, 5, rng),
                    recurrent_mask=_gate_masks(rng, 2, 4, 4, np.float64))


def test_recurrent_mask_validation():
    x = np.ones((2, 3, 1))
    with pytest.raises(ValueError, match=r"recurrent_mask.*\(2, 16\).*\(2, 4\)"):
        kernels.lstm_forward(x, None, None, np.ones((1, 16)), np.ones((4, 16)), None,
                             recurrent_mask=np.ones((2, 4)))
