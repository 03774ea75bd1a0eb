"""fastrnn.kernels: forward and backward recurrences on NumPy arrays.

No TensorFlow here: NumPy in, NumPy out, float32 or float64 preserved.

    out, h_last, saved = gru_forward(x, h0, kernel, recurrent_kernel, bias,
                                     mask=None, reset_after=True, go_backwards=False)
    dx, dh0, d_kernel, d_recurrent_kernel, d_bias = gru_backward(saved, d_out, d_h_last)

    out, h_last, saved = simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias,
                                            activation="tanh", mask=None, go_backwards=False)
    dx, dh0, d_kernel, d_recurrent_kernel, d_bias = simple_rnn_backward(saved, d_out, d_h_last)

The float64 references with the same signatures live in
``fastrnn.kernels.<cell>.reference``. Kernels compile on first call (cached on
disk by Numba), never at import.
"""

from ._validate import ACTIVATIONS
from .gru.cpu import gru_backward, gru_forward
from .lstm.cpu import lstm_backward, lstm_forward
from .mingru.cpu import mingru_backward, mingru_forward
from .scan.cpu import linear_scan, linear_scan_backward
from .simple_rnn.cpu import simple_rnn_backward, simple_rnn_forward

__all__ = [
    "ACTIVATIONS",
    "gru_backward",
    "gru_forward",
    "linear_scan",
    "lstm_backward",
    "lstm_forward",
    "mingru_backward",
    "mingru_forward",
    "linear_scan_backward",
    "simple_rnn_backward",
    "simple_rnn_forward",
]
