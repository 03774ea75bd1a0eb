"""The stand-in for a recurrent layer in the model benches (Keras only, any backend)."""

import keras


class StandIn(keras.layers.Layer):
    """A cheap layer with a recurrent layer's output shape: a Dense on the inputs
    (on the last step when not return_sequences). Passes a sequence mask on as
    recurrent layers do (dropped with the time axis).

    Args:
        units: output features (twice the wrapped layer's for a Bidirectional).
        return_sequences: [B, T, units] if True, else [B, units].
    """

    def __init__(self, units, return_sequences=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.return_sequences = units, return_sequences
        self.dense = keras.layers.Dense(units)
        self.supports_masking = True

    def build(self, input_shape):
        self.dense.build((input_shape[0], input_shape[-1]))

    def call(self, x, mask=None):
        return self.dense(x if self.return_sequences else x[:, -1])

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (*input_shape[:2], self.units)
        return (input_shape[0], self.units)
