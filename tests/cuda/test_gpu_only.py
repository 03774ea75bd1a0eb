"""Tests that need a real GPU (CuPy arrays); they skip cleanly without one.

Run on a GPU machine with: FASTRNN_TEST_GPU=1 python -m pytest tests/cuda
"""

import numpy as np
import pytest
from conftest import GPU_MODE, assert_close

pytestmark = pytest.mark.skipif(
    not GPU_MODE, reason="needs a CUDA GPU: FASTRNN_TEST_GPU=1 python -m pytest tests/cuda")

CELLS = {
    "simple_rnn": (1, (lambda H: (H,))),
    "gru": (3, (lambda H: (2, 3 * H))),
    "lstm": (4, (lambda H: (4 * H,))),
}


def _run(kernels, xp, cell, arrays, d_out):
    forward = getattr(kernels, f"{cell}_forward")
    backward = getattr(kernels, f"{cell}_backward")
    x, W, U, b = (xp.asarray(a) for a in arrays)
    states = [None, None] if cell == "lstm" else [None]
    *outs, saved = forward(x, *states, W, U, b)
    grads = backward(saved, xp.asarray(d_out), *([None] * len(states)))
    return outs, [g for g in grads if g is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(CELLS))
def test_public_kernels_take_cupy_and_match_the_cpu(cell, dtype):
    import cupy

    from fastrnn import kernels

    B, T, I, H = 64, 100, 128, 256
    gates, bias_shape = CELLS[cell]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((B, T, I)).astype(dtype),
              (rng.standard_normal((I, gates * H)) / np.sqrt(I)).astype(dtype),
              (rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype),
              (rng.standard_normal(bias_shape(H)) * 0.3).astype(dtype)]
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    gpu_outs, gpu_grads = _run(kernels, cupy, cell, arrays, d_out)
    cpu_outs, cpu_grads = _run(kernels, np, cell, arrays, d_out)
    for got, want in zip(gpu_outs + gpu_grads, cpu_outs + cpu_grads):
        assert isinstance(got, cupy.ndarray) and got.dtype == dtype
        # Two float32 kernels differ by twice a kernel's rounding from the truth.
        assert_close(cell, 0.5 * got.get(), 0.5 * want, dtype)


def test_mingru_and_scan_take_cupy():
    import cupy

    from fastrnn import kernels

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3000, 16)).astype(np.float32)
    W = (rng.standard_normal((16, 64)) / 4).astype(np.float32)
    out, h, saved = kernels.mingru_forward(cupy.asarray(x), None, cupy.asarray(W), None)
    want, _, _ = kernels.mingru_forward(x, None, W, None)
    assert isinstance(out, cupy.ndarray)
    assert_close("mingru", 0.5 * out.get(), 0.5 * want, np.float32)
    a = cupy.asarray(rng.uniform(0, 1, (2, 5000, 8)).astype(np.float32))
    h = kernels.linear_scan(a, a)
    assert isinstance(h, cupy.ndarray)
    assert_close("scan", 0.5 * h.get(), 0.5 * kernels.linear_scan(a.get(), a.get()), np.float32)
