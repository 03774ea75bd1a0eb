import os
import zlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up chatter out
# The CUDA kernels run under Numba's CUDA simulator (NumPy arrays, tiny shapes)
# unless FASTRNN_TEST_GPU=1 asks for the real GPU. Set before numba.cuda is imported.
GPU_MODE = os.environ.get("FASTRNN_TEST_GPU") == "1"
if not GPU_MODE:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# One tolerance table per dtype: the worst error max|a - b| / max(max|b|, 1)
# allowed between a kernel and its float64 reference, per compared array (see
# assert_close for the floor at 1).
# float64: kernels and references differ only in summation order (BLAS blocking,
# GEMMs over all steps vs per-step sums) and in the vectorized exp/tanh.
# float32: every step rounds. Worst measured over the full shape x mask x
# go_backwards x reset_after grid for 20 seeds: 1.4e-6 (float32), 5.5e-15
# (float64); the limits below are 3.5x and 18x that.
RTOL = {np.dtype(np.float32): 5e-6, np.dtype(np.float64): 1e-13}


def assert_close(name, got, want, dtype):
    """Relative error against max(max|want|, 1).

    Test inputs are O(1), so rounding errors are O(eps) in absolute terms even
    where a saturated activation makes the true value tiny: the derivative
    1 - y^2 of a tanh output y near +-1 keeps only eps / (1 - y^2) relative
    accuracy (in Keras too, which also differentiates from the output). Without
    the floor at 1, a B=T=H=1 case with |pre-activation| ~ 4 fails on rounding alone.
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
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
    # Seeded by the test's name (crc32: stable across processes, unlike hash()).
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


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


@pytest.fixture(params=["native", "numpy_function"])
def cpu_route(request):
    """Run the test on each CPU route of the layers (fastrnn.ops.recurrence.ROUTES)."""
    from fastrnn.ops import recurrence

    previous = recurrence.get_route()
    recurrence.set_route(request.param)
    yield request.param
    recurrence.set_route(previous)
