"""The install works as documented: kernels without TensorFlow, lazy layers, a full wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_kernels_import_without_tensorflow(tmp_path):
    result = run_python(
        "import sys, fastrnn, fastrnn.kernels, fastrnn.testing\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))\n"
        "assert fastrnn.kernels.gru_forward.__module__ == 'fastrnn.kernels.gru.cpu'\n"
        "print('ok')", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cpu_path_works_without_cuda_packages(tmp_path):
    # numba-cuda and CuPy made unimportable: the CPU kernels and the layers
    # work exactly as before, and the CUDA stack is never imported on the way.
    result = run_python(
        "import sys\n"
        "sys.modules['cupy'] = None\nsys.modules['numba.cuda'] = None\n"
        "import numpy as np\n"
        "from fastrnn import kernels\n"
        "assert not kernels.gpu_available()\n"
        "x = np.ones((2, 3, 4), np.float32)\n"
        "out, h, saved = kernels.gru_forward(x, None, np.zeros((4, 6), np.float32),\n"
        "                                    np.zeros((2, 6), np.float32), None)\n"
        "kernels.gru_backward(saved, out, h)\n"
        "import fastrnn, keras\n"
        "y = fastrnn.GRU(2)(x)\n"
        "assert tuple(y.shape) == (2, 2)\n"
        "print('ok')", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_unknown_attribute_is_a_clear_error(tmp_path):
    result = run_python("import fastrnn\ntry:\n    fastrnn.Nope\nexcept AttributeError as e:\n"
                        "    print(e)", cwd=tmp_path)
    assert "has no attribute 'Nope'" in result.stdout, result.stderr


def test_wheel_contains_the_kernels_package(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("fastrnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ["fastrnn/__init__.py", "fastrnn/testing.py", "fastrnn/kernels/__init__.py",
                   "fastrnn/kernels/gru/cpu.py", "fastrnn/kernels/gru/reference.py",
                   "fastrnn/kernels/simple_rnn/cpu.py", "fastrnn/kernels/blas/binding.py"]:
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(n.startswith("kernels/") for n in names), "a top-level 'kernels' leaked"


def test_a_saved_model_loads_right_after_import_fastrnn(tmp_path):
    # No layer named first: fastrnn registers its layers with Keras as soon as Keras
    # is imported (before fastrnn or after it), so load_model finds "fastrnn>GRU".
    path = tmp_path / "model.keras"
    save = run_python(
        "import keras, numpy as np, fastrnn\n"
        "keras.utils.set_random_seed(0)\n"
        "model = keras.Sequential([keras.Input((5, 2)), fastrnn.GRU(4, return_sequences=True),\n"
        "                          fastrnn.LSTM(3, return_sequences=True), fastrnn.MinGRU(2)])\n"
        f"model.save({str(path)!r})\n"
        f"np.save({str(tmp_path / 'want.npy')!r}, model.predict(np.ones((2, 5, 2)), verbose=0))\n"
        "print('ok')", cwd=tmp_path)
    assert save.returncode == 0, save.stderr[-3000:]
    for imports in ("import fastrnn, keras", "import keras, fastrnn"):
        load = run_python(
            f"{imports}\nimport numpy as np\n"
            f"model = keras.models.load_model({str(path)!r})\n"
            "names = [type(layer).__module__ for layer in model.layers]\n"
            "assert names == ['fastrnn.layers.gru', 'fastrnn.layers.lstm',\n"
            "                 'fastrnn.layers.mingru'], names\n"
            f"want = np.load({str(tmp_path / 'want.npy')!r})\n"
            "np.testing.assert_allclose(model.predict(np.ones((2, 5, 2)), verbose=0), want,\n"
            "                           rtol=1e-6, atol=1e-7)\n"
            "print('ok')", cwd=tmp_path)
        assert load.returncode == 0, (imports, load.stderr[-3000:])
        assert load.stdout.strip().endswith("ok")
