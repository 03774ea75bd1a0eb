"""minGRU as people write it without fastrnn, for the benchmarks.

- `DenseLoopMinGRU`: Dense gates and a sequential `tf.scan` over time, the way
  Keras tutorials write minGRU (Keras masks honoured: a masked step keeps h).
- `torch_log_space_mingru`: the paper's parallel formulation (Feng et al. 2024,
  appendix), a log-space scan with cumsum and logcumsumexp, in PyTorch.
"""

import keras
import tensorflow as tf

from bench.torch_anchors import torch_log_space_mingru  # noqa: F401  (re-exported)


class DenseLoopMinGRU(keras.layers.Layer):
    def __init__(self, units, return_sequences=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.return_sequences = units, return_sequences
        self.gates = keras.layers.Dense(2 * units)
        self.supports_masking = True

    def build(self, input_shape):
        self.gates.build(input_shape)

    def call(self, x, mask=None):
        pre = self.gates(x)
        z = tf.sigmoid(pre[..., :self.units])
        h_tilde = pre[..., self.units:]
        keep = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else tf.cast(mask, tf.bool)
        elems = (tf.transpose(z, [1, 0, 2]), tf.transpose(h_tilde, [1, 0, 2]),
                 tf.transpose(keep)[..., None])

        def step(h, inputs):
            z_t, ht_t, k_t = inputs
            return tf.where(k_t, (1.0 - z_t) * h + z_t * ht_t, h)

        h0 = tf.zeros((tf.shape(x)[0], self.units), x.dtype)
        hs = tf.transpose(tf.scan(step, elems, initializer=h0), [1, 0, 2])
        return hs if self.return_sequences else hs[:, -1]

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None
