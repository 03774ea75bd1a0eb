"""Drop-in Keras layers backed by the fastrnn kernels."""

from .gru import GRU
from .simple_rnn import SimpleRNN

__all__ = ["GRU", "SimpleRNN"]
