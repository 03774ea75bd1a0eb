"""The packed per-step product (kernels.blas.microgemm) and when the kernels use it.

The product is checked against a float64 matmul over shapes that leave every
kind of remainder (rows not a multiple of 4, columns not a multiple of the
vector width or of a panel), overwriting and accumulating. The kernels are
checked against their references both ways: with the packed product (what
small test calls use wherever the host has AVX2 + FMA) and with BLAS.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import check_kernel_against_reference, make_mask
from numba.core.errors import TypingError

from fastrnn import kernels
from fastrnn.kernels.blas import binding as _blas
from fastrnn.kernels.blas import microgemm as _microgemm
from fastrnn.kernels.gru import reference as gru_ref
from fastrnn.kernels.lstm import reference as lstm_ref
from fastrnn.kernels.simple_rnn import reference as rnn_ref

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def _micro_kernels_bound():
    """`product` links to the micro-kernels by name: bind them (the cores' callers
    do this through the cores' factories)."""
    _microgemm.ensure(np.float32)
    _microgemm.ensure(np.float64)


def test_micro_kernels_are_bound_per_dtype_when_a_core_needs_them():
    """Importing the kernels compiles nothing; a float32 core binds the float32
    micro-kernel only (a fresh process, so nothing earlier bound either)."""
    code = (
        "import numpy as np\n"
        "from fastrnn.kernels.blas import microgemm as _microgemm\n"
        "from fastrnn.kernels.runtime import abi as _abi\n"
        "import fastrnn.kernels.simple_rnn.cpu as cpu\n"
        "assert _microgemm._BOUND == {}, _microgemm._BOUND\n"
        "cpu.prepare_cores(np.float32)\n"
        "assert sorted(_microgemm._BOUND) == ['f32'], _microgemm._BOUND\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13])
@pytest.mark.parametrize("depth", [1, 7, 45, 128])
def test_product_matches_matmul(rng, dtype, rows, depth):
    a = rng.standard_normal((rows, depth)).astype(dtype)
    for columns in (1, 3, 4, 8, 9, 12, 23, 24, 25, 45, 100, 135, 180):
        b = rng.standard_normal((depth, columns)).astype(dtype)
        packed = _microgemm.pack(b)
        assert packed.size == _microgemm.packed_size(depth, columns, dtype)
        expected = a.astype(np.float64) @ b
        scale = np.abs(a).astype(np.float64) @ np.abs(b) + 1.0
        out = np.full((rows, columns), np.nan, dtype)  # overwritten, never read
        _microgemm.product(a, b, packed, out, False)
        np.testing.assert_array_less(np.abs(out - expected) / scale, TOLERANCE[dtype])
        start = rng.standard_normal((rows, columns)).astype(dtype)
        out = start.copy()
        _microgemm.product(a, b, packed, out, True)
        np.testing.assert_array_less(np.abs(out - (start + expected)) / (scale + np.abs(start)),
                                     TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use", [True, False])
def test_transposed_for_product_stands_for_the_transpose(rng, dtype, use):
    """The backward passes multiply by U^T: (b, packed) from U directly, packed
    (or, for BLAS, copied) without a transposed copy first; also from a column
    slice of U (GRU with reset_after=False)."""
    for rows, depth, columns in ((1, 1, 1), (3, 45, 45), (5, 180, 45), (4, 7, 25), (13, 24, 100)):
        kernel = rng.standard_normal((columns, depth + 3)).astype(dtype)
        for source in (np.ascontiguousarray(kernel[:, :depth]), kernel[:, 3:]):
            b, packed = _microgemm.transposed_for_product(source, use)
            assert (packed.size > 0) == use
            if use:
                assert b.shape == (0, columns)
                n = depth * (-(-columns // _microgemm.lanes(dtype)) * _microgemm.lanes(dtype))
                np.testing.assert_array_equal(packed[:n], _microgemm.pack(source.T.copy())[:n])
            else:
                np.testing.assert_array_equal(b, source.T)
            a = rng.standard_normal((rows, depth)).astype(dtype)
            out = np.full((rows, columns), np.nan, dtype)
            _microgemm.product(a, b, packed, out, False)
            expected = a.astype(np.float64) @ source.T
            scale = np.abs(a).astype(np.float64) @ np.abs(source.T) + 1.0
            np.testing.assert_array_less(np.abs(out - expected) / scale, TOLERANCE[dtype])


def test_product_into_row_blocks_of_bigger_arrays(rng):
    """The kernels multiply slabs of [T, B, H] arrays: a [B, H] view of step t."""
    states = rng.standard_normal((5, 6, 7)).astype(np.float32)
    b = rng.standard_normal((7, 21)).astype(np.float32)
    out = np.zeros((4, 6, 21), np.float32)
    _microgemm.product(states[2], b, _microgemm.pack(b), out[1], False)
    np.testing.assert_allclose(out[1], states[2] @ b, rtol=1e-5, atol=1e-5)
    assert not out[0].any() and not out[2:].any()


def test_empty_packed_means_blas(rng):
    a = rng.standard_normal((3, 5))
    b = rng.standard_normal((5, 6))
    out = np.empty((3, 6))
    _microgemm.product(a, b, np.empty(0), out, False)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_non_contiguous_operands_are_refused_at_compile_time(rng):
    a = rng.standard_normal((4, 10))[:, ::2]
    b = rng.standard_normal((5, 6))
    with pytest.raises(TypingError):
        _microgemm.gemm_packed(a, _microgemm.pack(b), 6, np.empty((4, 6)), False)


def test_used_only_where_blas_runs_one_thread(monkeypatch):
    monkeypatch.setattr(_microgemm, "ENABLED", True)
    b = np.ones((3, 4), np.float32)
    with _blas.limit_threads(1):
        assert _microgemm.wanted() == (_blas._set_threads is not None)
        assert _microgemm.pack_for(b).size == (_microgemm.packed_size(3, 4, b.dtype)
                                               if _microgemm.wanted() else 0)
    with _blas.limit_threads(2):
        assert not _microgemm.wanted()
        assert _microgemm.pack_for(b).size == 0
    monkeypatch.setattr(_microgemm, "ENABLED", False)
    with _blas.limit_threads(1):
        assert not _microgemm.wanted()


def _case(rng, cell, dtype, reset_after=True):
    B, T, I, H = 6, 9, 4, 11  # 6 rows: a 4-row block and a 2-row one; 3H, 4H not panel-sized
    G = {"simple_rnn": 1, "gru": 3, "lstm": 4}[cell]
    arrays = dict(x=rng.standard_normal((B, T, I)).astype(dtype),
                  h0=rng.standard_normal((B, H)).astype(dtype))
    if cell == "lstm":
        arrays["c0"] = rng.standard_normal((B, H)).astype(dtype)
    arrays["kernel"] = (rng.standard_normal((I, G * H)) / np.sqrt(I)).astype(dtype)
    arrays["recurrent_kernel"] = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    shape = (2, 3 * H) if cell == "gru" and reset_after else (G * H,)
    arrays["bias"] = (rng.standard_normal(shape) * 0.3).astype(dtype)
    module = {"simple_rnn": rnn_ref, "gru": gru_ref, "lstm": lstm_ref}[cell]
    functions = (getattr(kernels, f"{cell}_forward"), getattr(kernels, f"{cell}_backward"),
                 getattr(module, f"{cell}_forward"), getattr(module, f"{cell}_backward"))
    extra = {"reset_after": reset_after} if cell == "gru" else {}
    return functions, arrays, make_mask("holes", B, T, rng), extra


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "blas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,reset_after", [("simple_rnn", True), ("gru", True),
                                              ("gru", False), ("lstm", True)])
def test_kernels_match_the_reference_either_way(rng, monkeypatch, cell, reset_after, dtype, packed):
    if packed and not _microgemm.AVAILABLE:
        pytest.skip("this host has no AVX2 + FMA: the kernels always use BLAS here")
    monkeypatch.setattr(_microgemm, "ENABLED", packed)
    answers = []
    wanted = _microgemm.wanted
    monkeypatch.setattr(_microgemm, "wanted", lambda: answers.append(wanted()) or answers[-1])
    functions, arrays, mask, extra = _case(rng, cell, dtype, reset_after)
    with _blas.limit_threads(1):
        check_kernel_against_reference(*functions, arrays, dtype, rng, mask=mask,
                                       go_backwards=True, **extra)
    # The launchers ask once per forward and backward call, and hand the answer to
    # the cores, which pack the recurrent operands inside (kernels.<cell>.cpu).
    assert len(answers) >= 2 and set(answers) == {packed}
