import numpy as np
import pytest
from conftest import DTYPES, MASKS, SHAPES, check_kernel_against_reference, make_mask

from fastrnn import kernels
from fastrnn.kernels.gru import reference
from fastrnn.testing import check_gradients


def _arrays(rng, shape, dtype, reset_after, use_bias=True, use_h0=True):
    B, T, I, H = shape
    bias_shape = (2, 3 * H) if reset_after else (3 * H,)
    return dict(
        x=rng.standard_normal((B, T, I)).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype) if use_h0 else None,
        kernel=(rng.standard_normal((I, 3 * H)) / np.sqrt(I)).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, 3 * H)) / np.sqrt(H)).astype(dtype),
        bias=(rng.standard_normal(bias_shape) * 0.3).astype(dtype) if use_bias else None,
    )


def check(rng, shape, dtype, mask_kind, go_backwards, reset_after, use_bias=True, use_h0=True,
          **activations):
    return check_kernel_against_reference(
        kernels.gru_forward, kernels.gru_backward, reference.gru_forward, reference.gru_backward,
        _arrays(rng, shape, dtype, reset_after, use_bias, use_h0), dtype, rng,
        mask=make_mask(mask_kind, shape[0], shape[1], rng), reset_after=reset_after,
        go_backwards=go_backwards, **activations)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(rng, shape, mask_kind, go_backwards, reset_after, dtype):
    check(rng, shape, dtype, mask_kind, go_backwards, reset_after)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
def test_no_bias_no_initial_state(rng, reset_after, dtype):
    check(rng, (3, 11, 4, 6), dtype, "holes", False, reset_after, use_bias=False, use_h0=False)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("activation,recurrent_activation",
                         [("relu", "hard_sigmoid"), ("sigmoid", "tanh"), ("linear", "sigmoid")])
def test_other_activations(rng, activation, recurrent_activation, reset_after):
    for dtype in DTYPES:
        check(rng, (2, 9, 3, 5), dtype, "holes", True, reset_after, activation=activation,
              recurrent_activation=recurrent_activation)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_reference_gradients_by_finite_differences(rng, reset_after, go_backwards, use_bias):
    arrays = _arrays(rng, (3, 6, 4, 5), np.float64, reset_after, use_bias)
    mask = make_mask("holes", 3, 6, rng)
    mask[1, :2] = False
    check_gradients(reference.gru_forward, reference.gru_backward, arrays, mask=mask,
                    reset_after=reset_after, go_backwards=go_backwards)


def test_reference_gradients_other_activations(rng):
    arrays = _arrays(rng, (2, 5, 3, 4), np.float64, True)
    check_gradients(reference.gru_forward, reference.gru_backward, arrays,
                    activation="sigmoid", recurrent_activation="tanh")


def test_kernel_gradients_by_finite_differences(rng):
    # The kernel itself (float64) against central differences, not only the reference.
    arrays = _arrays(rng, (2, 7, 3, 4), np.float64, False)
    check_gradients(kernels.gru_forward, kernels.gru_backward, arrays,
                    mask=make_mask("masked_first", 2, 7, rng), reset_after=False)


def test_reference_matches_keras_equations_by_hand():
    # One step, H=1, I=1, written out from the GRU equations in DESIGN.md.
    x, h0 = np.array([[[0.7]]]), np.array([[0.2]])
    W = np.array([[0.1, -0.3, 0.5]])
    U = np.array([[0.4, 0.6, -0.2]])
    b = np.array([[0.01, 0.02, 0.03], [0.04, 0.05, 0.06]])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    z = sig(0.07 + 0.01 + 0.08 + 0.04)
    r = sig(-0.21 + 0.02 + 0.12 + 0.05)
    c = np.tanh(0.35 + 0.03 + r * (-0.04 + 0.06))
    want = z * 0.2 + (1 - z) * c
    for fwd in (reference.gru_forward, kernels.gru_forward):
        out, h, _ = fwd(x, h0, W, U, b)
        np.testing.assert_allclose(out[0, 0, 0], want, rtol=1e-14)


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
    monkeypatch.setattr(_cpu_common, "BLOCK_BYTES", steps * B * 3 * H * np.dtype(dtype).itemsize)
    for reset_after in (True, False):
        check(rng, (B, T, I, H), dtype, mask_kind, go_backwards, reset_after,
              use_bias=steps == 1)


def _gate_masks(rng, batch, units, dtype, keep=0.6):
    """Keras-style per-gate dropout masks z | r | h side by side: [B, 3H] of 0 and 1/keep."""
    return ((rng.random((batch, 3 * units)) < keep) / keep).astype(dtype)


@pytest.mark.parametrize("reset_after", [True, False])
def test_recurrent_mask_reference_by_finite_differences(rng, reset_after):
    arrays = _arrays(rng, (3, 6, 4, 5), np.float64, reset_after)
    check_gradients(reference.gru_forward, reference.gru_backward, arrays,
                    mask=make_mask("holes", 3, 6, rng), reset_after=reset_after,
                    recurrent_mask=_gate_masks(rng, 3, 5, np.float64))


@pytest.mark.parametrize("reset_after", [True, False])
def test_recurrent_mask_reference_as_keras_writes_it(rng, reset_after):
    # One step written out as Keras' GRUCell (implementation=1) computes it.
    arrays = _arrays(rng, (2, 1, 3, 4), np.float64, reset_after)
    H = 4
    m = _gate_masks(rng, 2, H, np.float64)
    x, h, W, U = arrays["x"][:, 0], arrays["h0"], arrays["kernel"], arrays["recurrent_kernel"]
    b_in, b_rec = (arrays["bias"][0], arrays["bias"][1]) if reset_after else (arrays["bias"], 0 * arrays["bias"])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hz, hr, hh = h * m[:, :H], h * m[:, H:2 * H], h * m[:, 2 * H:]
    z = sig(x @ W[:, :H] + b_in[:H] + hz @ U[:, :H] + b_rec[:H])
    r = sig(x @ W[:, H:2 * H] + b_in[H:2 * H] + hr @ U[:, H:2 * H] + b_rec[H:2 * H])
    if reset_after:
        rec_h = r * (hh @ U[:, 2 * H:] + b_rec[2 * H:])
    else:
        rec_h = (r * hh) @ U[:, 2 * H:]
    c = np.tanh(x @ W[:, 2 * H:] + b_in[2 * H:] + rec_h)
    want = z * h + (1 - z) * c
    out, _, _ = reference.gru_forward(**arrays, reset_after=reset_after, recurrent_mask=m)
    np.testing.assert_allclose(out[:, 0], want, rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_recurrent_mask(rng, dtype, reset_after, go_backwards, mask_kind):
    B, T, I, H = 3, 13, 4, 6
    check_kernel_against_reference(
        kernels.gru_forward, kernels.gru_backward, reference.gru_forward, reference.gru_backward,
        _arrays(rng, (B, T, I, H), dtype, reset_after), dtype, rng,
        mask=make_mask(mask_kind, B, T, rng), reset_after=reset_after,
        go_backwards=go_backwards, recurrent_mask=_gate_masks(rng, B, H, dtype))


@pytest.mark.parametrize("steps", [1, 3])
def test_recurrent_mask_in_blocks_of_steps(rng, monkeypatch, steps):
    from fastrnn.kernels.fastmath import common as _cpu_common

    B, T, I, H = 3, 7, 4, 5
    monkeypatch.setattr(_cpu_common, "BLOCK_BYTES", steps * B * 3 * H * 4)
    for dtype in DTYPES:
        for reset_after in (True, False):
            check_kernel_against_reference(
                kernels.gru_forward, kernels.gru_backward, reference.gru_forward,
                reference.gru_backward, _arrays(rng, (B, T, I, H), dtype, reset_after, steps == 1),
                dtype, rng, mask=make_mask("holes", B, T, rng), reset_after=reset_after,
                recurrent_mask=_gate_masks(rng, B, H, dtype))


@pytest.mark.parametrize("reset_after", [True, False])
def test_recurrent_mask_kernel_by_finite_differences(rng, reset_after):
    check_gradients(kernels.gru_forward, kernels.gru_backward,
                    _arrays(rng, (2, 5, 3, 4), np.float64, reset_after),
                    mask=make_mask("holes", 2, 5, rng), reset_after=reset_after,
                    recurrent_mask=_gate_masks(rng, 2, 4, np.float64))


def test_recurrent_mask_validation():
    x = np.ones((2, 3, 1))
    with pytest.raises(ValueError, match=r"recurrent_mask.*\(2, 12\).*\(2, 4\)"):
        kernels.gru_forward(x, None, np.ones((1, 12)), np.ones((4, 12)), None,
                            recurrent_mask=np.ones((2, 4)))
