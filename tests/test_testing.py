import numpy as np
import pytest

from fastrnn import kernels, testing
from fastrnn.kernels.simple_rnn import reference


def _arrays(rng):
    return dict(x=rng.standard_normal((2, 4, 3)), h0=rng.standard_normal((2, 3)),
                kernel=rng.standard_normal((3, 3)) * 0.5,
                recurrent_kernel=rng.standard_normal((3, 3)) * 0.5, bias=None)


def test_numerical_gradient_of_a_known_function():
    a = np.array([1.0, -2.0, 0.5])
    g = testing.numerical_gradient(lambda: float(np.sum(a ** 3)), a)
    np.testing.assert_allclose(g, 3 * np.array([1.0, -2.0, 0.5]) ** 2, rtol=1e-8)
    assert np.array_equal(a, [1.0, -2.0, 0.5])  # restored


def test_numerical_gradient_rejects_float32():
    with pytest.raises(TypeError, match="float64"):
        testing.numerical_gradient(lambda: 0.0, np.zeros(3, np.float32))


def test_check_gradients_passes_and_reports_every_array():
    rng = np.random.default_rng(0)
    results = testing.check_gradients(kernels.simple_rnn_forward, kernels.simple_rnn_backward,
                                      _arrays(rng))
    assert [r.name for r in results] == ["x", "h0", "kernel", "recurrent_kernel"]
    assert all(r.ok and r.max_abs_error < 1e-8 and r.max_abs_gradient > 0.1 for r in results)


def test_check_gradients_catches_a_wrong_backward():
    def wrong_backward(tape, d_out, d_h):
        dx, dh0, dW, dU, db = reference.simple_rnn_backward(tape, d_out, d_h)
        return dx, dh0, dW, dU * 1.001, db

    with pytest.raises(AssertionError, match="recurrent_kernel.*FAILED"):
        testing.check_gradients(reference.simple_rnn_forward, wrong_backward,
                                _arrays(np.random.default_rng(1)))


def test_check_gradients_catches_zeros():
    def zero_backward(tape, d_out, d_h):
        return tuple(None if g is None else np.zeros_like(g)
                     for g in reference.simple_rnn_backward(tape, d_out, d_h))

    results = testing.check_gradients(reference.simple_rnn_forward, zero_backward,
                                      _arrays(np.random.default_rng(2)), raise_on_failure=False)
    assert not any(r.ok for r in results)
