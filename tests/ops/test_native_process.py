"""The native route as a process sees it: registration once (also across reloads),
the fallback when the C API cannot be set up, the route settings, the warm-up, and
two models training at once on TensorFlow's threads."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code, **env):
    """Run code in a fresh interpreter; returns its stdout (fails the test on error)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def test_reload_and_second_registration_in_a_fresh_process():
    # A second TF_RegisterOpDefinition of a name aborts the process, a second kernel
    # registration breaks every call: registering again after reloads must do neither.
    # (FASTRNN_ROUTE chooses the layers' route; the ops themselves stay callable.)
    out, _ = run_python("""
        import fastrnn
        from fastrnn.ops import recurrence
        print(fastrnn.get_route(), recurrence.route_name("cpu"))
        fastrnn.set_route("native")
        print(recurrence.route_name("cpu"))
        import importlib
        import numpy as np
        import fastrnn.ops._capi as capi
        import fastrnn.ops.native as native
        x = np.ones((2, 3, 1), np.float32)
        def call(native):
            gen = native.ops("gru", np.float32)
            config = np.array([1, 0, 0, 2, 0, 0, 0], np.int32)
            return gen.fastrnn_gru_forward(x, np.zeros((2, 4), np.float32),
                                           np.ones((1, 12), np.float32),
                                           np.ones((4, 12), np.float32) * 0.1,
                                           np.zeros((2, 12), np.float32),
                                           np.zeros((0, 0), bool), np.zeros((0, 0), np.float32), config)[0].numpy()
        first = call(native)
        importlib.reload(capi)
        native = importlib.reload(native)
        importlib.reload(importlib.import_module("fastrnn.ops.native._shell"))
        second = call(native)
        assert np.array_equal(first, second)
        assert capi.register_op("FastrnnGRUForward", [], [], [], None) is False
        print("ok", first.shape)
    """, FASTRNN_ROUTE="numpy_function")
    assert out.split()[:5] == ["numpy_function", "numpy_function", "fallback", "native", "op"]
    assert "ok (2, 3, 4)" in out


def test_fallback_when_the_c_api_cannot_be_set_up():
    out, err = run_python("""
        import warnings
        import numpy as np
        import keras
        import fastrnn
        import fastrnn.ops._capi as capi
        from fastrnn.ops import recurrence
        capi._KEEP.error = capi.Unavailable("this TensorFlow lacks TF_NewKernelBuilder (test)")
        ref = keras.layers.GRU(4)
        fast = fastrnn.GRU(4)
        x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype("float32")
        ref(x)
        fast(x)
        fast.set_weights(ref.get_weights())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fast(x).numpy()
            fast(x)
        why = [str(w.message) for w in caught if "native TensorFlow ops" in str(w.message)]
        assert len(why) <= 1 and recurrence.route_name("cpu") == "numpy_function fallback"
        np.testing.assert_allclose(got, ref(x).numpy(), rtol=2e-5, atol=2e-6)
        print("fell back", why)
    """)
    assert "fell back" in out and "lacks TF_NewKernelBuilder" in out + err


def test_settings_reject_bad_values():
    import fastrnn

    with pytest.raises(ValueError, match="route must be one of"):
        fastrnn.set_route("xla")
    with pytest.raises(ValueError, match="cells must name some of"):
        fastrnn.warmup(cells=["rnn"])
    with pytest.raises(ValueError, match="dtypes must name some of"):
        fastrnn.warmup(dtypes="float16")


def test_warmup_registers_the_ops():
    import fastrnn
    from tensorflow.python.framework import op_def_registry

    from fastrnn.kernels.runtime import abi as _abi

    timings = fastrnn.warmup(cells="gru", dtypes="float32", verbose=False)
    assert list(timings) == [("gru", "float32")] and timings[("gru", "float32")] >= 0
    assert op_def_registry.get("FastrnnGRUForward") is not None
    # both GRU variants' cores: reset_after=False has its own
    assert {("gru_forward", "f32"), ("gru_backward", "f32"), ("gru_forward_reset_before", "f32"),
            ("gru_backward_reset_before", "f32")} <= set(_abi.bound())


def test_a_gru_binds_only_the_cores_of_its_variant():
    # GRU's reset_after variants have cores of their own (half the cold compile each):
    # the direct launchers and a model with reset_after=False bind those alone, and an
    # op asked to run a variant whose cores are not bound fails with a TF error
    # instead of crashing.
    out, _ = run_python("""
        import numpy as np
        import keras
        import tensorflow as tf
        import fastrnn
        from fastrnn import kernels
        from fastrnn.kernels.runtime import abi as _abi
        from fastrnn.ops import native

        x = np.ones((2, 3, 1), np.float32)
        W, U = np.ones((1, 12), np.float32), np.ones((4, 12), np.float32) * 0.1
        out, h, saved = kernels.gru_forward(x, None, W, U, None, reset_after=False)
        kernels.gru_backward(saved, np.ones_like(out), None)
        print("launchers bound", [name for name, _ in _abi.bound() if name.startswith("gru")])
        model = keras.Sequential([keras.Input((3, 1)), fastrnn.GRU(4, reset_after=False),
                                  keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.train_on_batch(x, np.ones((2, 1), np.float32))
        print("bound", [name for name, _ in _abi.bound() if name.startswith("gru")])
        gen = native._wrappers["gru"]  # registered, only the reset_after=False cores bound
        config = np.array([1, 0, 0, 2, 0, 1, 0], np.int32)  # reset_after=True
        try:
            gen.fastrnn_gru_forward(x, np.zeros((2, 4), np.float32), W, U,
                                    np.zeros((2, 12), np.float32), np.zeros((0, 0), bool), np.zeros((0, 0), np.float32), config)
        except tf.errors.InternalError as error:
            print("op:", error.message)
        native.ops("gru", np.float32, reset_after=True)
        out = gen.fastrnn_gru_forward(x, np.zeros((2, 4), np.float32), W, U,
                                      np.zeros((2, 12), np.float32), np.zeros((0, 0), bool), np.zeros((0, 0), np.float32), config)
        print("after binding", out[0].shape)
    """)
    assert "launchers bound ['gru_backward_reset_before', 'gru_forward_reset_before']" in out
    assert "\nbound ['gru_backward_reset_before', 'gru_forward_reset_before']" in out
    assert "FastrnnGRUForward: a core failed (out of memory?) or was not bound" in out.split("op:")[1]
    assert "after binding (2, 3, 4)" in out


def test_two_models_train_at_once_on_threads():
    import keras
    import tensorflow as tf

    import fastrnn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 15, 1)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")

    def build(cls, seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((15, 1)), cls(8, return_sequences=True), cls(8),
                                  keras.layers.Dense(1)])
        model.compile("adam", "mse")
        return model

    def train(model, losses, steps=5):
        for _ in range(steps):
            losses.append(float(model.train_on_batch(x, y)))

    alone = {}
    for name, cls in (("gru", fastrnn.GRU), ("lstm", fastrnn.LSTM)):
        alone[name] = []
        train(build(cls, 1), alone[name])
    together = {"gru": [], "lstm": []}
    models = {"gru": build(fastrnn.GRU, 1), "lstm": build(fastrnn.LSTM, 1)}
    threads = [threading.Thread(target=train, args=(models[k], together[k])) for k in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in models:
        np.testing.assert_allclose(together[k], alone[k], rtol=1e-5, err_msg=k)
    assert tf.executing_eagerly()


def test_numba_threading_layer_survives_concurrent_threads():
    # Numba's workqueue layer aborts the process when parallel code runs from two
    # threads at once (TensorFlow's inter-op threads do that); fastrnn must end up
    # on a layer that does not.
    out, _ = run_python("""
        import threading
        import numba
        import numpy as np
        import fastrnn
        from fastrnn import kernels
        x = np.random.default_rng(0).standard_normal((64, 256, 16)).astype(np.float32)
        kernel = np.ones((16, 64), np.float32) * 0.01
        def work():
            for _ in range(3):
                out, h, saved = kernels.mingru_forward(x, None, kernel, None)
                kernels.mingru_backward(saved, out, h)
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("layer", numba.threading_layer())
    """)
    assert "layer" in out and "workqueue" not in out


def test_a_core_that_raises_fails_the_call_and_the_op_cleanly():
    # A core compiled once and called by name (kernels.runtime.abi) cannot raise through the
    # C ABI: Numba prints the exception and the cfunc returns. Its done flag stays
    # clear, and the launcher raises / the op fails with a TF error. A failing core
    # is bound in place of GRU's forward before anything links to it.
    out, err = run_python("""
        import numpy as np
        from numba import carray, cfunc
        from fastrnn.kernels.runtime import abi as _abi

        def failing(dtype):
            @cfunc(_abi.SIGNATURE)
            def run(address):
                a = carray(address, 1, np.int64)
                np.empty(-1 if a[0] != 0 else 1)  # raises: negative dimensions
            return run

        _abi._factories["gru_forward"] = failing
        import fastrnn
        from fastrnn import kernels
        x = np.ones((2, 3, 1), np.float32)
        W, U = np.ones((1, 12), np.float32), np.ones((4, 12), np.float32) * 0.1
        try:
            kernels.gru_forward(x, None, W, U, None)
        except RuntimeError as error:
            print("launcher:", error)
        import tensorflow as tf
        import fastrnn.ops.native as native
        gen = native.ops("gru", np.float32)
        config = np.array([1, 0, 0, 2, 0, 0, 0], np.int32)
        try:
            gen.fastrnn_gru_forward(x, np.zeros((2, 4), np.float32), W, U,
                                    np.zeros((2, 12), np.float32), np.zeros((0, 0), bool), np.zeros((0, 0), np.float32), config)
        except tf.errors.InternalError as error:
            print("op:", error.message)
        print("alive")
    """)
    assert "launcher: gru_forward failed inside its compiled core" in out
    assert "FastrnnGRUForward: a core failed (out of memory?)" in out.split("op:")[1]
    assert out.strip().endswith("alive")
    assert "negative dimensions" in err  # Numba printed the core's own exception
