"""TensorFlow glue: the kernels as differentiable TF ops (tf.custom_gradient + tf.py_function)."""

from .recurrence import gru, lstm, mingru, simple_rnn

__all__ = ["gru", "lstm", "mingru", "simple_rnn"]
