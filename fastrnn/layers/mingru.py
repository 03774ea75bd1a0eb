"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?") as a Keras layer.

    z_t = sigmoid(x_t W_z + b_z),  h~_t = x_t W_h + b_h,  h_t = (1 - z_t) h_{t-1} + z_t h~_t

Weights: `kernel` [input_dim, 2 * units] (columns z | h~) and `bias` [2 * units].
"""

import keras
from keras import ops as kops

# Keras' RNN layer looks for this mixin to cache one dropout mask per sequence;
# it has been part of Keras 3 since 3.0 but is not exported publicly.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from ._base import FastRNNMixin, recurrences, register_cell


@keras.saving.register_keras_serializable(package="fastrnn")
class MinGRUCell(keras.layers.Layer, DropoutRNNCell):
    """One minGRU step in keras.ops: the exact, pure-Keras path (and export's)."""

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, dropout=0.0, seed=None,
                 **kwargs):
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        super().__init__(**kwargs)
        self.units = units
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dropout = min(1.0, max(0.0, dropout))
        self.recurrent_dropout = 0.0
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 2 * self.units), name="kernel",
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(shape=(2 * self.units,), name="bias",
                                        initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer,
                                        constraint=self.bias_constraint)

    def call(self, inputs, states, training=False):
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        if training and 0.0 < self.dropout < 1.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        pre = kops.matmul(inputs, self.kernel)
        if self.bias is not None:
            pre = pre + self.bias
        z = kops.sigmoid(pre[:, :self.units])
        h = (1.0 - z) * h_prev + z * pre[:, self.units:]
        return h, [h] if isinstance(states, (list, tuple)) else h

    def get_initial_state(self, batch_size=None):
        return [kops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "dropout": self.dropout, "seed": self.seed}


_CELL_ARGS = ("use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
              "bias_regularizer", "kernel_constraint", "bias_constraint", "dropout", "seed")


@keras.saving.register_keras_serializable(package="fastrnn")
class MinGRU(FastRNNMixin, keras.layers.RNN):
    """minGRU layer in the style of `keras.layers.GRU`, on fastrnn's kernels.

    Args:
        units: size of the state.
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint, bias_constraint,
        dropout, seed, return_sequences, return_state, go_backwards, stateful,
        unroll: as in `keras.layers.GRU`. (minGRU has no recurrent weights, so no
        recurrent_* arguments.)

    Call with `mask` (e.g. from `Embedding(mask_zero=True)`), `initial_state`
    and `training` as any Keras RNN. Masked steps keep the state (a=1, b=0).

    Example:
        >>> import numpy as np, fastrnn
        >>> fastrnn.MinGRU(8, return_sequences=True)(np.zeros((2, 5, 3), np.float32)).shape
        TensorShape([2, 5, 8])
    """

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, **kwargs):
        cell = MinGRUCell(units, use_bias=use_bias, kernel_initializer=kernel_initializer,
                          bias_initializer=bias_initializer,
                          kernel_regularizer=kernel_regularizer,
                          bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                          bias_constraint=bias_constraint, dropout=dropout, seed=seed,
                          dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
                          name="mingru_cell")
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         activity_regularizer=activity_regularizer, **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @property
    def units(self):
        return self.cell.units

    def get_config(self):
        config = super().get_config()
        config.pop("cell", None)
        cell_config = self.cell.get_config()
        config.update({"units": self.units, **{k: cell_config[k] for k in _CELL_ARGS}})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _loop(cell, sequences, states, mask, training, go_backwards, device):
    outputs, h_last = recurrences().mingru(
        sequences, states[0], cell.kernel.value, None if cell.bias is None else cell.bias.value,
        mask, go_backwards=go_backwards, device=device)
    return outputs, [h_last]


register_cell(MinGRUCell, lambda cell, training: None, _loop)
