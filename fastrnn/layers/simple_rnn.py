import keras

from ._base import FastRNNMixin, activation_name, recurrences, register_cell


@keras.saving.register_keras_serializable(package="fastrnn")
class SimpleRNN(FastRNNMixin, keras.layers.SimpleRNN):
    """Drop-in `keras.layers.SimpleRNN` running fastrnn's fused kernels.

    Same arguments, defaults, weights and config as `keras.layers.SimpleRNN`
    (Keras 3, TensorFlow backend).

    Falls back, with a warning, to Keras' own loop where the kernels cannot
    match Keras exactly: activations other than tanh, relu, sigmoid,
    hard_sigmoid and linear. `dropout` and `recurrent_dropout` use the same
    cached masks as Keras' cell (one mask for every step). `unroll` is
    accepted; the result is the same.

    Example:
        >>> import numpy as np, fastrnn
        >>> layer = fastrnn.SimpleRNN(4)
        >>> layer(np.zeros((2, 5, 3), np.float32)).shape
        TensorShape([2, 4])
    """


def _reason(cell, training):
    if activation_name(cell.activation) is None:
        return f"activation={cell.activation!r} is not one the kernels implement"
    return None


def _loop(cell, sequences, states, mask, training, go_backwards, device):
    recurrent_mask = None
    if training and 0.0 < cell.recurrent_dropout < 1.0:
        recurrent_mask = cell.get_recurrent_dropout_mask(states[0])
    outputs, h_last = recurrences().simple_rnn(
        sequences, states[0], cell.kernel.value, cell.recurrent_kernel.value,
        None if cell.bias is None else cell.bias.value, mask,
        activation=activation_name(cell.activation), go_backwards=go_backwards, device=device,
        recurrent_mask=recurrent_mask)
    return outputs, [h_last]


register_cell(keras.layers.SimpleRNNCell, _reason, _loop)
