"""Every CUDA kernel against its float64 reference: outputs, final states, every gradient.

By default under Numba's CUDA simulator with tiny shapes (each simulated thread
is a Python thread); with FASTRNN_TEST_GPU=1 on a GPU, with CuPy arrays and
shapes that cross thread blocks and scan chunks.
"""

import functools
import sys

import numpy as np
import pytest
from conftest import DTYPES, GPU_MODE, MASKS, assert_close, check_kernel_against_reference, make_mask

from cuda_helpers import on_device, to_device, to_host
from fastrnn.kernels.gpu import cuda as _cuda
from fastrnn.kernels.gru import cuda as gru_cuda
from fastrnn.kernels.gru import reference as gru_ref
from fastrnn.kernels.lstm import cuda as lstm_cuda
from fastrnn.kernels.lstm import reference as lstm_ref
from fastrnn.kernels.mingru import cuda as mingru_cuda
from fastrnn.kernels.mingru import reference as mingru_ref
from fastrnn.kernels.scan import cuda as scan_cuda
from fastrnn.kernels.scan import reference as scan_ref
from fastrnn.kernels.simple_rnn import cuda as rnn_cuda
from fastrnn.kernels.simple_rnn import reference as rnn_ref

# B=1, T=1, H=1; odd sizes with I != H. The simulator's scan chunk is 8 steps x
# 4 channels, so T=19, H=6 spans three chunks and two channel blocks.
if GPU_MODE:
    SHAPES = [(1, 1, 1, 1), (3, 7, 2, 5), (5, 131, 17, 67), (2, 300, 8, 130)]
else:
    SHAPES = [(1, 1, 1, 1), (3, 7, 2, 5), (2, 19, 3, 6)]


def _weights(rng, dtype, I, H, gates, bias_shape):
    return dict(
        kernel=(rng.standard_normal((I, gates * H)) / np.sqrt(I)).astype(dtype),
        recurrent_kernel=(rng.standard_normal((H, gates * H)) / np.sqrt(H)).astype(dtype),
        bias=None if bias_shape is None else (rng.standard_normal(bias_shape) * 0.3).astype(dtype),
    )


def _arrays(cell, rng, shape, dtype, use_bias=True, use_h0=True):
    B, T, I, H = shape
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) if use_h0 else None
    if cell == "simple_rnn":
        return dict(x=x, h0=h0, **_weights(rng, dtype, I, H, 1, (H,) if use_bias else None))
    if cell in ("gru", "gru_reset_before"):
        shape_b = (2, 3 * H) if cell == "gru" else (3 * H,)
        return dict(x=x, h0=h0, **_weights(rng, dtype, I, H, 3, shape_b if use_bias else None))
    if cell == "lstm":
        c0 = rng.standard_normal((B, H)).astype(dtype) if use_h0 else None
        w = _weights(rng, dtype, I, H, 4, (4 * H,) if use_bias else None)
        return dict(x=x, h0=h0, c0=c0, **w)
    w = _weights(rng, dtype, I, H, 2, (2 * H,) if use_bias else None)
    return dict(x=x, h0=h0, kernel=w["kernel"], bias=w["bias"])


def _functions(cell):
    """(cuda forward, cuda backward, reference forward, reference backward, options)."""
    if cell == "simple_rnn":
        return (rnn_cuda.simple_rnn_forward, rnn_cuda.simple_rnn_backward,
                rnn_ref.simple_rnn_forward, rnn_ref.simple_rnn_backward, {})
    if cell in ("gru", "gru_reset_before"):
        return (gru_cuda.gru_forward, gru_cuda.gru_backward, gru_ref.gru_forward,
                gru_ref.gru_backward, {"reset_after": cell == "gru"})
    if cell == "lstm":
        return (lstm_cuda.lstm_forward, lstm_cuda.lstm_backward, lstm_ref.lstm_forward,
                lstm_ref.lstm_backward, {})
    method = cell.split("_", 1)[1]
    return (functools.partial(mingru_cuda.mingru_forward, method=method),
            mingru_cuda.mingru_backward, mingru_ref.mingru_forward, mingru_ref.mingru_backward,
            {})


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_barriers():
    # The simulator runs a block's threads as Python threads and releases a
    # syncthreads() by polling them; with the default 5 ms GIL switch interval
    # every barrier costs milliseconds (the Blelloch kernels have 2 log2(L) of
    # them). A shorter interval makes the scan tests about 6x faster.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


CELLS = ["simple_rnn", "gru", "gru_reset_before", "lstm", "mingru_sequential", "mingru_blelloch"]


def check(cell, rng, shape, dtype, mask_kind, go_backwards, use_bias=True, use_h0=True,
          **options):
    fwd, bwd, ref_fwd, ref_bwd, fixed = _functions(cell)
    return check_kernel_against_reference(
        on_device(fwd), on_device(bwd), ref_fwd, ref_bwd,
        _arrays(cell, rng, shape, dtype, use_bias, use_h0), dtype, rng,
        mask=make_mask(mask_kind, shape[0], shape[1], rng), go_backwards=go_backwards,
        **fixed, **options)


# Under the simulator the Blelloch scan's three-chunk shape costs 1.5-2.8 s a case:
# there it runs in float64 only (float32 runs at the other shapes, and every dtype
# on a real GPU), which keeps the suite inside its time budget.
_GRID = [(cell, shape, dtype) for cell in CELLS for shape in SHAPES for dtype in DTYPES
         if GPU_MODE or not (cell == "mingru_blelloch" and shape == SHAPES[-1]
                             and dtype == np.float32)]


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cell,shape,dtype", _GRID)
def test_matches_reference(cell, rng, shape, mask_kind, go_backwards, dtype):
    worst = check(cell, rng, shape, dtype, mask_kind, go_backwards)
    assert worst  # every output and gradient was compared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_no_initial_state(cell, rng, dtype):
    check(cell, rng, (3, 9, 4, 5), dtype, "holes", False, use_bias=False, use_h0=False)


@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "gru_reset_before", "lstm"])
@pytest.mark.parametrize("activation,recurrent_activation",
                         [("relu", "hard_sigmoid"), ("sigmoid", "tanh"), ("linear", "sigmoid")])
def test_other_activations(cell, rng, activation, recurrent_activation):
    options = {"activation": activation}
    if cell != "simple_rnn":
        options["recurrent_activation"] = recurrent_activation
    for dtype in DTYPES:
        check(cell, rng, (2, 6, 3, 5), dtype, "holes", True, **options)


@pytest.mark.parametrize("dtype", DTYPES)
def test_simple_rnn_recurrent_dropout_mask(rng, dtype):
    B, H = 3, 5
    recurrent_mask = ((rng.random((B, H)) > 0.4) / 0.6).astype(dtype)
    check("simple_rnn", rng, (B, 8, 4, H), dtype, "holes", False, recurrent_mask=recurrent_mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3), ("gru_reset_before", 3)])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_per_gate_recurrent_dropout_masks(cell, gates, rng, go_backwards, dtype):
    # Keras' implementation=1 recurrent dropout: one [B, H] mask per gate, side by side.
    B, H = 3, 5
    recurrent_mask = ((rng.random((B, gates * H)) > 0.4) / 0.6).astype(dtype)
    check(cell, rng, (B, 8, 4, H), dtype, "holes", go_backwards, recurrent_mask=recurrent_mask)


SCAN_LENGTHS = [1, 2, 3, 17, 4097] if GPU_MODE else [1, 2, 3, 8, 9, 19]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["sequential", "blelloch", "auto"])
@pytest.mark.parametrize("time", SCAN_LENGTHS)
def test_scan_against_reference(rng, time, method, dtype):
    batch, units = 2, 6
    a = rng.uniform(0.0, 1.0, (batch, time, units)).astype(dtype)
    b = rng.standard_normal((batch, time, units)).astype(dtype)
    h0 = rng.standard_normal((batch, units)).astype(dtype)
    h = scan_cuda.linear_scan(to_device(a), to_device(b), to_device(h0), method=method)
    assert h.dtype == dtype
    assert_close("h", to_host(h), scan_ref.linear_scan(a, b, h0), dtype)
    d_h = rng.standard_normal(a.shape).astype(dtype)
    grads = scan_cuda.linear_scan_backward(to_device(a), h, to_device(h0), to_device(d_h),
                                           method=method)
    want = scan_ref.linear_scan_backward(a, scan_ref.linear_scan(a, b, h0), h0, d_h)
    for name, g, w in zip(["da", "db", "dh0"], grads, want):
        assert_close(name, to_host(g), w, dtype)


def test_scan_picks_blelloch_for_few_long_channels():
    L, _ = scan_cuda.chunk_shape()
    assert scan_cuda.choose_method(1, 64 * L, 16) == "blelloch"
    assert scan_cuda.choose_method(1, L, 16) == "sequential"
    assert scan_cuda.choose_method(16, 16 * L, 128) == "sequential"  # T=1024: a toss-up on an H100
    assert scan_cuda.choose_method(512, 64 * L, 1024) == "sequential"


def test_errors_name_the_argument(rng):
    x = to_device(rng.standard_normal((2, 3, 4)).astype(np.float32))
    W = to_device(np.zeros((4, 9), np.float32))
    U = to_device(np.zeros((3, 9), np.float32))
    with pytest.raises(TypeError, match="x must be a"):
        gru_cuda.gru_forward([[1.0]], None, W, U, None)
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(3, 9\)"):
        gru_cuda.gru_forward(x, None, W, to_device(np.zeros((4, 9), np.float32)), None)
    with pytest.raises(TypeError, match="recurrent_kernel has dtype float64"):
        gru_cuda.gru_forward(x, None, W, to_device(np.zeros((3, 9))), None)
    with pytest.raises(ValueError, match="mask must have shape"):
        gru_cuda.gru_forward(x, None, W, U, None, mask=to_device(np.ones((3, 2), bool)))
    with pytest.raises(ValueError, match="x must have rank 3"):
        gru_cuda.gru_forward(x[0], None, W, U, None)
    with pytest.raises(ValueError, match="method must be"):
        scan_cuda.linear_scan(x, x, method="parallel")
    with pytest.raises(TypeError, match="saved must be"):
        gru_cuda.gru_backward(object(), None, None)


@pytest.mark.skipif(GPU_MODE, reason="checks the simulator's own NumPy path")
def test_array_module_refuses_other_types_without_a_gpu():
    with pytest.raises(TypeError, match="x must be a cupy.ndarray"):
        _cuda.array_module([1.0])


def test_public_backward_follows_a_cuda_saved(rng):
    # kernels.gru_backward given what the CUDA forward saved runs the CUDA backward.
    from fastrnn import kernels

    arrays = _arrays("gru", rng, (2, 4, 3, 5), np.float32)
    *_, saved = gru_cuda.gru_forward(*[to_device(a) for a in arrays.values()])
    d_out = to_device(rng.standard_normal((2, 4, 5)).astype(np.float32))
    via_public = kernels.gru_backward(saved, d_out, None)
    direct = gru_cuda.gru_backward(saved, d_out, None)
    for a, b in zip(via_public, direct):
        np.testing.assert_array_equal(to_host(a), to_host(b))
    with pytest.raises(TypeError, match="saved must be"):
        from fastrnn.kernels.gru import cpu as gru_cpu

        gru_cpu.gru_backward(saved, d_out, None)  # the CPU kernel refuses a CUDA saved


@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "gru_reset_before", "lstm", "mingru_blelloch"])
def test_saved_rebuilt_from_carried_arrays(cell, rng):
    # What the Keras layers' GPU route does between its two py_functions: carry
    # the arrays of `saved` that cannot be rebuilt, rebuild the rest from the
    # inputs; the backward must not change.
    from fastrnn.kernels.entry import saved as _saved
    from fastrnn.kernels.mingru import cpu as mingru_cpu

    fwd, bwd, _, _, fixed = _functions(cell)
    arrays = {k: to_device(a) for k, a in _arrays(cell, rng, (3, 6, 4, 5), np.float32).items()}
    mask = to_device(make_mask("holes", 3, 6, rng))
    *outs, saved = fwd(*arrays.values(), mask=mask, go_backwards=True, **fixed)
    upstream = [to_device(rng.standard_normal(o.shape).astype(np.float32)) for o in outs]
    if cell.startswith("mingru"):
        rebuilt = mingru_cuda.restore_saved(
            [saved.gates], arrays["x"], arrays["kernel"], mask,
            has_bias=True, go_backwards=True, method="blelloch")
        assert type(saved) is type(rebuilt) and type(saved) is not mingru_cpu.MinGRUSaved
    else:
        carried = _saved.saved_arrays(saved)
        meta = {k: getattr(saved, k) for k in saved.__dataclass_fields__
                if not hasattr(getattr(saved, k), "shape")}  # the flags, not the arrays
        rebuilt = _saved.restore_saved(
            type(saved).__mro__[1], carried, arrays["x"], mask, arrays["kernel"],
            arrays["recurrent_kernel"], cuda=True, **meta)
        assert type(rebuilt) is type(saved)
    for a, b in zip(bwd(saved, *upstream), bwd(rebuilt, *upstream)):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(to_host(a), to_host(b))


@pytest.mark.skipif(GPU_MODE, reason="checks the simulator as these tests patch it")
def test_a_simulated_block_shares_one_shared_array(monkeypatch):
    # cuda_helpers makes the simulator's shared.array allocation atomic: its own
    # check-then-set let two threads of a block that interleave there get two arrays
    # (the Blelloch scan then failed its checks now and then). A slow allocation
    # widens that window: every thread must still get the one array.
    import threading
    import time

    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared(0)
    empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.01)
        return empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    start, got = threading.Barrier(8), []

    def thread():
        start.wait()
        got.append(id(shared.array(4, np.float64)))

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
