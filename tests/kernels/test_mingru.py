import numpy as np
import pytest
from conftest import DTYPES, MASKS, SHAPES, check_kernel_against_reference, make_mask

from fastrnn import kernels
from fastrnn.kernels.mingru import reference
from fastrnn.testing import check_gradients


def _arrays(rng, shape, dtype, use_bias=True, use_h0=True):
    B, T, I, H = shape
    return dict(
        x=rng.standard_normal((B, T, I)).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype) if use_h0 else None,
        kernel=(rng.standard_normal((I, 2 * H)) / np.sqrt(I)).astype(dtype),
        bias=(rng.standard_normal(2 * H) * 0.3).astype(dtype) if use_bias else None,
    )


def check(rng, shape, dtype, mask_kind, go_backwards, method, **kw):
    def forward(*args, **options):
        return kernels.mingru_forward(*args, method=method, **options)

    return check_kernel_against_reference(
        forward, kernels.mingru_backward, reference.mingru_forward, reference.mingru_backward,
        _arrays(rng, shape, dtype, **kw), dtype, rng,
        mask=make_mask(mask_kind, shape[0], shape[1], rng), go_backwards=go_backwards)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["sequential", "blelloch"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES + [(2, 4097, 3, 4)])
def test_matches_reference(rng, shape, mask_kind, go_backwards, method, dtype):
    check(rng, shape, dtype, mask_kind, go_backwards, method)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("rows", [1, 2])
def test_sequential_in_blocks_of_rows(rng, monkeypatch, rows, mask_kind, go_backwards, dtype):
    # The sequential forward and backward go through the batch BLOCK_BYTES of gates
    # (of gradient) at a time; blocks of 1 and 2 rows over 5 rows (the last block
    # short) against the reference, with and without bias.
    from fastrnn.kernels.mingru import cpu

    B, T, I, H = 5, 9, 3, 4
    monkeypatch.setattr(cpu, "BLOCK_BYTES", rows * T * 2 * H * np.dtype(dtype).itemsize)
    check(rng, (B, T, I, H), dtype, mask_kind, go_backwards, "sequential",
          use_bias=rows == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias_no_initial_state(rng, dtype):
    check(rng, (3, 11, 4, 6), dtype, "holes", False, "auto", use_bias=False, use_h0=False)


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_reference_gradients_by_finite_differences(rng, go_backwards, use_bias):
    arrays = _arrays(rng, (3, 6, 4, 5), np.float64, use_bias)
    mask = make_mask("holes", 3, 6, rng)
    mask[1, :2] = False
    check_gradients(reference.mingru_forward, reference.mingru_backward, arrays, mask=mask,
                    go_backwards=go_backwards)


def test_reference_matches_the_equations_by_hand():
    x, h0 = np.array([[[0.7]]]), np.array([[0.2]])
    W, b = np.array([[0.3, -0.5]]), np.array([0.1, 0.05])
    z = 1 / (1 + np.exp(-(0.21 + 0.1)))
    want = (1 - z) * 0.2 + z * (-0.35 + 0.05)
    for forward in (reference.mingru_forward, kernels.mingru_forward):
        out, h, _ = forward(x, h0, W, b)
        np.testing.assert_allclose(out[0, 0, 0], want, rtol=1e-14)


def test_validation():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"kernel must have shape \[input_features, 2 \* units\]"):
        kernels.mingru_forward(x, None, np.ones((4, 5)), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        kernels.mingru_forward(x, None, np.ones((4, 6)), np.ones(3))
    with pytest.raises(ValueError, match="method must be"):
        kernels.mingru_forward(x, None, np.ones((4, 6)), None, method="log")
