"""Kernel-level forward and forward+backward, beside Keras, PyTorch and the GEMM floor."""

import pytest

from bench.cases import CELLS, IMPLEMENTATIONS, MODES, SHAPES, torch_available


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel(run_benchmark, benchmark, cell, shape, mode, impl):
    if impl == "torch" and not torch_available():
        pytest.skip("torch is not installed (pip install torch) - its anchor is left out")
    benchmark.group = f"{cell} | {shape} | {mode}"
    fn = IMPLEMENTATIONS[impl](cell, SHAPES[shape], mode)
    run_benchmark(fn, impl=impl, cell=cell, shape=shape, mode=mode)
