"""What is timed: one callable per (implementation, cell, shape, mode), inputs built outside.

Every builder returns a zero-argument callable that runs the whole work once
(forward, or forward + backward with a fixed random upstream gradient over
every output and all gradients: inputs, initial state and weights).
"""

import os

import numpy as np

# DESIGN.md's shapes: two seed-like models, a mid one, a long one.
SHAPES = {
    "B32 T15 I1 H45": (32, 15, 1, 45),
    "B128 T17 I100 H150": (128, 17, 100, 150),
    "B64 T100 I128 H256": (64, 100, 128, 256),
    "B16 T1024 I64 H128": (16, 1024, 64, 128),
}
CELLS = {"gru": 3, "lstm": 4, "simple_rnn": 1}
MODES = ("forward", "forward+backward")
DTYPE = np.float32


def _inputs(cell, shape, seed=0):
    B, T, I, H = shape
    G = CELLS[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(DTYPE)
    W = (rng.standard_normal((I, G * H)) / np.sqrt(I)).astype(DTYPE)
    U = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(DTYPE)
    b = (rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype(DTYPE)
    d_out = rng.standard_normal((B, T, H)).astype(DTYPE)
    return x, W, U, b, d_out


def fastrnn_kernel(cell, shape, mode):
    from fastrnn import kernels

    x, W, U, b, d_out = _inputs(cell, shape)
    forward = getattr(kernels, f"{cell}_forward")
    backward = getattr(kernels, f"{cell}_backward")
    states = [None] * (2 if cell == "lstm" else 1)
    if mode == "forward":
        return lambda: forward(x, *states, W, U, b)

    def run():
        *_, saved = forward(x, *states, W, U, b)
        return backward(saved, d_out, *states)

    return run


def numpy_floor(cell, shape, mode):
    """The same matrix products timed alone (NumPy, preallocated outputs)."""
    B, T, I, H = shape
    G = CELLS[cell]
    x, W, U, b, _ = _inputs(cell, shape)
    x2 = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * B, I)
    xw = np.empty((T * B, G * H), DTYPE)
    h = np.ones((B, H), DTYPE) * 0.1
    rec = np.empty((B, G * H), DTYPE)
    dg = np.ones((T * B, G * H), DTYPE) * 0.01
    dg_steps = dg.reshape(T, B, G * H)
    states = np.ones((T * B, H), DTYPE) * 0.1
    UT = np.ascontiguousarray(U.T)
    WT = np.ascontiguousarray(W.T)
    dh = np.empty((B, H), DTYPE)
    dx = np.empty((T * B, I), DTYPE)

    def run():
        np.matmul(x2, W, out=xw)
        for _ in range(T):
            np.matmul(h, U, out=rec)
        if mode == "forward":
            return
        for t in range(T):
            np.matmul(dg_steps[t], UT, out=dh)
        np.matmul(dg, WT, out=dx)
        return x2.T @ dg, states.T @ dg

    return run


def tf_forward_backward(layer, x, d_out):
    """A tf.function: the layer's forward and every gradient (input and weights)
    for the upstream gradient `d_out`. x and d_out are tf tensors."""
    import tensorflow as tf

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * d_out)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return run


def keras_layer(cell, shape, mode):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    B, T, I, H = shape
    x, W, U, b, d_out = _inputs(cell, shape)
    layer_cls = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM,
                 "simple_rnn": keras.layers.SimpleRNN}[cell]
    layer = layer_cls(H, return_sequences=True)
    layer.build((B, T, I))
    layer.set_weights([W, U, b])
    x, d_out = tf.constant(x), tf.constant(d_out)

    @tf.function
    def forward():
        return layer(x)

    return forward if mode == "forward" else tf_forward_backward(layer, x, d_out)


def torch_module(cell, shape, mode):
    import torch

    B, T, I, H = shape
    x, _, _, _, d_out = _inputs(cell, shape)
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM,
              "simple_rnn": torch.nn.RNN}[cell](I, H, batch_first=True)
    x = torch.from_numpy(x)
    d_out = torch.from_numpy(d_out)
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return module(x)
        return forward
    x.requires_grad_(True)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = module(x)[0]
        y.backward(d_out)

    return forward_backward


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


IMPLEMENTATIONS = {
    "fastrnn": fastrnn_kernel,
    "keras": keras_layer,
    "torch": torch_module,
    "floor": numpy_floor,
}
