import keras

from ._base import FastRNNMixin


@keras.saving.register_keras_serializable(package="fastrnn")
class RNN(FastRNNMixin, keras.layers.RNN):
    """Drop-in `keras.layers.RNN` that runs fastrnn's kernels for stock cells.

    `RNN(keras.layers.LSTMCell(..))`, `GRUCell`, `SimpleRNNCell`, `fastrnn.MinGRUCell`
    and `StackedRNNCells` (or a list) of them run as fastrnn's LSTM, GRU, SimpleRNN
    and MinGRU layers do: the same weights (the cells' own), options, masks,
    initial and stateful states, `go_backwards`, `return_state` and dropout masks
    (drawn by the cells as Keras' loop draws them). Any other cell, a subclass that
    overrides `call` included, runs Keras' own loop, with one warning, and
    `python -m fastrnn --report` says so.

    Example:
        >>> import numpy as np, keras, fastrnn
        >>> layer = fastrnn.RNN(keras.layers.LSTMCell(8), return_sequences=True)
        >>> layer(np.zeros((2, 5, 3), np.float32)).shape
        TensorShape([2, 5, 8])
    """
