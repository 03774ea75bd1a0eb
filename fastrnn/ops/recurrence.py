"""The layers' recurrences as differentiable TensorFlow ops: the data path of a call.

x, the initial states and the weights go to one of three routes (ops/route.py):
the native ops (ops/native: x -> batch parts -> FastrnnXForward per part -> outputs,
the backward op per part in the gradient), the tf.numpy_function pair
(ops/_bridge.py: x -> NumPy -> the kernels' launchers, parts on ops/_threads.py's
threads -> outputs), or the CUDA kernels through tf.py_function (the bridge on CuPy
arrays). Each returns (outputs [B, T, H], final states) in x's dtype.
"""

import tensorflow as tf

from fastrnn import kernels
from fastrnn.kernels.gpu import cuda as _cuda
from fastrnn.kernels.checks import validate as _validate
from fastrnn.kernels.gru import cpu as gru_cpu
from fastrnn.kernels.lstm import cpu as lstm_cpu
from fastrnn.kernels.mingru import cpu as mingru_cpu
from fastrnn.kernels.simple_rnn import cpu as simple_rnn_cpu

from ._bridge import COMPUTE, recurrence as _recurrence
from . import _threads
from .route import (DEVICES, ROUTES, check_device, get_route, native_route,  # noqa: F401
                    route_name, set_route, use_gpu_route)


def _native(function, x, tensors, mask, **config):
    """function (an ops.native cell) on tensors cast to the ops' dtype (float32 or
    float64; half in float32), its results cast back to x's."""
    dtype = COMPUTE.get(x.dtype, x.dtype)
    cast = [None if t is None else tf.cast(t, dtype) for t in tensors]
    rmask = config.pop("recurrent_mask", None)
    results = function(*cast, mask, max_parts=_threads.MAX_PARTS,
                       recurrent_mask=None if rmask is None else tf.cast(rmask, dtype), **config)
    return tuple(tf.cast(r, x.dtype) for r in results)


def gru(x, h0, kernel, recurrent_kernel, bias, mask=None, *, reset_after=True,
        go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
        recurrent_mask=None, device="cpu"):
    """GRU over a sequence as a differentiable TF op. Returns (outputs, h_last).

    recurrent_mask [B, 3H]: Keras' per-gate recurrent dropout masks (z | r | h side by
    side; each gate's recurrent product takes h_{t-1} * its mask)."""
    meta = dict(has_bias=bias is not None, reset_after=bool(reset_after),
                act=_validate.activation_code(activation),
                ract=_validate.activation_code(recurrent_activation, "recurrent_activation"),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        return _native(native.gru, x, [x, h0, kernel, recurrent_kernel, bias], mask,
                       recurrent_mask=recurrent_mask, reset_after=meta["reset_after"],
                       go_backwards=meta["go_backwards"], act=meta["act"], ract=meta["ract"])

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=mask,
                                   reset_after=reset_after, go_backwards=go_backwards,
                                   activation=activation, recurrent_activation=recurrent_activation,
                                   recurrent_mask=recurrent_mask)

    out, (h_last,) = _recurrence(forward, kernels.gru_backward, gru_cpu.GRUSaved, meta, x, [h0],
                                 [kernel, recurrent_kernel, bias], mask, recurrent_kernel.shape[0],
                                 recurrent_mask, device=device)
    return out, h_last


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, mask=None, *, activation="tanh",
               go_backwards=False, recurrent_mask=None, device="cpu"):
    """SimpleRNN over a sequence as a differentiable TF op. Returns (outputs, h_last).

    recurrent_mask [B, H]: Keras' recurrent dropout mask (h_{t-1} * m before U).
    """
    meta = dict(has_bias=bias is not None, act=_validate.activation_code(activation),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        return _native(native.simple_rnn, x, [x, h0, kernel, recurrent_kernel, bias], mask,
                       recurrent_mask=recurrent_mask, act=meta["act"],
                       go_backwards=meta["go_backwards"])

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias,
                                          activation=activation, mask=mask,
                                          go_backwards=go_backwards,
                                          recurrent_mask=recurrent_mask)

    out, (h_last,) = _recurrence(
        forward, kernels.simple_rnn_backward, simple_rnn_cpu.SimpleRNNSaved, meta, x, [h0],
        [kernel, recurrent_kernel, bias], mask, recurrent_kernel.shape[0], recurrent_mask,
        device=device)
    return out, h_last


def mingru(x, h0, kernel, bias, mask=None, *, go_backwards=False, device="cpu"):
    """minGRU over a sequence as a differentiable TF op. Returns (outputs, h_last)."""
    native = native_route(device)
    if native is not None:
        return _native(native.mingru, x, [x, h0, kernel, bias], mask,
                       go_backwards=bool(go_backwards))

    def forward(x, h0, kernel, bias, mask, recurrent_mask):
        return kernels.mingru_forward(x, h0, kernel, bias, mask=mask, go_backwards=go_backwards)

    def restore(carried, x_np, states_np, ws, m, rm):
        module = mingru_cpu
        if _cuda.is_cupy_array(x_np):
            from fastrnn.kernels.mingru import cuda as module
        return module.restore_saved(carried, x_np, ws[0], m, has_bias=bias is not None,
                                    go_backwards=go_backwards)

    out, (h_last,) = _recurrence(
        forward, kernels.mingru_backward, mingru_cpu.MinGRUSaved, {}, x, [h0], [kernel, bias],
        mask, kernel.shape[1] // 2, carry=lambda saved: [saved.gates], restore=restore,
        n_carry=1, device=device, recurrent=False)
    return out, h_last


def lstm(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, *, go_backwards=False,
         activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None, device="cpu"):
    """LSTM over a sequence as a differentiable TF op. Returns (outputs, h_last, c_last).

    recurrent_mask [B, 4H]: Keras' per-gate recurrent dropout masks (i | f | c | o side
    by side; gate g's recurrent product takes h_{t-1} * its mask)."""
    meta = dict(has_bias=bias is not None, act=_validate.activation_code(activation),
                ract=_validate.activation_code(recurrent_activation, "recurrent_activation"),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        return _native(native.lstm, x, [x, h0, c0, kernel, recurrent_kernel, bias], mask,
                       recurrent_mask=recurrent_mask, go_backwards=meta["go_backwards"],
                       act=meta["act"], ract=meta["ract"])

    def forward(x, h0, c0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=mask,
                                     go_backwards=go_backwards, activation=activation,
                                     recurrent_activation=recurrent_activation,
                                     recurrent_mask=recurrent_mask)

    out, (h_last, c_last) = _recurrence(forward, kernels.lstm_backward, lstm_cpu.LSTMSaved, meta,
                                        x, [h0, c0], [kernel, recurrent_kernel, bias], mask,
                                        recurrent_kernel.shape[0], recurrent_mask, device=device)
    return out, h_last, c_last
