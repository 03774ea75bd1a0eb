import numpy as np
import pytest
from conftest import DTYPES, assert_close

from fastrnn import kernels
from fastrnn.kernels.scan import reference
from fastrnn.testing import check_gradients

LENGTHS = [1, 2, 3, 97, 4097]


def _inputs(rng, shape, dtype):
    a = rng.uniform(0.0, 1.0, shape).astype(dtype)  # 0 < a < 1, as 1 - sigmoid gives
    b = rng.standard_normal(shape).astype(dtype)
    h0 = rng.standard_normal((shape[0], shape[2])).astype(dtype)
    return a, b, h0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["sequential", "blelloch", "auto"])
@pytest.mark.parametrize("time", LENGTHS)
@pytest.mark.parametrize("batch,units", [(1, 5), (3, 16)])
def test_scan_against_reference(rng, batch, units, time, method, dtype):
    a, b, h0 = _inputs(rng, (batch, time, units), dtype)
    h = kernels.linear_scan(a, b, h0, method=method)
    assert h.dtype == dtype
    assert_close("h", h, reference.linear_scan(a, b, h0), dtype)
    d_h = rng.standard_normal(h.shape).astype(dtype)
    grads = kernels.linear_scan_backward(a, h, h0, d_h, method=method)
    want = reference.linear_scan_backward(a, reference.linear_scan(a, b, h0), h0, d_h)
    for name, g, w in zip(["da", "db", "dh0"], grads, want):
        assert g.dtype == dtype
        assert_close(name, g, w, dtype)


def test_blelloch_chunk_edges(rng):
    # Chunk sizes that do and do not divide T, chunks of one step, more chunks than steps.
    from fastrnn.kernels.scan.cpu import run_scan

    a, b, h0 = _inputs(rng, (2, 37, 3), np.float64)
    want = reference.linear_scan(a, b, h0)
    for chunk in (1, 2, 5, 36, 37, 64):
        for reverse in (False, True):
            out = run_scan(a, b, h0, np.empty_like(a), reverse, "blelloch", chunk)
            seq = run_scan(a, b, h0, np.empty_like(a), reverse, "sequential")
            np.testing.assert_allclose(out, seq, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(run_scan(a, b, h0, np.empty_like(a), False, "blelloch", chunk),
                                   want, rtol=1e-13, atol=1e-13)


def test_reference_backward_by_finite_differences(rng):
    a, b, h0 = _inputs(rng, (2, 6, 3), np.float64)

    def forward(a, b, h0):
        h = reference.linear_scan(a, b, h0)
        return h, (a, h, h0)

    def backward(saved, d_h):
        return reference.linear_scan_backward(*saved, d_h)

    check_gradients(forward, backward, dict(a=a, b=b, h0=h0))


def test_scan_validation():
    a = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"b must have shape \(2, 3, 4\)"):
        kernels.linear_scan(a, np.ones((2, 3, 5)))
    with pytest.raises(TypeError, match="b has dtype float32"):
        kernels.linear_scan(a, np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="method must be one of"):
        kernels.linear_scan(a, a, method="parallel")
    with pytest.raises(ValueError, match=r"a must have shape \[batch, time, units\]"):
        kernels.linear_scan(np.ones((2, 3)), np.ones((2, 3)))
