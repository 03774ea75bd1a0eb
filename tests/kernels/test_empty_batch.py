"""An empty batch (x [0, T, I]) through the public kernels (kernels.entry.dispatch).

Under tf.distribute a replica gets an empty batch when the last batch does not split
evenly. Forward gives empty outputs ([0, T, H], [0, H]); backward gives dx [0, T, I],
[0, H] per state and zeros of the weights' shapes (None for a missing bias), as the
float64 references compute them. An empty time or feature axis stays an error.
"""

import numpy as np
import pytest
from conftest import DTYPES, check_kernel_against_reference

from fastrnn import kernels
from fastrnn.kernels.entry import dispatch as _dispatch
from fastrnn.kernels.batch import parts as _parts
from fastrnn.kernels.entry import saved as _saved
from fastrnn.kernels.gru import cpu as gru_cpu
from fastrnn.kernels.gru import reference as gru_ref
from fastrnn.kernels.lstm import cpu as lstm_cpu
from fastrnn.kernels.lstm import reference as lstm_ref
from fastrnn.kernels.mingru import cpu as mingru_cpu
from fastrnn.kernels.mingru import reference as mingru_ref
from fastrnn.kernels.simple_rnn import cpu as simple_rnn_cpu
from fastrnn.kernels.simple_rnn import reference as simple_rnn_ref

T, I, H = 6, 3, 5

# cell: (forward, backward, reference module, gates, states, saved class)
CELLS = {
    "gru": (kernels.gru_forward, kernels.gru_backward, gru_ref, 3, ("h0",), gru_cpu.GRUSaved),
    "simple_rnn": (kernels.simple_rnn_forward, kernels.simple_rnn_backward, simple_rnn_ref, 1,
                   ("h0",), simple_rnn_cpu.SimpleRNNSaved),
    "lstm": (kernels.lstm_forward, kernels.lstm_backward, lstm_ref, 4, ("h0", "c0"),
             lstm_cpu.LSTMSaved),
    "mingru": (kernels.mingru_forward, kernels.mingru_backward, mingru_ref, 2, ("h0",),
               mingru_cpu.MinGRUSaved),
}


def arrays(cell, dtype, batch=0, use_bias=True, use_h0=True, reset_after=True, rng=None):
    rng = rng or np.random.default_rng(0)
    gates = CELLS[cell][3]
    out = dict(x=rng.standard_normal((batch, T, I)).astype(dtype))
    for state in CELLS[cell][4]:
        out[state] = rng.standard_normal((batch, H)).astype(dtype) if use_h0 else None
    out["kernel"] = rng.standard_normal((I, gates * H)).astype(dtype)
    if cell != "mingru":
        out["recurrent_kernel"] = rng.standard_normal((H, gates * H)).astype(dtype)
    bias_shape = (2, 3 * H) if cell == "gru" and reset_after else (gates * H,)
    out["bias"] = rng.standard_normal(bias_shape).astype(dtype) if use_bias else None
    return out


def options(cell, reset_after=True, mask=False, go_backwards=False):
    out = dict(go_backwards=go_backwards, mask=np.zeros((0, T), bool) if mask else None)
    if cell == "gru":
        out["reset_after"] = reset_after
    return out


CASES = [("gru", dict(reset_after=True)), ("gru", dict(reset_after=False)),
         ("simple_rnn", {}), ("lstm", {}), ("mingru", {})]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_bias,use_h0,mask,go_backwards",
                         [(True, True, False, False), (False, False, True, True)])
@pytest.mark.parametrize("cell,extra", CASES, ids=["gru", "gru_reset_before", "simple_rnn",
                                                     "lstm", "mingru"])
def test_matches_reference(rng, cell, extra, use_bias, use_h0, mask, go_backwards, dtype):
    forward, backward, ref, _, states, _ = CELLS[cell]
    a = arrays(cell, dtype, use_bias=use_bias, use_h0=use_h0, rng=rng, **extra)
    opts = options(cell, mask=mask, go_backwards=go_backwards, **extra)
    check_kernel_against_reference(forward, backward, getattr(ref, forward.__name__),
                                   getattr(ref, backward.__name__), a, dtype, rng, **opts)
    *outs, saved = forward(*a.values(), **opts)
    assert [o.shape for o in outs] == [(0, T, H)] + [(0, H)] * len(states)
    assert all(type(o) is np.ndarray and o.dtype == dtype for o in outs)
    for upstream in ([None] * len(outs), [np.zeros(o.shape, dtype) for o in outs]):
        grads = backward(saved, *upstream)
        assert len(grads) == len(a)
        for (name, value), g in zip(a.items(), grads):
            if name == "bias" and value is None:
                assert g is None
                continue
            shape = value.shape if value is not None else (0, H)
            assert type(g) is np.ndarray and g.shape == shape and g.dtype == dtype, name
            assert not g.any(), f"d_{name} of an empty batch must be zeros"


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_is_answered_before_any_split(cell, monkeypatch):
    # Every call split (no work threshold, one row a part): an empty batch still gives
    # empty results, and _parts' slices of no rows are one empty part.
    monkeypatch.setattr(_parts, "SMALL_WORK", 0)
    monkeypatch.setattr(_parts, "MIN_ROWS", 1)
    forward, backward, *_ = CELLS[cell]
    *outs, saved = forward(*arrays(cell, np.float32).values())
    assert type(saved) is _dispatch.EmptySaved
    assert backward(saved, *[None] * len(outs))[0].shape == (0, T, I)
    assert _parts.plan(0, T, I, 3 * H, threads=2) == 1
    assert [(s.start, s.stop) for s in _parts.slices(0, 1)] == [(0, 0)]


@pytest.mark.parametrize("cell", ["gru", "simple_rnn", "lstm"])
def test_saved_arrays_and_restore_saved(cell):
    # What the TF glue does: carry saved_arrays(saved) between its two calls and
    # rebuild `saved` with restore_saved from the forward's inputs.
    forward, backward, _, _, states, cls = CELLS[cell]
    full = arrays(cell, np.float64, batch=2)
    carried_full = _saved.saved_arrays(forward(*full.values())[-1])
    a = arrays(cell, np.float64)
    *outs, saved = forward(*a.values())
    carried = _saved.saved_arrays(saved)
    assert len(carried) == len(carried_full)
    assert all(c.size == 0 and c.dtype == np.float64 for c in carried)
    meta = dict(has_bias=True, go_backwards=False)
    if cell == "gru":
        meta["reset_after"] = True
    restored = _saved.restore_saved(cls, carried, a["x"], None, a["kernel"],
                                       a["recurrent_kernel"], **meta)
    got, want = backward(restored, *[None] * len(outs)), backward(saved, *[None] * len(outs))
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[-1].shape == a["bias"].shape


def test_mingru_saved_rebuilt_over_an_empty_batch():
    # The TF glue rebuilds minGRU's saved with mingru's own restore_saved: a real
    # MinGRUSaved over no rows, which the public backward answers as an empty one.
    a = arrays("mingru", np.float32)
    *_, saved = kernels.mingru_forward(*a.values())
    rebuilt = mingru_cpu.restore_saved([saved.gates], a["x"], a["kernel"], None, has_bias=True,
                                       go_backwards=False)
    assert type(rebuilt) is mingru_cpu.MinGRUSaved
    dx, dh0, dk, db = kernels.mingru_backward(rebuilt, None, None)
    assert (dx.shape, dh0.shape, dk.shape, db.shape) == ((0, T, I), (0, H), (I, 2 * H), (2 * H,))
    assert not dk.any() and not db.any()


@pytest.mark.parametrize("cell", CELLS)
def test_bad_input_with_an_empty_batch_is_a_clear_error(cell):
    forward, backward, *_ = CELLS[cell]
    gates = CELLS[cell][3]

    def call(**changes):
        a = arrays(cell, np.float32)
        mask = changes.pop("mask", None)
        a.update(changes)
        return forward(*a.values(), mask=mask)

    cases = [
        (dict(x=np.zeros((0, 0, I), np.float32)), ValueError, ["x", "(0, 0, 3)", "time"]),
        (dict(x=np.zeros((0, T, 0), np.float32)), ValueError, ["x", "(0, 6, 0)"]),
        (dict(x=np.zeros((0, T, I), np.int32)), TypeError, ["x", "int32", "float32 or float64"]),
        (dict(h0=np.zeros((1, H), np.float32)), ValueError, ["h0", "(0, 5)", "(1, 5)"]),
        (dict(h0=np.zeros((0, H), np.float64)), TypeError, ["h0", "float64", "float32"]),
        (dict(kernel=np.zeros((I + 1, gates * H), np.float32)), ValueError, ["kernel"]),
        (dict(bias=np.zeros((7,), np.float32)), ValueError, ["bias", "(7,)"]),
        (dict(mask=np.ones((0, T + 1), bool)), ValueError, ["mask", "(0, 7)", "(0, 6)"]),
        (dict(mask=np.ones((0, T), np.int64)), TypeError, ["mask", "int64", "bool"]),
    ]
    if cell != "mingru":
        cases.append((dict(recurrent_kernel=np.zeros((H, H + 1), np.float32)), ValueError,
                      ["recurrent_kernel", f"({H}, {H + 1})"]))
    for change, error, words in cases:
        with pytest.raises(error) as info:
            call(**change)
        for word in words:
            assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
    *outs, saved = call()
    with pytest.raises(ValueError, match=r"d_out must have shape \(0, 6, 5\).*\(0, 6, 4\)"):
        backward(saved, np.zeros((0, T, H - 1), np.float32), *[None] * (len(outs) - 1))
    other = "gru" if cell != "gru" else "lstm"
    with pytest.raises(TypeError, match="saved"):
        CELLS[other][1](saved, *[None] * len(CELLS[other][4]), None)


def test_bad_options_with_an_empty_batch():
    a = arrays("gru", np.float32)
    with pytest.raises(ValueError, match="activation='gelu'"):
        kernels.gru_forward(*a.values(), activation="gelu")
    with pytest.raises(ValueError, match="recurrent_activation='swish'"):
        kernels.gru_forward(*a.values(), recurrent_activation="swish")
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        kernels.gru_forward(*a.values(), reset_after="yes")
    m = arrays("mingru", np.float32)
    with pytest.raises(ValueError, match="method must be"):
        kernels.mingru_forward(*m.values(), method="fast")
    s = arrays("simple_rnn", np.float32)
    with pytest.raises(ValueError, match=r"recurrent_mask must have shape \(0, 5\)"):
        kernels.simple_rnn_forward(*s.values(), recurrent_mask=np.ones((2, H), np.float32))
    with pytest.raises(TypeError):
        kernels.gru_forward(*a.values(), no_such_argument=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_scan(dtype):
    a = np.full((0, T, H), 0.5, dtype)
    h = kernels.linear_scan(a, np.ones_like(a))
    assert h.shape == (0, T, H) and h.dtype == dtype
    da, db, dh0 = kernels.linear_scan_backward(a, h, None, np.ones_like(a))
    assert (da.shape, db.shape, dh0.shape) == ((0, T, H), (0, T, H), (0, H))
    assert da.dtype == db.dtype == dh0.dtype == dtype
    with pytest.raises(ValueError, match=r"a must have shape .*\(0, 0, 5\)"):
        kernels.linear_scan(np.zeros((0, 0, H), dtype), np.zeros((0, 0, H), dtype))
    with pytest.raises(ValueError, match=r"b must have shape \(0, 6, 5\)"):
        kernels.linear_scan(a, np.ones((0, T, H + 1), dtype))
    with pytest.raises(ValueError, match=r"h0 must have shape \(0, 5\)"):
        kernels.linear_scan(a, np.ones_like(a), np.zeros((1, H), dtype))
    with pytest.raises(ValueError, match="method must be one of"):
        kernels.linear_scan(a, np.ones_like(a), method="fast")
    with pytest.raises(ValueError, match=r"d_h must have shape \(0, 6, 5\)"):
        kernels.linear_scan_backward(a, h, None, np.ones((1, T, H), dtype))
