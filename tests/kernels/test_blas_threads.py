"""The process-wide OpenBLAS thread count the layers lower for small calls
(kernels/_blas.py), and kernels that release the GIL."""

import threading

import numpy as np
import pytest

from fastrnn import kernels
from fastrnn.kernels import _blas


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

    from fastrnn.kernels import _cpu_common
    modules = [_cpu_common, kernels._gru, kernels._lstm, kernels._simple_rnn, kernels._mingru,
               kernels._scan]
    found = {f"{m.__name__}.{name}": obj.targetoptions.get("nogil")
             for m in modules for name, obj in vars(m).items()
             if isinstance(obj, CPUDispatcher) and obj.__module__ == m.__name__}
    assert len(found) >= 15
    assert all(found.values()), [name for name, nogil in found.items() if not nogil]
