import numpy as np
import pytest

# One tolerance table per dtype: the worst relative error max|a - b| / max|b|
# allowed between a kernel and its float64 reference, per compared array.
# float64: kernels and references differ only in summation order (BLAS blocking,
# GEMMs over all steps vs per-step sums) and in the vectorized exp/tanh; the
# worst measured over the whole grid was 3.2e-13 (SimpleRNN gradients, T=503).
# float32: every step rounds; the worst measured was 1.2e-6 (GRU d_bias, a sum
# over B*T terms). Both limits are about 3-4x the worst measured.
RTOL = {np.dtype(np.float32): 5e-6, np.dtype(np.float64): 1e-12}


def assert_close(name, got, want, dtype):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    tol = RTOL[np.dtype(dtype)]
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e} ({np.dtype(dtype)})"
    return err


def make_mask(kind, batch, time, rng):
    """Masks that break things: holes, an all-masked row, rows masked at the first step."""
    if kind == "none":
        return None
    if kind == "holes":
        mask = rng.random((batch, time)) > 0.3
    elif kind == "all_masked_row":
        mask = rng.random((batch, time)) > 0.3
        mask[0] = False
    elif kind == "masked_first":
        # Keras-style right padding and masked first steps (either end, for go_backwards).
        mask = np.ones((batch, time), bool)
        mask[:, 0] = False
        mask[:, -1] = False
        if time > 3:
            mask[-1, time // 2:] = False
    else:
        raise ValueError(kind)
    return mask


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


# Shapes that break blocking: B=1, T=1, H=1, primes, I != H, long T.
SHAPES = [
    (1, 1, 1, 1),
    (1, 7, 3, 5),
    (3, 1, 4, 2),
    (2, 13, 5, 7),
    (4, 31, 3, 17),
    (2, 503, 3, 11),
]
MASKS = ["none", "holes", "all_masked_row", "masked_first"]
DTYPES = [np.float32, np.float64]


def check_kernel_against_reference(forward, backward, ref_forward, ref_backward, arrays,
                                   dtype, rng, **options):
    """Outputs, final states and every gradient of a kernel against its reference.

    `arrays` is the dict of positional arrays (x, h0, weights...); the gradient
    names are 'd' + each name. Upstream gradients are random.
    """
    args = list(arrays.values())
    *outs, saved = forward(*args, **options)
    *r_outs, tape = ref_forward(*args, **options)
    worst = {}
    for i, (o, r) in enumerate(zip(outs, r_outs)):
        assert o.dtype == dtype
        worst[f"output{i}"] = assert_close(f"output {i}", o, r, dtype)
    upstream = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    grads = backward(saved, *upstream)
    r_grads = ref_backward(tape, *upstream)
    assert len(grads) == len(arrays)
    for name, g, r in zip(arrays, grads, r_grads):
        if r is None:  # bias=None: no gradient. h0=None still gets dh0 (of the zeros).
            assert g is None, f"d_{name} should be None"
            continue
        assert g.dtype == dtype, f"d_{name} has dtype {g.dtype}"
        worst[f"d_{name}"] = assert_close(f"d_{name}", g, r, dtype)
    return worst
