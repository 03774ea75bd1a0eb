"""kernels/blas/binding.py: the GEMM bindings (NumPy's CBLAS, or the SciPy fallback), the
process-wide OpenBLAS thread count the layers lower for small calls, and kernels
that release the GIL."""

import ctypes
import threading

import numpy as np
import pytest
from numba import njit

from fastrnn import kernels
from fastrnn.kernels.blas import binding as _blas


@njit
def _products(a, b, c, out_nn, out_tn):
    _blas.gemm(a, b, out_nn, False)
    _blas.gemm(a, b, out_nn, True)       # accumulates: 2 a @ b
    _blas.gemm_tn(c, b, out_tn, False)   # c.T @ b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_bindings(dtype):
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((5, 3), (3, 4), (3, 5)))
    out_nn, out_tn = np.empty((5, 4), dtype), np.empty((5, 4), dtype)
    _products(a, b, c, out_nn, out_tn)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out_nn, 2 * a @ b, rtol=tol)
    np.testing.assert_allclose(out_tn, c.T @ b, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
def test_scipy_fallback_gemm(dtype, trans_a):
    # The cfunc bound where NumPy exports no CBLAS: called here through ctypes with
    # the CBLAS arguments the kernels pass.
    rng = np.random.default_rng(1)
    m, n, k = 4, 3, 5
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_int64, scalar, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, scalar,
                          ctypes.c_void_p, ctypes.c_int64)(_blas._fallback(dtype))
    want = (a.T if trans_a else a) @ b + c
    fn(101, 112 if trans_a else 111, 111, m, n, k, 1.0, a.ctypes.data, m if trans_a else k,
       b.ctypes.data, n, 1.0, c.ctypes.data, n)
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.skipif(_blas._set_threads is None, reason="NumPy's BLAS is not OpenBLAS")
def test_limit_threads_restores_the_count_when_holders_interleave():
    # Two holders that leave in the order they came (as two directions of a
    # Bidirectional layer can, on TensorFlow's threads) must not leave 1 behind.
    before = _blas._set_threads(3)
    try:
        first, second = _blas.limit_threads(1), _blas.limit_threads(1)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert _blas._set_threads(1) == 1  # still limited while one holder is inside
        second.__exit__(None, None, None)
        assert _blas._set_threads(3) == 3
    finally:
        _blas._set_threads(before)


@pytest.mark.skipif(_blas._set_threads is None, reason="NumPy's BLAS is not OpenBLAS")
def test_hold_and_release_threads_pair_like_the_context_manager():
    before = _blas._set_threads(3)
    try:
        _blas.hold_threads(1)
        with _blas.limit_threads(1):
            pass
        assert _blas._set_threads(1) == 1  # the outer hold still stands
        _blas.release_threads()
        assert _blas._set_threads(3) == 3
    finally:
        _blas._set_threads(before)


@pytest.mark.skipif(_blas._set_threads is None, reason="NumPy's BLAS is not OpenBLAS")
def test_layer_wrapper_restores_the_count_when_the_kernel_raises():
    pytest.importorskip("tensorflow")
    from fastrnn.ops import _threads

    def fails():
        assert _blas._set_threads(1) == 1  # small call: one thread while inside
        raise ValueError("bad")

    before = _blas._set_threads(3)
    try:
        with pytest.raises(ValueError, match="bad"):
            _threads.with_threads(1, fails)
        assert _blas._set_threads(3) == 3
        assert _blas._limit_holders == 0
    finally:
        _blas._set_threads(before)


def test_kernels_run_in_threads_without_the_gil():
    # nogil kernels: calls from several threads give the same numbers as one by one.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 4)).astype(np.float32)
    W = rng.standard_normal((4, 15)).astype(np.float32) * 0.3
    U = rng.standard_normal((5, 15)).astype(np.float32) * 0.3
    alone = kernels.gru_forward(x, None, W, U, None)[0]
    results = [None] * 4

    def work(i):
        results[i] = kernels.gru_forward(x, None, W, U, None)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, alone)


def test_every_cpu_kernel_releases_the_gil():
    from numba.core.registry import CPUDispatcher

    from fastrnn.kernels.fastmath import common as _cpu_common
    modules = [_cpu_common, kernels._gru, kernels._lstm, kernels._simple_rnn, kernels._mingru,
               kernels._scan]
    found = {f"{m.__name__}.{name}": obj.targetoptions.get("nogil")
             for m in modules for name, obj in vars(m).items()
             if isinstance(obj, CPUDispatcher) and obj.__module__ == m.__name__}
    assert len(found) >= 15
    assert all(found.values()), [name for name, nogil in found.items() if not nogil]


def _held_counts(monkeypatch):
    """Record the thread counts the kernels' dispatch holds OpenBLAS at."""
    held = []
    hold = _blas.hold_threads

    def spy(n):
        held.append(n)
        hold(n)

    monkeypatch.setattr(_blas, "hold_threads", spy)
    return held


@pytest.mark.skipif(_blas._set_threads is None, reason="NumPy's BLAS is not OpenBLAS")
@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "lstm", "mingru"])
def test_small_direct_calls_hold_openblas_at_one_thread(monkeypatch, cell):
    # Small calls (forward and backward) run with a one-thread OpenBLAS and give the
    # count back; large ones, and calls made while someone else holds a limit, are
    # left alone. The results do not depend on it.
    from fastrnn.kernels.batch import parts as _parts

    rng = np.random.default_rng(0)
    B, T, I, H = 3, 5, 2, 4
    G = {"simple_rnn": 1, "gru": 3, "lstm": 4, "mingru": 2}[cell]
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    weights = [rng.standard_normal((I, G * H)).astype(np.float32)]
    if cell != "mingru":
        weights.append(rng.standard_normal((H, G * H)).astype(np.float32))
    states = [None, None] if cell == "lstm" else [None]
    forward, backward = getattr(kernels, f"{cell}_forward"), getattr(kernels, f"{cell}_backward")
    d_out = np.ones((B, T, H), np.float32)

    def call():
        *outputs, saved = forward(x, *states, *weights, None)
        return outputs, backward(saved, d_out, *states)

    before = _blas.holders()
    held = _held_counts(monkeypatch)
    small = call()
    assert held == [1, 1] and _blas.holders() == before
    held.clear()
    monkeypatch.setattr(_parts, "ONE_THREAD_WORK", 0)
    from fastrnn.kernels.blas import microgemm as _microgemm

    monkeypatch.setattr(_microgemm, "ENABLED", False)
    large = call()
    assert held == []
    # Large but with too few rows to split (B3 < 2 * MIN_ROWS): the recurrent cells
    # hold one thread where the packed per-step product runs; minGRU does not.
    monkeypatch.setattr(_microgemm, "ENABLED", True)
    few_rows = call()
    assert held == ([] if cell == "mingru" else [1, 1]) and _blas.holders() == before
    held.clear()
    for other in (large, few_rows):
        for a, b in zip(small[0] + list(small[1]), other[0] + list(other[1])):
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(_parts, "ONE_THREAD_WORK", 1 << 40)
    with _blas.limit_threads(2):
        held.clear()
        call()
    assert held == []  # a limit already held: the caller chose the threads


def test_bad_input_still_gets_the_kernels_own_errors():
    with pytest.raises((TypeError, ValueError), match="x"):
        kernels.gru_forward([[1.0]], None, np.ones((1, 3), np.float32),
                            np.ones((1, 3), np.float32), None)
    with pytest.raises(TypeError, match="saved"):
        kernels.gru_backward(object(), None, None)
