"""fastrnn.patch()/unpatch()/patched() and `python -m fastrnn`: Keras code, unedited, on fastrnn.

Checks that need a clean process run as subprocesses, started together (each
pays ~5 s of TensorFlow import): a seed-style script under plain Python and
under `python -m fastrnn --report` (same losses; the report names the routes),
the files each saved loaded on the other side (stock files under the patch;
files saved under the patch in a process that never imports fastrnn), and the
runner's exit codes, tracebacks and `-m`.
"""

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastrnn
from fastrnn import _patch, _routes

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"simple_rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}
KERAS = {cell: getattr(keras.layers, name) for cell, name in NAMES.items()}
FAST = {cell: getattr(fastrnn, name) for cell, name in NAMES.items()}
assert not _patch.patched_cells(), "imported while patched"

# ----------------------------------------------------------------- the scripts

# A seed-style script (next-word Embedding + LSTM(150) + softmax; the forecasting
# Input(15, 1) -> RNN -> Dense(1) models), written as a user would: no fastrnn.
SEED_SCRIPT = r'''
import json, os, sys
import numpy as np
import keras
from tensorflow.keras.layers import GRU, LSTM, SimpleRNN, Dense, Embedding

out = sys.argv[1]
result = {"argv": sys.argv, "name": __name__, "losses": {}, "classes": {}}


def save(name, model, x):
    model.save(os.path.join(out, name + ".keras"))
    model.save(os.path.join(out, name + ".h5"))
    np.save(os.path.join(out, name + "_x.npy"), x)
    np.save(os.path.join(out, name + "_y.npy"), np.asarray(model(x, training=False)))
    result["classes"][name] = [type(layer).__module__ for layer in model.layers]


series = np.sin(np.arange(120) / 4.0).astype("float32")
x = np.stack([series[i:i + 15] for i in range(48)])[..., None]
y = series[15:63][:, None]
for rnn in (SimpleRNN, GRU, LSTM):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((15, 1)), rnn(20), Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    result["losses"][rnn.__name__] = history.history["loss"]
    save(rnn.__name__, model, x)

keras.utils.set_random_seed(2)
vocab, length = 50, 5
rng = np.random.default_rng(0)
words = rng.integers(1, vocab, (48, length + 1))
model = keras.Sequential([keras.Input((length,)), Embedding(vocab, 10), LSTM(150),
                          Dense(vocab, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
history = model.fit(words[:, :-1], words[:, -1], epochs=2, batch_size=16, verbose=0)
result["losses"]["next_word"] = history.history["loss"]
save("next_word", model, words[:, :-1])
print("RESULT " + json.dumps(result))
'''

# Loads what the other side saved and runs it on the same inputs.
LOAD = r'''
def load_all(folder, names):
    result = {}
    for name in names:
        x = np.load(os.path.join(folder, name + "_x.npy"))
        y = np.load(os.path.join(folder, name + "_y.npy"))
        for ext in (".keras", ".h5"):
            # compile=False: Keras 3.15 itself cannot compile an .h5 saved with loss="mse".
            model = keras.models.load_model(os.path.join(folder, name + ext), compile=False)
            result[name + ext] = {
                "classes": [type(layer).__module__ for layer in model.layers],
                "err": float(np.abs(np.asarray(model(x, training=False)) - y).max())}
    return result
'''

# In a process that never imports fastrnn: files saved under the patch.
PLAIN_LOAD_SCRIPT = r'''
import json, os, sys
import numpy as np
import keras
''' + LOAD + r'''
result = load_all(sys.argv[1], sys.argv[2].split(","))
result["fastrnn_imported"] = any(m.split(".")[0] == "fastrnn" for m in sys.modules)
print("RESULT " + json.dumps(result))
'''

# Run as `python -m fastrnn -m patched_load`: stock files load as fastrnn layers with
# the same numbers; a tf.keras namespace first imported while patched is put back on
# unpatch; then it exits with code 3.
PATCHED_LOAD_SCRIPT = r'''
import json, os, sys
import numpy as np
import keras
import fastrnn
''' + LOAD + r'''
fastrnn.unpatch()
stock = keras.layers.GRU
for module_name in ("tensorflow.keras.layers", "keras._tf_keras.keras.layers"):
    sys.modules.pop(module_name, None)
fastrnn.patch()
from tensorflow.keras.layers import GRU as late_gru
late_module = sys.modules["tensorflow.keras.layers"]  # a module object new to the patch
late = {"patched": late_gru is fastrnn.GRU}
fastrnn.unpatch()
late["restored"] = late_module.GRU is stock and keras.layers.GRU is stock
fastrnn.patch()

result = load_all(sys.argv[1], sys.argv[2].split(","))
result.update(argv=sys.argv, name=__name__, late=late)
print("RESULT " + json.dumps(result))
sys.exit(3)
'''

FAILING_SCRIPT = r'''
import sys
def inner():
    raise RuntimeError("the script's own error")
print("argv", sys.argv[1:])
inner()
'''

def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _start(args, cwd):
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _result(out, err):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result printed.\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


SAVED = ("SimpleRNN", "GRU", "LSTM", "next_word")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess, two or three at a time; their (returncode, stdout, stderr)."""
    work = tmp_path_factory.mktemp("patch")
    (work / "plain").mkdir()
    (work / "patched").mkdir()
    (work / "seed.py").write_text(SEED_SCRIPT)
    (work / "plain_load.py").write_text(PLAIN_LOAD_SCRIPT)
    (work / "patched_load.py").write_text(PATCHED_LOAD_SCRIPT)
    names = ",".join(SAVED)
    first = {
        "plain_seed": _start(["seed.py", "plain", "--flag"], work),
        "patched_seed": _start(["-m", "fastrnn", "--report", "seed.py", "patched", "--flag"],
                               work),
    }
    done = {key: _finish(proc) for key, proc in first.items()}
    second = {
        "plain_load": _start(["plain_load.py", "patched", names], work),
        "patched_load": _start(["-m", "fastrnn", "-m", "patched_load", "plain", names], work),
    }
    done.update({key: _finish(proc) for key, proc in second.items()})
    return done


def _ok(run, expected=0):
    code, out, err = run
    assert code == expected, f"exit code {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}"
    return _result(out, err)


def test_seed_script_unedited_under_python_m_fastrnn_gives_keras_losses(runs):
    plain, patched = _ok(runs["plain_seed"]), _ok(runs["patched_seed"])
    assert set(patched["losses"]) == {"SimpleRNN", "GRU", "LSTM", "next_word"}
    for name, losses in plain["losses"].items():
        got = patched["losses"][name]
        assert len(got) == len(losses) == 2
        np.testing.assert_allclose(got, losses, rtol=2e-5, atol=1e-7,
                                   err_msg=f"{name}: fastrnn losses differ from Keras'")
    # The script saw what `python seed.py patched --flag` would give it.
    assert patched["argv"] == ["seed.py", "patched", "--flag"]
    assert patched["name"] == "__main__"
    for name in SAVED:
        rnn_module = patched["classes"][name][-2]
        assert rnn_module.startswith("fastrnn.layers."), (name, patched["classes"][name])
        assert plain["classes"][name][-2].startswith("keras.src.layers.rnn."), name


def test_report_names_each_layer_and_its_route(runs):
    _, _, err = runs["patched_seed"]
    report = err[err.index("fastrnn: "):]
    routes = ("native op", "numpy_function fallback", "cuda")
    for layer, cls in (("simple_rnn", "SimpleRNN"), ("gru", "GRU"), ("lstm", "LSTM"),
                       ("lstm_1", "LSTM")):
        lines = [line for line in report.splitlines()
                 if line.strip().startswith(f"{layer} ({cls})")]
        assert lines, f"{layer} ({cls}) missing from the report:\n{report}"
        assert any(route in lines[0] for route in routes), lines[0]


def test_stock_keras_and_h5_files_load_under_the_patch_as_fastrnn(runs):
    # Run as `python -m fastrnn -m patched_load`: also checks -m and the exit code (3).
    result = _ok(runs["patched_load"], expected=3)
    assert result["name"] == "__main__"
    assert result["argv"][0].endswith("patched_load.py") and result["argv"][1] == "plain"
    for name in SAVED:
        for ext in (".keras", ".h5"):
            entry = result[name + ext]
            assert entry["classes"][-2].startswith("fastrnn.layers."), (name + ext, entry)
            assert entry["err"] < 1e-5, (name + ext, entry["err"])
    assert result["late"] == {"patched": True, "restored": True}


def test_files_saved_under_the_patch_load_in_plain_keras_without_fastrnn(runs):
    result = _ok(runs["plain_load"])
    assert result.pop("fastrnn_imported") is False
    assert len(result) == 2 * len(SAVED)
    for key, entry in result.items():
        assert entry["classes"][-2].startswith("keras.src.layers.rnn."), (key, entry)
        assert entry["err"] < 1e-5, (key, entry["err"])


def test_runner_shows_the_scripts_traceback_and_exits_1(clean, tmp_path, monkeypatch, capsys):
    from fastrnn.__main__ import main

    script = tmp_path / "failing.py"
    script.write_text(FAILING_SCRIPT)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main([str(script), "a b"]) == 1
    out, err = capsys.readouterr()
    assert "argv ['a b']" in out
    assert sys.path[0] == str(tmp_path)  # as `python failing.py` puts it
    assert err.rstrip().endswith("RuntimeError: the script's own error"), err[-3000:]
    traceback = err[err.index("Traceback (most recent call last):"):]
    assert 'failing.py", line 6, in <module>' in traceback
    assert 'failing.py", line 4, in inner' in traceback
    assert "runpy" not in traceback and "__main__.py" not in traceback, traceback
    assert _patch.patched_cells() == ["simple_rnn", "gru", "lstm", "rnn"]  # the runner patched


def test_runner_usage_errors_change_nothing(capsys):
    from fastrnn.__main__ import main

    assert main([]) == 2
    assert main(["--cells", "gur", "x.py"]) == 2
    assert "--cells: patch(cells=...): got 'gur'" in capsys.readouterr().err
    assert main(["--nope", "x.py"]) == 2
    assert main([str(ROOT / "no_such_script.py")]) == 2
    assert "can't open file" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "python -m fastrnn" in capsys.readouterr().out
    assert not _patch.patched_cells()


def test_import_fastrnn_and_naming_patch_do_not_import_tensorflow(tmp_path):
    code = ("import sys, fastrnn\n"
            "assert callable(fastrnn.patch) and callable(fastrnn.unpatch)\n"
            "assert callable(fastrnn.patched)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]

# ----------------------------------------------------------- in this process


def _snapshot():
    """Every attribute of every loaded keras-namespace module, and Keras' registries."""
    from keras.src import api_export
    from keras.src.saving import object_registration

    attrs = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("keras", "tensorflow.keras")):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            attrs[(name, attr)] = value
    return (attrs, dict(api_export.REGISTERED_NAMES_TO_OBJS),
            dict(api_export.REGISTERED_OBJS_TO_NAMES),
            dict(object_registration.GLOBAL_CUSTOM_OBJECTS),
            dict(object_registration.GLOBAL_CUSTOM_NAMES))


def _assert_same(before, after):
    attrs_before, *registries_before = before
    attrs_after, *registries_after = after
    changed = [key for key, value in attrs_before.items()
               if key in attrs_after and attrs_after[key] is not value]
    assert not changed, f"attributes not restored: {changed[:20]}"
    for b, a in zip(registries_before, registries_after):
        assert a.keys() == b.keys()
        assert all(a[k] is b[k] for k in b), [k for k in b if a[k] is not b[k]]


@pytest.fixture
def clean():
    """Each test starts and ends with Keras exactly as it was, whatever it did."""
    before = _snapshot()
    yield before
    with _patch._lock:
        _patch._explicit.clear()
        _patch._holds.clear()
        _patch._apply()
    _assert_same(before, _snapshot())


def _names(cell):
    """Every public way of naming the cell's class that a user writes."""
    name = NAMES[cell]
    namespace = {}
    exec(f"from tensorflow.keras.layers import {name} as a\n"
         f"from keras.layers import {name} as b\n", namespace)
    return {"keras.layers": getattr(keras.layers, name),
            "tf.keras.layers": getattr(tf.keras.layers, name),
            "from tensorflow.keras.layers import": namespace["a"],
            "from keras.layers import": namespace["b"],
            "keras.src.layers": getattr(sys.modules["keras.src.layers"], name),
            "defining module": getattr(sys.modules[KERAS[cell].__module__], name)}


def test_patch_makes_every_name_give_fastrnn_and_unpatch_restores_exactly(clean):
    built_before = keras.layers.GRU(3)
    fastrnn.patch()
    assert _patch.patched_cells() == ["simple_rnn", "gru", "lstm", "rnn"]
    for cell in NAMES:
        for how, cls in _names(cell).items():
            assert cls is FAST[cell], (cell, how, cls)
    layer = keras.layers.GRU(3)
    assert type(layer) is fastrnn.GRU and isinstance(layer, KERAS["gru"])
    assert type(built_before) is KERAS["gru"]  # what exists keeps its class
    fastrnn.unpatch()
    assert not _patch.patched_cells()
    for cell in NAMES:
        for how, cls in _names(cell).items():
            assert cls is KERAS[cell], (cell, how, cls)
    assert type(layer) is fastrnn.GRU
    _assert_same(clean, _snapshot())


def test_patch_cells_limits_it_and_bad_names_are_clear_errors(clean):
    fastrnn.patch(cells=["gru", "LSTM"])
    assert keras.layers.GRU is fastrnn.GRU and keras.layers.LSTM is fastrnn.LSTM
    assert keras.layers.SimpleRNN is KERAS["simple_rnn"]
    fastrnn.unpatch(cells="lstm")
    assert keras.layers.LSTM is KERAS["lstm"] and keras.layers.GRU is fastrnn.GRU
    for bad in (["gru", "mingru"], ["lstmcell"]):
        with pytest.raises(ValueError, match=r"patch\(cells=\.\.\.\): got '(mingru|lstmcell)'.*"
                                             r"allowed cell names are 'simple_rnn', 'gru', "
                                             r"'lstm', 'rnn'"):
            fastrnn.patch(cells=bad)
    with pytest.raises(ValueError, match=r"unpatch\(cells=\.\.\.\): got 3"):
        fastrnn.unpatch(cells=[3])
    with pytest.raises(TypeError, match=r"patched\(cells=\.\.\.\) takes a list"):
        fastrnn.patched(cells=3).__enter__()
    assert _patch.patched_cells() == ["gru"]  # the bad calls changed nothing


def test_patching_twice_and_unpatching_without_a_patch_are_harmless(clean):
    fastrnn.unpatch()
    _assert_same(clean, _snapshot())
    fastrnn.patch()
    once = _snapshot()
    fastrnn.patch()
    _assert_same(once, _snapshot())
    assert keras.layers.LSTM is fastrnn.LSTM
    fastrnn.unpatch()
    fastrnn.unpatch()
    _assert_same(clean, _snapshot())


def test_patched_blocks_nest_and_restore_what_was_before(clean):
    fastrnn.patch(cells=["lstm"])
    with fastrnn.patched(cells=["gru"]):
        with fastrnn.patched():
            assert _patch.patched_cells() == ["simple_rnn", "gru", "lstm", "rnn"]
        assert _patch.patched_cells() == ["gru", "lstm"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fastrnn.unpatch()
        assert "GRU stay(s) patched while a fastrnn.patched() block is open" in str(
            caught[0].message)
        assert _patch.patched_cells() == ["gru"]
    assert not _patch.patched_cells()
    _assert_same(clean, _snapshot())

    @fastrnn.patched(cells=["simple_rnn"])
    def build():
        return keras.layers.SimpleRNN(2)

    assert type(build()) is fastrnn.SimpleRNN and keras.layers.SimpleRNN is KERAS["simple_rnn"]
    with pytest.raises(KeyError):
        with fastrnn.patched():
            raise KeyError("inside")
    assert not _patch.patched_cells()


def test_two_threads_with_overlapping_blocks_and_racing_patch_calls(clean):
    # Overlap: A enters, B enters, A exits (B still sees the patch), B exits.
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen, errors = {}, []

    def thread_a():
        try:
            with fastrnn.patched():
                a_in.set()
                b_in.wait(30)
                seen["a"] = type(keras.layers.GRU(2))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            a_out.set()

    def thread_b():
        try:
            a_in.wait(30)
            with fastrnn.patched(cells=["gru"]):
                b_in.set()
                a_out.wait(30)
                seen["b"] = (type(keras.layers.GRU(2)), keras.layers.LSTM)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert seen["a"] is fastrnn.GRU
    assert seen["b"] == (fastrnn.GRU, KERAS["lstm"])  # A's exit ended only A's LSTM
    assert not _patch.patched_cells()
    _assert_same(clean, _snapshot())

    # Racing patch()/unpatch()/patched() from four threads leaves a consistent state.
    barrier = threading.Barrier(4)

    def churn(i):
        try:
            barrier.wait(30)
            for _ in range(25):
                if i % 2:
                    fastrnn.patch(cells=["gru", "simple_rnn"])
                    fastrnn.unpatch()
                else:
                    with fastrnn.patched(cells=["lstm", "gru"]):
                        assert keras.layers.LSTM is fastrnn.LSTM
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unpatch() while another thread's block holds GRU
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert not _patch.patched_cells()
    _assert_same(clean, _snapshot())


def test_bidirectional_of_patched_lstm_runs_fastrnn_with_keras_numbers(clean):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 4)).astype("float32")
    stock = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    want = stock(x)
    with fastrnn.patched(cells=["lstm"]):
        layer = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    assert type(layer.forward_layer) is fastrnn.LSTM
    assert type(layer.backward_layer) is fastrnn.LSTM and layer.backward_layer.go_backwards
    assert type(stock.forward_layer) is KERAS["lstm"]
    layer.build(x.shape)
    layer.set_weights(stock.get_weights())
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)


def test_under_the_patch_default_layers_serialize_as_keras_and_explicit_devices_as_fastrnn(
        clean):
    with fastrnn.patched():
        auto = keras.layers.GRU(3, return_sequences=True, name="auto_gru")
        pinned = fastrnn.LSTM(3, device="cpu", name="pinned_lstm")
        model = keras.Sequential([keras.Input((5, 2)), auto, pinned])
        config = model.get_config()
        auto_config, pinned_config = config["layers"][1], config["layers"][2]
        assert auto_config["module"] == "keras.layers" and auto_config["class_name"] == "GRU"
        assert auto_config["registered_name"] is None and "device" not in auto_config["config"]
        assert pinned_config["registered_name"] == "fastrnn>LSTM"
        assert pinned_config["config"]["device"] == "cpu"
        again = keras.Sequential.from_config(config)
        assert [type(layer) for layer in again.layers] == [fastrnn.GRU, fastrnn.LSTM]
        assert again.layers[1]._device == "cpu"
    # Unpatched, the same config builds Keras' GRU and still fastrnn's pinned LSTM.
    plain = keras.Sequential.from_config(config)
    assert [type(layer) for layer in plain.layers] == [KERAS["gru"], fastrnn.LSTM]
    # Without the patch fastrnn's layers keep their own name and device.
    unpatched_config = keras.layers.serialize(fastrnn.GRU(2))
    assert unpatched_config["registered_name"] == "fastrnn>GRU"
    assert unpatched_config["config"]["device"] == "auto"


def test_routes_are_noted_once_per_layer_and_route(clean):
    _routes.clear()
    x = np.zeros((2, 4, 3), "float32")
    fast = fastrnn.GRU(2, name="route_gru")
    fast(x)
    fast(x)
    fastrnn.MinGRU(2, name="route_mingru")(x)
    with pytest.warns(UserWarning, match="running Keras' own"):
        fastrnn.SimpleRNN(2, activation="softsign", name="route_slow")(x)
    notes = _routes.notes()
    assert [n[:2] for n in notes] == [("route_gru", "GRU"), ("route_mingru", "MinGRU"),
                                      ("route_slow", "SimpleRNN")]
    fast_routes = ("native op", "numpy_function fallback", "cuda")
    assert notes[0][2] in fast_routes and notes[1][2] in fast_routes
    assert notes[2][2] == "keras" and "softsign" in notes[2][3]
    report = _routes.report()
    assert "route_slow (SimpleRNN)" in report
    assert "Keras' own loop: activation=" in report
    _routes.clear()
    assert "no fastrnn layer ran" in _routes.report()
