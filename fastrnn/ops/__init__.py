"""TensorFlow glue: the kernels as differentiable TF ops (tf.custom_gradient + tf.py_function)."""

from .recurrence import gru, simple_rnn

__all__ = ["gru", "simple_rnn"]
