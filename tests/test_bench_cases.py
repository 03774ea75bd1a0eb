"""The benchmark's own pieces: the no-work op pair and the stand-ins (bench/bridge.py),
the seed-style models beside their stand-ins (bench/test_layers.py), and the tables
`python -m bench` prints from a run's JSON (bench/__main__.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _entry(cell, shape, mode, impl, median, kind=None, **extra):
    info = dict(cell=cell, shape=shape, mode=mode, impl=impl, **extra)
    if kind:
        info["kind"] = kind
    return {"extra_info": info, "stats": {"median": median, "iqr": 0.0}}


def test_model_table_shows_recurrent_shares():
    from bench.__main__ import model_table

    entries = [_entry("forecast GRU(256)", "", "train_on_batch", impl, ms / 1e3, "model",
                      routes=routes)
               for impl, ms, routes in (("keras", 17.0, []), ("fastrnn", 10.0, ["native op"]),
                                        ("numpy_function", 11.0, ["numpy_function fallback"]),
                                        ("stand-in", 3.0, []))]
    text = model_table({"benchmarks": entries})
    row = text.splitlines()[-1]
    # keras rec 14, fastrnn rec 7: 2x on the recurrent share, 1.7x on the step, 82% of keras' step
    assert "14.00" in row and "7.00" in row and "2.00x" in row and "1.70x" in row, row
    assert "82%" in row and row.endswith("native"), row
    assert "!" not in text


def test_model_table_flags_a_numpy_function_column_that_ran_native():
    from bench.__main__ import model_table

    entries = [_entry("m", "", "train_on_batch", impl, 0.01, "model", routes=routes)
               for impl, routes in (("keras", []), ("fastrnn", ["native op"]),
                                    ("numpy_function", ["native op"]), ("stand-in", []))]
    assert "! m train_on_batch: the np_func model ran on native" in model_table(
        {"benchmarks": entries})


def test_bridge_and_overhead_tables_subtract_the_baseline():
    from bench.__main__ import bridge_table, overhead_table

    bridge = [_entry("bridge", "B32 T15 I1 H45 x4", "train_on_batch", impl, ms / 1e3, "bridge",
                     layers=4)
              for impl, ms in (("nothing", 3.0), ("native op pair", 3.16),
                               ("numpy_function pair", 4.2))]
    text = bridge_table({"benchmarks": bridge})
    assert "40" in text.splitlines()[2] and "300" in text.splitlines()[2]
    assert "met (40 us)" in text
    overhead = [_entry("overhead GRU(1)", "B1 T1 I1 H1", "forward", impl, us / 1e6, "overhead")
                for impl, us in (("dispatch", 280), ("native forward", 290), ("native pair", 300),
                                 ("numpy_function forward", 330), ("numpy_function pair", 400))]
    assert ("dispatch 280 us, native bridge 20 us (forward op alone 10 us), numpy_function "
            "bridge 120 us (forward alone 50 us)") in overhead_table({"benchmarks": overhead})


def test_firstuse_table_and_main_table_keep_their_cases_apart():
    from bench.__main__ import table

    entries = [_entry("first use", "B32 T15 I1", phase, impl, s, "firstuse", routes=["native op"])
               for impl, s in (("cold", 60.0), ("warm", 8.0)) for phase in ("import", "first step")]
    entries.append(_entry("gru", "B32 T15 I1 H45", "forward", "fastrnn", 0.001))
    text = table({"benchmarks": entries})
    assert "fastrnn, cold (empty Numba cache)" in text and "60.00" in text
    main = text.split("\n\n")[0].splitlines()
    assert len(main) == 3 and main[2].startswith("gru")  # header, rule, the one kernel row


def test_bench_help_runs():
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "firstuse" in done.stdout and "bridge" in done.stdout


# ------------------------------------------------------------- TensorFlow side --


@pytest.fixture(scope="module")
def bridge():
    pytest.importorskip("tensorflow")
    from bench import bridge

    return bridge


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_noop_pair_gives_zeros_of_the_input_shape(bridge, dtype):
    import tensorflow as tf

    x = tf.constant(np.arange(24, dtype=dtype).reshape(2, 3, 4) + 1)
    for y in (bridge.native_forward(x), bridge.numpy_forward(x),
              bridge.native_backward(x, x), bridge.numpy_backward(x, x)):
        assert y.dtype == x.dtype and y.shape == x.shape
        assert not np.any(y.numpy())

    @tf.function
    def gradient(pair):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pair(x)
        return y, tape.gradient(y, x, output_gradients=tf.ones_like(y))

    for name in ("native op pair", "numpy_function pair"):
        y, dx = gradient(bridge.BRIDGES[name])
        assert y.shape == x.shape and dx.shape == x.shape and not np.any(dx.numpy())


def test_noop_backward_names_itself_on_a_bad_dy(bridge):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="FastrnnBenchNoopBackward: dy must"):
        bridge.native_backward(tf.ones((2, 3, 4)), tf.ones((2, 3)))


def test_bridge_models_train(bridge):
    for name in bridge.BRIDGES:
        model, x, y = bridge.bridge_model(name)
        assert np.isfinite(model.train_on_batch(x, y))
        assert model.predict_on_batch(x).shape == (32, 1)


def test_stand_ins_have_the_recurrent_models_shapes(bridge):
    """Every seed-style model with stand-ins has the output shape (and mask) of Keras' own."""
    from bench.test_layers import MODELS, _model

    for name in MODELS:
        keras_model, x, _ = _model("keras", name)
        stand_in, x2, _ = _model("stand-in", name)
        assert stand_in.output_shape == keras_model.output_shape, name
        got = stand_in.predict_on_batch(x2[:2]).shape
        assert all(want in (None, n) for want, n in zip(keras_model.output_shape, got)), name


def test_fit_table_compares_each_data_kind_and_static():
    from bench.__main__ import fit_table, table

    medians = {("keras", "static"): 26.0, ("fastrnn", "static"): 13.0,
               ("keras", "dynamic"): 27.0, ("fastrnn", "dynamic"): 13.5,
               ("keras", "tf.data"): 30.0, ("fastrnn", "tf.data"): 15.0}
    entries = [_entry("char LSTM(128)", kind, "fit", impl, ms / 1e3, "fit",
                      routes=["native op"] if impl == "fastrnn" else [])
               for (impl, kind), ms in medians.items()]
    text = fit_table({"benchmarks": entries})
    row = text.splitlines()[-1]
    assert "2.00x" in row and "1.038" in row and "1.154" in row and row.endswith("native"), row
    # The main table keeps no row of them: only the fit table's own lines.
    assert table({"benchmarks": entries}).startswith("model.fit")


@pytest.mark.parametrize("kind", ["static", "dynamic", "tf.data"])
def test_fit_data_kinds_give_the_batches_they_claim(kind):
    import tensorflow as tf

    from bench import fits

    name = "weather LSTM(32) B256 T120 I7"
    batch = fits.MODELS[name][0]
    d = fits.data(name, kind)
    if kind == "tf.data":
        assert isinstance(d, tf.data.Dataset)
        assert d.element_spec[0].shape[0] is None            # traced with batch None
        sizes = [int(x.shape[0]) for x, _ in d]
        assert sizes == [batch] * fits.STEPS + [1]
    else:
        rows = len(d[0])
        assert rows == fits.STEPS * batch + (kind == "dynamic")
