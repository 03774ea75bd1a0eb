"""Drop-in Keras layers backed by the fastrnn kernels."""

from .gru import GRU
from .lstm import LSTM
from .mingru import MinGRU, MinGRUCell
from .rnn import RNN
from .simple_rnn import SimpleRNN

__all__ = ["GRU", "LSTM", "MinGRU", "MinGRUCell", "RNN", "SimpleRNN"]
