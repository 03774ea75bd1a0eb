"""Numerical gradient checks for fastrnn kernels (and anything with the same protocol).

The kernels and references share one protocol:

    *outputs, saved = forward(*arrays, **options)
    grads = backward(saved, *d_outputs)      # one gradient per array, None for None

`check_gradients` builds the scalar loss ``L = sum_i <outputs_i, G_i>`` with fixed
random ``G_i``, differentiates it by central finite differences in float64 with
respect to every array, and compares with what ``backward`` returns for the same
upstream gradients ``G_i``. This module does not import TensorFlow.

Example:
    >>> import numpy as np
    >>> from fastrnn import kernels, testing
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))
    >>> arrays = dict(x=x, h0=rng.standard_normal((2, 4)),
    ...               kernel=rng.standard_normal((3, 12)) * 0.5,
    ...               recurrent_kernel=rng.standard_normal((4, 12)) * 0.5,
    ...               bias=rng.standard_normal((2, 12)))
    >>> report = testing.check_gradients(kernels.gru_forward, kernels.gru_backward,
    ...                                  arrays, mask=np.ones((2, 5), bool))
    >>> all(r.ok for r in report)
    True
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["GradientCheckResult", "check_gradients", "numerical_gradient"]


def numerical_gradient(loss, array, delta=1e-6):
    """Central-difference gradient of the scalar ``loss()`` with respect to ``array``.

    Args:
        loss: a callable of no arguments returning a float; it must read
            ``array`` (which is perturbed in place, one entry at a time, and
            restored afterwards).
        array: a writable float64 ``numpy.ndarray``.
        delta: the step; the truncation error is O(delta**2) and the rounding
            error O(eps / delta), so 1e-6 suits float64 losses of order one.

    Returns:
        A float64 array of ``array``'s shape.
    """
    if not isinstance(array, np.ndarray) or array.dtype != np.float64:
        raise TypeError("array must be a float64 numpy.ndarray (finite differences in "
                        f"float32 are meaningless), got {getattr(array, 'dtype', type(array))}")
    if not array.flags.writeable:
        raise ValueError("array must be writeable: it is perturbed in place")
    grad = np.zeros(array.shape)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        raise ValueError("array must be contiguous so it can be perturbed in place")
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + delta
        plus = loss()
        flat[i] = saved - delta
        minus = loss()
        flat[i] = saved
        grad.flat[i] = (plus - minus) / (2.0 * delta)
    return grad


@dataclass
class GradientCheckResult:
    """One array's comparison: analytic (from backward) against numerical."""

    name: str
    max_abs_error: float
    max_abs_gradient: float
    ok: bool

    def __str__(self):
        flag = "ok" if self.ok else "FAILED"
        return (f"{self.name:>18}: max |analytic - numerical| = {self.max_abs_error:.3e} "
                f"(max |grad| {self.max_abs_gradient:.3e}) {flag}")


def check_gradients(forward, backward, arrays, *, delta=1e-6, atol=1e-7, rtol=1e-6,
                    seed=0, raise_on_failure=True, **options):
    """Compare ``backward`` with central differences of ``forward`` for every array.

    Args:
        forward: ``forward(*arrays, **options) -> (*outputs, saved)``.
        backward: ``backward(saved, *d_outputs) -> grads``, one per array in
            ``arrays`` (None where the array is None).
        arrays: a dict, in ``forward``'s positional order, name -> float array
            or None. Arrays are converted to float64 copies; use small shapes
            (every entry costs two forward calls).
        delta, atol, rtol: step and tolerance; an entry passes when
            ``|analytic - numerical| <= atol + rtol * |numerical|``.
        seed: seeds the random upstream gradients.
        raise_on_failure: raise AssertionError listing every array when any fails.
        **options: passed to ``forward`` unchanged (mask, go_backwards, ...).

    Returns:
        A list of GradientCheckResult, one per non-None array.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array in forward's order, "
                        f"got {type(arrays).__name__}")
    names = list(arrays)
    values = [None if a is None else np.array(a, dtype=np.float64, copy=True)
              for a in arrays.values()]
    first = forward(*values, **options)
    outputs = first[:-1]
    rng = np.random.default_rng(seed)
    upstream = [rng.standard_normal(np.shape(o)) for o in outputs]

    def loss():
        outs = forward(*values, **options)[:-1]
        return float(sum(np.sum(np.asarray(o, np.float64) * g) for o, g in zip(outs, upstream)))

    analytic = backward(first[-1], *upstream)
    if len(analytic) != len(values):
        raise ValueError(f"backward returned {len(analytic)} gradients for {len(values)} arrays")
    results = []
    for name, value, grad in zip(names, values, analytic):
        if value is None:
            if grad is not None:
                raise AssertionError(f"{name} is None but backward returned a gradient for it")
            continue
        numerical = numerical_gradient(loss, value, delta)
        grad = np.asarray(grad, np.float64)
        if grad.shape != numerical.shape:
            raise AssertionError(f"{name}: gradient has shape {grad.shape}, expected {numerical.shape}")
        err = np.abs(grad - numerical)
        ok = bool(np.all(err <= atol + rtol * np.abs(numerical)))
        results.append(GradientCheckResult(name, float(err.max(initial=0.0)),
                                           float(np.abs(numerical).max(initial=0.0)), ok))
    if raise_on_failure and not all(r.ok for r in results):
        raise AssertionError("gradient check failed:\n" + "\n".join(str(r) for r in results))
    return results
