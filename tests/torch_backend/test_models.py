"""Whole models on Keras' torch backend: fit as users write it, weight files across
backends, the patch and `python -m fastrnn`, and no TensorFlow on this route."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import fastrnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sentiment(rnn, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((12,), dtype="int32"),
                              keras.layers.Embedding(50, 8, mask_zero=True),
                              keras.layers.Bidirectional(rnn(6)),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    return model


def _reviews(n=96, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, (n, 12)).astype("int32")
    for row, length in zip(ids, rng.integers(3, 13, n)):
        row[length:] = 0   # padded reviews, as users have them
    return ids, (ids[:, 0] > 25).astype("float32")


def test_fit_gives_keras_losses():
    x, y = _reviews()
    losses, start = {}, None
    for name, rnn in (("keras", keras.layers.GRU), ("fastrnn", fastrnn.GRU)):
        model = _sentiment(rnn)
        if start is None:
            start = model.get_weights()
        model.set_weights(start)
        history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        losses[name] = history.history["loss"]
    np.testing.assert_allclose(losses["fastrnn"], losses["keras"], rtol=1e-4)
    assert losses["fastrnn"][1] < losses["fastrnn"][0]


def _run(code, backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("saved_on, loaded_on", [("torch", "tensorflow"),
                                                 ("tensorflow", "torch")])
def test_weight_files_move_across_backends(tmp_path, saved_on, loaded_on):
    path = tmp_path / "model.keras"
    x_path = tmp_path / "x.npy"
    np.save(x_path, _reviews(8)[0])
    save = f"""
        import keras, numpy as np, fastrnn
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((12,), dtype="int32"),
                                  keras.layers.Embedding(50, 8, mask_zero=True),
                                  keras.layers.Bidirectional(fastrnn.LSTM(6)),
                                  keras.layers.Dense(1)])
        model.save({str(path)!r})
        np.save({str(tmp_path / "want.npy")!r},
                keras.ops.convert_to_numpy(model.predict(np.load({str(x_path)!r}), verbose=0)))
    """
    load = f"""
        import keras, numpy as np, fastrnn
        fastrnn.LSTM  # the layers register with Keras when first named
        model = keras.models.load_model({str(path)!r})
        assert type(model.layers[1].forward_layer) is fastrnn.LSTM
        got = keras.ops.convert_to_numpy(model.predict(np.load({str(x_path)!r}), verbose=0))
        np.testing.assert_allclose(got, np.load({str(tmp_path / "want.npy")!r}), atol=1e-5)
        print("ok")
    """
    _run(save, saved_on)
    assert _run(load, loaded_on).strip().endswith("ok")


def test_patch_and_python_m_fastrnn_on_torch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import keras, numpy as np
        model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4),
                                  keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(np.ones((8, 5, 3), "float32"), np.ones((8, 1), "float32"), verbose=0)
        import sys
        print("layer", type(model.layers[0]).__module__, "tensorflow" in sys.modules)
    """))
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-m", "fastrnn", "--report", str(script)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "layer fastrnn.layers.lstm False" in result.stdout
    assert "torch kernels (cpu)" in result.stdout + result.stderr


def test_the_torch_route_imports_no_tensorflow():
    out = _run("""
        import sys, keras, numpy as np, fastrnn
        model = keras.Sequential([keras.Input((6, 3)), fastrnn.GRU(4, return_sequences=True),
                                  fastrnn.LSTM(4), keras.layers.Dense(1)])
        model.compile("adam", "mse")
        model.fit(np.ones((16, 6, 3), "float32"), np.ones((16, 1), "float32"), verbose=0)
        print("tensorflow" in sys.modules)
    """, "torch")
    assert out.strip().endswith("False")
