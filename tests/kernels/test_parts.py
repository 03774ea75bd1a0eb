"""Large kernel calls split the batch over OpenBLAS' worker threads (kernels.batch.parts).

Forced here onto small inputs (no work threshold, one row per part at least), a
split call must match the float64 reference like an unsplit one: outputs, final
states and every gradient, with masks, go_backwards and missing upstream gradients.
"""

import threading

import numpy as np
import pytest
from conftest import assert_close, check_kernel_against_reference, make_mask

from fastrnn import kernels
from fastrnn.kernels.blas import binding as _blas
from fastrnn.kernels.batch import parts as _parts
from fastrnn.kernels.gru import reference as gru_ref
from fastrnn.kernels.lstm import reference as lstm_ref
from fastrnn.kernels.mingru import reference as mingru_ref
from fastrnn.kernels.simple_rnn import reference as rnn_ref

pytestmark = pytest.mark.skipif(_parts._OPENBLAS is None,
                                reason="NumPy's BLAS is not OpenBLAS: calls are never split")

GATES = {"simple_rnn": 1, "gru": 3, "lstm": 4, "mingru": 2}


def _arrays(rng, cell, B, T, I, H, dtype):
    G = GATES[cell]
    arrays = dict(x=rng.standard_normal((B, T, I)).astype(dtype),
                  h0=rng.standard_normal((B, H)).astype(dtype))
    if cell == "lstm":
        arrays["c0"] = rng.standard_normal((B, H)).astype(dtype)
    arrays["kernel"] = (rng.standard_normal((I, G * H)) / np.sqrt(I)).astype(dtype)
    if cell == "mingru":  # no recurrent matrix
        arrays["bias"] = (rng.standard_normal(G * H) * 0.3).astype(dtype)
        return arrays
    arrays["recurrent_kernel"] = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    bias_shape = (2, 3 * H) if cell == "gru" else (G * H,)
    arrays["bias"] = (rng.standard_normal(bias_shape) * 0.3).astype(dtype)
    return arrays


def _functions(cell):
    module = {"simple_rnn": rnn_ref, "gru": gru_ref, "lstm": lstm_ref, "mingru": mingru_ref}[cell]
    return (getattr(kernels, f"{cell}_forward"), getattr(kernels, f"{cell}_backward"),
            getattr(module, f"{cell}_forward"), getattr(module, f"{cell}_backward"))


@pytest.fixture
def force_split(monkeypatch):
    """Every call splits (as many parts as OpenBLAS has threads, one row each at
    least); returns the list of part counts that the calls used."""
    used = []
    run = _parts.run

    def spy(fn, n):
        used.append(n)
        return run(fn, n)

    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "ONE_THREAD_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    monkeypatch.setattr(_parts, "run", spy)
    return used


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask_kind", ["none", "all_masked_row", "masked_first"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "lstm", "mingru"])
def test_split_calls_match_the_reference(rng, force_split, cell, go_backwards, mask_kind, dtype):
    if _parts.available_threads() < 2:
        pytest.skip("OpenBLAS runs one thread here: nothing to split over")
    B, T, I, H = 5, 9, 3, 4
    forward, backward, ref_forward, ref_backward = _functions(cell)
    check_kernel_against_reference(forward, backward, ref_forward, ref_backward,
                                   _arrays(rng, cell, B, T, I, H, dtype), dtype, rng,
                                   mask=make_mask(mask_kind, B, T, rng), go_backwards=go_backwards)
    parts = min(_parts.available_threads(), B)
    assert force_split == [parts, parts]  # the forward and the backward, both split


def test_split_gru_reset_before_and_recurrent_dropout(rng, force_split):
    B, T, I, H = 4, 6, 3, 5
    dtype = np.float64
    a = _arrays(rng, "gru", B, T, I, H, dtype)
    a["bias"] = a["bias"][0]
    check_kernel_against_reference(kernels.gru_forward, kernels.gru_backward,
                                   gru_ref.gru_forward, gru_ref.gru_backward, a, dtype, rng,
                                   reset_after=False)
    a = _arrays(rng, "simple_rnn", B, T, I, H, dtype)
    rec_mask = (rng.random((B, H)) > 0.5) * 2.0
    check_kernel_against_reference(kernels.simple_rnn_forward, kernels.simple_rnn_backward,
                                   rnn_ref.simple_rnn_forward, rnn_ref.simple_rnn_backward, a,
                                   dtype, rng, recurrent_mask=rec_mask, activation="relu")
    assert len(force_split) == 4 and min(force_split) >= 2


def test_missing_upstream_gradients_and_a_second_backward(rng, force_split):
    B, T, I, H = 6, 5, 2, 3
    a = _arrays(rng, "lstm", B, T, I, H, np.float64)
    out, h, c, saved = kernels.lstm_forward(*a.values())
    assert isinstance(saved, _parts.SplitSaved)
    _, _, _, tape = lstm_ref.lstm_forward(*a.values())
    d_h = rng.standard_normal((B, H))
    zeros = np.zeros((B, H))
    want = lstm_ref.lstm_backward(tape, np.zeros((B, T, H)), d_h, zeros)
    for _ in range(2):  # the parts' saved objects are read, never consumed
        got = kernels.lstm_backward(saved, None, d_h, None)
        for name, g, r in zip(["dx", "dh0", "dc0", "dW", "dU", "db"], got, want):
            assert_close(name, g, r, np.float64)


def test_gradients_are_checked_against_the_whole_batch(rng, force_split):
    a = _arrays(rng, "gru", 6, 5, 2, 3, np.float32)
    *_, saved = kernels.gru_forward(*a.values())
    with pytest.raises(ValueError, match=r"d_out must have shape \(6, 5, 3\)"):
        kernels.gru_backward(saved, np.zeros((6, 4, 3), np.float32), None)
    with pytest.raises(TypeError, match="d_h_last has dtype float64"):
        kernels.gru_backward(saved, None, np.zeros((6, 3)))


def test_an_error_in_a_part_is_raised_in_the_caller(rng, force_split, monkeypatch):
    from fastrnn.kernels.simple_rnn import cpu

    calls = []
    real = cpu.check_state if hasattr(cpu, "check_state") else cpu.v.check_state

    def fails_on_second_part(*args, **kwargs):
        calls.append(threading.get_ident())
        if len(calls) == 3:  # the call itself, its first part, its second part
            raise RuntimeError("part failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu.v, "check_state", fails_on_second_part)
    with pytest.raises(RuntimeError, match="part failed"):
        kernels.simple_rnn_forward(*_arrays(rng, "simple_rnn", 4, 3, 2, 3, np.float32).values())
    assert _blas.holders() == 0  # the one-thread limit was released
    monkeypatch.setattr(cpu.v, "check_state", real)
    *_, saved = kernels.simple_rnn_forward(*_arrays(rng, "simple_rnn", 4, 3, 2, 3,
                                                    np.float32).values())
    assert isinstance(saved, _parts.SplitSaved)


def test_parts_run_on_openblas_threads(force_split):
    idents = _parts.run(lambda i: threading.get_ident(), _parts.available_threads())
    assert idents[0] == threading.get_ident()
    assert len(set(idents)) == len(idents)


def test_no_split_under_a_thread_limit_or_unsplit(rng, force_split):
    a = _arrays(rng, "gru", 6, 5, 2, 3, np.float32)
    with _blas.limit_threads(1):
        assert type(kernels.gru_forward(*a.values())[-1]).__name__ == "GRUSaved"
    with _parts.unsplit():
        assert type(kernels.gru_forward(*a.values())[-1]).__name__ == "GRUSaved"
    assert force_split == []


def test_concurrent_split_calls_from_two_threads(rng, force_split):
    B, T, I, H = 8, 20, 3, 6
    a = _arrays(rng, "gru", B, T, I, H, np.float64)
    want = gru_ref.gru_forward(*a.values())[0]
    results = [None, None]

    def call(k):
        results[k] = kernels.gru_forward(*a.values())[0]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in results:
        assert_close("out", r, want, np.float64)


def test_plan():
    assert _parts.plan(4, 3, 2, 12, threads=2) == 1                      # small: one part
    assert _parts.plan(64, 100, 128, 768, threads=2) == 2                # one per core
    assert _parts.plan(64, 100, 128, 768, threads=16) == 64 // _parts.MIN_ROWS
    assert _parts.plan(_parts.MIN_ROWS + 1, 1000, 128, 768, threads=2) == 1
    assert _parts.plan(64, 100, 128, 768, threads=1) == 1
    assert 1 <= _parts.available_threads() <= _parts._OPENBLAS[2].value
    assert [(s.start, s.stop) for s in _parts.slices(5, 3)] == [(0, 1), (1, 3), (3, 5)]


def test_a_split_call_leaves_no_reference_cycle(rng, force_split):
    # Its arrays are freed as soon as the caller drops them, without waiting for the
    # cyclic garbage collector: pooled buffers come back idle for the next call.
    import gc
    import weakref

    a = _arrays(rng, "lstm", 6, 5, 2, 3, np.float32)
    gc.disable()
    try:
        out, h, c, saved = kernels.lstm_forward(*a.values())
        refs = [weakref.ref(saved), weakref.ref(saved.parts[1].gates), weakref.ref(out)]
        grads = kernels.lstm_backward(saved, out, None, None)
        refs += [weakref.ref(g) for g in grads]
        del out, h, c, saved, grads
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,gates", [("gru", 3), ("lstm", 4)])
def test_split_calls_with_per_gate_dropout_masks(rng, force_split, cell, gates, dtype):
    # The per-gate recurrent dropout masks [B, G*H] split with the batch.
    if _parts.available_threads() < 2:
        pytest.skip("OpenBLAS runs one thread here: nothing to split over")
    B, T, I, H = 5, 9, 3, 4
    forward, backward, ref_forward, ref_backward = _functions(cell)
    recurrent_mask = ((rng.random((B, gates * H)) < 0.6) / 0.6).astype(dtype)
    check_kernel_against_reference(forward, backward, ref_forward, ref_backward,
                                   _arrays(rng, cell, B, T, I, H, dtype), dtype, rng,
                                   mask=make_mask("masked_first", B, T, rng), go_backwards=True,
                                   recurrent_mask=recurrent_mask)
    parts = min(_parts.available_threads(), B)
    assert force_split == [parts, parts]


def test_a_team_runs_the_parts_and_the_caller_runs_what_it_left_out(force_split):
    # parts.team: the parts go to the team's runner; a part it did not start (a team
    # smaller than asked for) runs on the calling thread afterwards, once.
    asked = []

    def runner(n, base):
        asked.append(n)
        _parts.run_part(base)  # part 0 only, on this thread

    calls = []
    with _parts.team(runner, 3):
        assert _parts.available_threads() == 3
        assert _parts.run(lambda i: calls.append(i) or i * 10, 3) == [0, 10, 20]
    assert asked == [3] and sorted(calls) == [0, 1, 2]
    assert _parts.available_threads() <= _parts._OPENBLAS[2].value  # the team is gone


def test_an_error_in_a_team_part_is_raised_in_the_caller(force_split):
    def runner(n, base):
        for i in range(n):
            _parts.run_part(base + i)

    def part(i):
        if i == 1:
            raise KeyError("part 1")
        return i

    with _parts.team(runner, 2), pytest.raises(KeyError, match="part 1"):
        _parts.run(part, 2)


def test_inside_a_team_a_call_that_will_not_split_holds_openblas_at_one_thread():
    # OpenBLAS' threads would share the cores with the team's (torch's spinning
    # OpenMP workers): inside a team only a call that splits leaves the limit alone.
    def runner(n, base):
        for i in range(n):
            _parts.run_part(base + i)

    big, rows = _parts.SMALL_WORK, 16 * _parts.MIN_ROWS
    assert not _parts.one_thread(big - 1, rows)  # outside: OpenBLAS' threads
    with _parts.team(runner, 2):
        assert _parts.one_thread(big - 1, rows)
        assert not _parts.one_thread(big, rows)
        assert _parts.one_thread(big, 2 * _parts.MIN_ROWS - 1)
        assert not _parts.one_thread(big, None)
    with _parts.team(runner, 1):
        assert _parts.one_thread(big, rows)
