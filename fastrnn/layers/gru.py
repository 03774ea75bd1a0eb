import keras

from ._base import (
    FastRNNMixin,
    activation_name,
    gate_inputs,
    gate_recurrent_mask,
    gated_fallback_reason,
    recurrences,
    register_cell,
)


@keras.saving.register_keras_serializable(package="fastrnn")
class GRU(FastRNNMixin, keras.layers.GRU):
    """Drop-in `keras.layers.GRU` running fastrnn's fused kernels.

    Same arguments, defaults, weights and config as `keras.layers.GRU`
    (Keras 3, TensorFlow backend); `set_weights(keras_gru.get_weights())` and
    weight files move both ways.

    `dropout` and `recurrent_dropout` draw Keras' own cached masks (one per gate
    under `implementation=1`, which Keras 3 sets whenever `recurrent_dropout > 0`),
    so a seeded run gives Keras' numbers. Falls back, with a warning, to Keras'
    own loop where the kernels cannot match Keras exactly: activations other
    than tanh, relu, sigmoid, hard_sigmoid and linear (custom callables
    included). `use_cudnn` and `unroll` are accepted; the result is the same.

    Example:
        >>> import numpy as np, fastrnn
        >>> layer = fastrnn.GRU(8, return_sequences=True)
        >>> layer(np.zeros((2, 5, 3), np.float32)).shape
        TensorShape([2, 5, 8])
    """


def _loop(cell, sequences, states, mask, training, go_backwards, device):
    inputs, kernel = gate_inputs(cell, sequences, training)
    outputs, h_last = recurrences().gru(
        inputs, states[0], kernel, cell.recurrent_kernel.value,
        None if cell.bias is None else cell.bias.value, mask, reset_after=cell.reset_after,
        go_backwards=go_backwards, device=device, activation=activation_name(cell.activation),
        recurrent_activation=activation_name(cell.recurrent_activation),
        recurrent_mask=gate_recurrent_mask(cell, states, training))
    return outputs, [h_last]


register_cell(keras.layers.GRUCell, gated_fallback_reason, _loop)
