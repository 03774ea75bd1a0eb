"""What the bridge between TensorFlow and the kernels costs, apart from the kernels.

- The bridge case: the 4-layer forecasting model (B32 T15 I1, 45 units) whose
  layers do no recurrent work (bench/bridge.py): their inside is a no-work native
  op pair, a no-work tf.numpy_function pair, or nothing. (step - nothing) / 4 is one
  layer's forward+backward bridge in a training step.
- The fixed cost of one call inside a tf.function, split: the tf.function call
  itself (tf.identity), the no-work native op forward and pair, the no-work
  numpy_function forward and pair, and one GRU(1) call on a [1, 1, 1] input for
  fastrnn (native and numpy_function routes), the kernel called from Python, and
  keras.layers.GRU.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BRIDGE_SHAPE = "B32 T15 I1 H45 x4"


@pytest.mark.parametrize("mode", ["train_on_batch", "predict_on_batch"])
def test_bridge(run_paired, benchmark, mode):
    from bench import bridge

    benchmark.group = f"bridge 4-layer model | {mode}"
    fns = {}
    for name in bridge.BRIDGES:
        model, x, y = bridge.bridge_model(name)
        if mode == "train_on_batch":
            fns[name] = lambda model=model, x=x, y=y: model.train_on_batch(x, y)
        else:
            fns[name] = lambda model=model, x=x: model.predict_on_batch(x)
    # (step - nothing) / 4 is a difference of tens of microseconds: four times the rounds.
    run_paired(fns, scale=4, cell="bridge", shape=BRIDGE_SHAPE, mode=mode, kind="bridge",
               layers=bridge.LAYERS)


# The implementations of the fixed-cost case (table: bench/__main__.py).
OVERHEAD_IMPLS = ("dispatch", "native forward", "native pair", "numpy_function forward",
                  "numpy_function pair", "fastrnn kernel", "fastrnn", "fastrnn numpy_function",
                  "keras")


def _overhead_call(impl):
    import tensorflow as tf

    x = tf.ones((1, 1, 1))
    if impl == "dispatch":
        return tf.function(lambda: tf.identity(x))
    if impl.startswith(("native ", "numpy_function ")):
        from bench import bridge

        kind, what = impl.split()
        forward, backward = {"native": (bridge.native_forward, bridge.native_backward),
                             "numpy_function": (bridge.numpy_forward, bridge.numpy_backward)}[kind]
        if what == "forward":
            return tf.function(lambda: forward(x))
        return tf.function(lambda: backward(x, forward(x)))
    if impl == "fastrnn kernel":
        from fastrnn import kernels

        x = np.ones((1, 1, 1), np.float32)
        W, U = np.ones((1, 3), np.float32), np.ones((1, 3), np.float32)
        b = np.ones((2, 3), np.float32)
        return lambda: kernels.gru_forward(x, None, W, U, b)
    import keras

    import fastrnn
    from bench.test_layers import _under_route

    layer = (keras.layers.GRU if impl == "keras" else fastrnn.GRU)(1)
    layer.build((1, 1, 1))
    call = tf.function(lambda: layer(x))
    return _under_route("numpy_function", call) if impl == "fastrnn numpy_function" else call


def test_fixed_overhead(run_paired, benchmark):
    """What one call costs beyond the arithmetic, inside a tf.function, on [1, 1, 1].

    "dispatch" is the tf.function call itself (TensorFlow's, charged to no bridge);
    the native and numpy_function rows are the no-work op pairs of bench/bridge.py.
    """
    from fastrnn import _routes

    benchmark.group = "overhead GRU(1) on [1, 1, 1]"
    fns, routes = {}, {}
    for impl in OVERHEAD_IMPLS:
        fns[impl] = _overhead_call(impl)
        seen = len(_routes.notes())
        fns[impl]()  # traces: fastrnn's layer notes its route
        routes[impl] = sorted({route for _, _, route, _ in _routes.notes()[seen:]})
    extra = run_paired(fns, scale=4, cell="overhead GRU(1)", shape="B1 T1 I1 H1",
                       mode="forward", kind="overhead")
    for impl in OVERHEAD_IMPLS:
        extra[impl]["routes"] = routes[impl]
