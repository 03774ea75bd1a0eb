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
class LSTM(FastRNNMixin, keras.layers.LSTM):
    """Drop-in `keras.layers.LSTM` running fastrnn's fused kernels.

    Same arguments, defaults (`unit_forget_bias` included), weights and config as
    `keras.layers.LSTM` (Keras 3, TensorFlow backend); `return_state` gives
    `[output, h, c]` and `initial_state` takes `[h, c]`.

    `dropout` and `recurrent_dropout` draw Keras' own cached masks (one per gate
    under `implementation=1`, which Keras 3 sets whenever `recurrent_dropout > 0`),
    so a seeded run gives Keras' numbers. Falls back, with a warning, to Keras'
    own loop where the kernels cannot match Keras exactly: activations other
    than tanh, relu, sigmoid, hard_sigmoid and linear. `use_cudnn` and `unroll`
    are accepted.

    Example:
        >>> import numpy as np, fastrnn
        >>> out, h, c = fastrnn.LSTM(8, return_state=True)(np.zeros((2, 5, 3), np.float32))
        >>> out.shape, c.shape
        (TensorShape([2, 8]), TensorShape([2, 8]))
    """


def _loop(cell, sequences, states, mask, training, go_backwards, device):
    inputs, kernel = gate_inputs(cell, sequences, training)
    outputs, h_last, c_last = recurrences().lstm(
        inputs, states[0], states[1], kernel, cell.recurrent_kernel.value,
        None if cell.bias is None else cell.bias.value, mask, go_backwards=go_backwards,
        device=device, activation=activation_name(cell.activation),
        recurrent_activation=activation_name(cell.recurrent_activation),
        recurrent_mask=gate_recurrent_mask(cell, states, training))
    return outputs, [h_last, c_last]


register_cell(keras.layers.LSTMCell, gated_fallback_reason, _loop)
