"""Kernel-level forward and forward+backward, beside Keras, PyTorch and the GEMM floor,
timed in the same rounds (see conftest.py)."""

import pytest

from bench.cases import CELLS, IMPLEMENTATIONS, MODES, SHAPES, torch_available


def anchors(names):
    """The implementations to time: torch's only when torch is installed."""
    return [name for name in names if not name.startswith("torch") or torch_available()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel(run_paired, benchmark, cell, shape, mode):
    benchmark.group = f"{cell} | {shape} | {mode}"
    fns = {impl: IMPLEMENTATIONS[impl](cell, SHAPES[shape], mode)
           for impl in anchors(IMPLEMENTATIONS)}
    run_paired(fns, cell=cell, shape=shape, mode=mode)
