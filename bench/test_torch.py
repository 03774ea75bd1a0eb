"""Keras' torch backend (`python -m bench --backend torch`): fastrnn's layers beside
Keras' own on that backend, in the same rounds. Run with KERAS_BACKEND=torch.

Layer forward+backward (torch autograd: a weighted sum of the outputs, the gradients
of x and every weight) at the seed shape and at B64 T100 I128 H128, and the training
step (`train_on_batch`) of seed-style models with Keras' layers, fastrnn's and a
stand-in (bench.standin.StandIn in place of each recurrent layer). minGRU's Keras
anchor is `keras.layers.RNN(fastrnn.MinGRUCell)`: Keras' own loop over the cell.
"""

import os

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND") != "torch":
    pytest.skip("the torch backend's cases run under KERAS_BACKEND=torch "
                "(python -m bench --backend torch)", allow_module_level=True)

import keras  # noqa: E402
import torch  # noqa: E402

import fastrnn  # noqa: E402

SHAPES = {"B32 T15 I1 H45": (32, 15, 1, 45), "B64 T100 I128 H128": (64, 100, 128, 128)}


def _layer(impl, cell, units, **kwargs):
    if impl == "keras":
        if cell == "mingru":
            return keras.layers.RNN(fastrnn.MinGRUCell(units), **kwargs)
        return {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM,
                "simple_rnn": keras.layers.SimpleRNN}[cell](units, **kwargs)
    return {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM, "simple_rnn": fastrnn.SimpleRNN,
            "mingru": fastrnn.MinGRU}[cell](units, **kwargs)


def layer_step(impl, cell, shape):
    B, T, I, H = shape
    keras.utils.set_random_seed(0)
    layer = _layer(impl, cell, H, return_sequences=True)
    layer.build((B, T, I))
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((B, T, I)).astype("float32"), requires_grad=True)
    dy = torch.tensor(rng.standard_normal((B, T, H)).astype("float32"))
    weights = [w.value for w in layer.trainable_weights]

    def run():
        y = layer(x, training=True)
        torch.autograd.grad((y * dy).sum(), [x] + weights)
    return run


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", ["gru", "lstm", "simple_rnn", "mingru"])
def test_torch_layer(run_paired, benchmark, cell, shape):
    benchmark.group = f"torch layer {cell} | {shape}"
    fns = {impl: layer_step(impl, cell, SHAPES[shape]) for impl in ("fastrnn", "keras")}
    run_paired(fns, cell=f"torch layer {cell}", shape=shape, mode="forward+backward")


def _padded_reviews(rng, vocab=5000, batch=32, length=200):
    x = rng.integers(1, vocab, (batch, length))
    for row, n in zip(x, rng.integers(20, length, batch)):
        row[n:] = 0
    return x, rng.integers(0, 2, (batch, 1))


def _model(impl, name):
    """(compiled model, x, y) of the seed-style model `name` with impl's recurrent layers."""
    from bench.standin import StandIn

    def rnn(cell, units, bidirectional=False, return_sequences=False, **kwargs):
        if impl == "stand-in":
            return StandIn(2 * units if bidirectional else units, return_sequences)
        layer = _layer(impl, cell, units, return_sequences=return_sequences, **kwargs)
        return keras.layers.Bidirectional(layer) if bidirectional else layer

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "forecast GRU(256)":
        model = keras.Sequential([keras.Input((15, 1)), rnn("gru", 256),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        x, y, loss = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1)), "mse"
    elif name == "forecast stacked LSTM(45) x4":
        model = keras.Sequential([keras.Input((15, 1)),
                                  *[rnn("lstm", 45, return_sequences=i < 3) for i in range(4)],
                                  keras.layers.Dense(1)])
        x, y, loss = rng.standard_normal((32, 15, 1)), rng.standard_normal((32, 1)), "mse"
    elif name == "sentiment BiGRU(64) T200":
        model = keras.Sequential([keras.Input((200,), dtype="int32"),
                                  keras.layers.Embedding(5000, 64, mask_zero=True),
                                  rnn("gru", 64, bidirectional=True),
                                  keras.layers.Dense(1, activation="sigmoid")])
        (x, y), loss = _padded_reviews(rng), "binary_crossentropy"
    elif name == "next-word LSTM(150) V8200":
        vocab = 8200
        model = keras.Sequential([keras.Input((10,), dtype="int32"),
                                  keras.layers.Embedding(vocab, 100), rnn("lstm", 150),
                                  keras.layers.Dense(vocab, activation="softmax")])
        x, y = rng.integers(0, vocab, (128, 10)), rng.integers(0, vocab, (128,))
        loss = "sparse_categorical_crossentropy"
    else:
        raise ValueError(name)
    model.compile(optimizer="adam", loss=loss)
    return model, x.astype("int32" if x.dtype.kind == "i" else "float32"), y


MODELS = ["forecast GRU(256)", "forecast stacked LSTM(45) x4", "sentiment BiGRU(64) T200",
          "next-word LSTM(150) V8200"]


@pytest.mark.parametrize("name", MODELS)
def test_torch_model(run_paired, benchmark, name):
    benchmark.group = f"torch model {name}"
    fns = {}
    for impl in ("keras", "fastrnn", "stand-in"):
        model, x, y = _model(impl, name)
        fns[impl] = (lambda m, a, b: lambda: m.train_on_batch(a, b))(model, x, y)
    run_paired(fns, kind="model", cell=f"torch {name}", shape="", mode="train_on_batch")
