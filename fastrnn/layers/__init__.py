"""Drop-in Keras layers backed by the fastrnn kernels."""

from .gru import GRU
from .mingru import MinGRU, MinGRUCell
from .simple_rnn import SimpleRNN

__all__ = ["GRU", "MinGRU", "MinGRUCell", "SimpleRNN"]
