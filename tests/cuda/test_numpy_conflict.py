"""numba-cuda <= 0.30.4 cannot launch kernels on NumPy 2.5 (np.row_stack is gone): say so."""

from importlib import metadata

import numpy as np
import pytest

from fastrnn.kernels.gpu import cuda as _cuda


def _versions(monkeypatch, numba_cuda):
    real = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: numba_cuda if name == "numba-cuda" else real(name))


def test_numpy_without_row_stack_and_old_numba_cuda_is_named(monkeypatch):
    monkeypatch.delattr(np, "row_stack", raising=False)
    _versions(monkeypatch, "0.30.4")
    message = _cuda.numpy_conflict()
    assert message is not None
    assert "numba-cuda 0.30.4" in message and "numpy<2.5" in message


@pytest.mark.parametrize("numba_cuda", ["0.31.0", "1.0.0"])
def test_a_later_numba_cuda_is_not_blamed(monkeypatch, numba_cuda):
    monkeypatch.delattr(np, "row_stack", raising=False)
    _versions(monkeypatch, numba_cuda)
    assert _cuda.numpy_conflict() is None


@pytest.mark.skipif(not hasattr(np, "row_stack"), reason="this NumPy has no np.row_stack")
def test_numpy_with_row_stack_has_no_conflict():
    assert _cuda.numpy_conflict() is None
