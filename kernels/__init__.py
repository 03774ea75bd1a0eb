"""fastrnn.kernels: forward and backward recurrences on NumPy arrays.

No TensorFlow here: NumPy in, NumPy out (the Numba CPU kernels); CuPy in, CuPy
out (the CUDA kernels, with the `gpu` extra on a machine with a CUDA GPU);
float32 or float64 preserved. `gpu_available()` says whether the CUDA kernels
can run here.

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

from .runtime import cache as _cache  # noqa: F401 - first: the cached functions below are stamped by it
from .entry import dispatch as _dispatch
from .gpu.cuda import gpu_available
from .checks.validate import ACTIVATIONS
from .gru import cpu as _gru
from .lstm import cpu as _lstm
from .mingru import cpu as _mingru
from .scan import cpu as _scan
from .simple_rnn import cpu as _simple_rnn

gru_forward = _dispatch.forward(_gru.gru_forward, "gru", kernel_at=1, recurrent=True)
gru_backward = _dispatch.backward(_gru.gru_backward, "gru", recurrent=True)
lstm_forward = _dispatch.forward(_lstm.lstm_forward, "lstm", kernel_at=2, recurrent=True)
lstm_backward = _dispatch.backward(_lstm.lstm_backward, "lstm", recurrent=True)
mingru_forward = _dispatch.forward(_mingru.mingru_forward, "mingru", kernel_at=1)
mingru_backward = _dispatch.backward(_mingru.mingru_backward, "mingru")
simple_rnn_forward = _dispatch.forward(_simple_rnn.simple_rnn_forward, "simple_rnn", kernel_at=1,
                                       recurrent=True)
simple_rnn_backward = _dispatch.backward(_simple_rnn.simple_rnn_backward, "simple_rnn",
                                         recurrent=True)
linear_scan = _dispatch.forward(_scan.linear_scan, "scan")
linear_scan_backward = _dispatch.forward(_scan.linear_scan_backward, "scan")

__all__ = [
    "ACTIVATIONS",
    "gpu_available",
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
