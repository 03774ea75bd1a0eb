"""Kernels as TensorFlow ops: one tf.py_function for the forward, one for the backward,
joined by tf.custom_gradient.

What the forward saves for the backward travels as tensors (the ndarray fields of
the kernel's `saved` object), so TensorFlow owns its lifetime: nothing is kept
on the Python side between the two calls, and nothing leaks when no gradient is
ever asked for. Half precision is computed in float32 and cast back.
"""

import numpy as np
import tensorflow as tf

from fastrnn.kernels import _validate
from fastrnn.kernels.gru import cpu as gru_cpu
from fastrnn.kernels.simple_rnn import cpu as simple_rnn_cpu

_COMPUTE = {tf.float16: tf.float32, tf.bfloat16: tf.float32}


def _recurrence(forward, backward, saved_cls, meta, x, h0, weights, mask, units):
    """Differentiable (outputs [B, T, H], h_last [B, H]).

    `weights` are tensors (None for an absent bias); `meta` the non-array fields
    of `saved_cls`, fixed by the layer's configuration.
    """
    out_dtype = x.dtype
    dtype = _COMPUTE.get(out_dtype, out_dtype)
    present = [w is not None for w in weights]
    inputs = [tf.cast(x, dtype), tf.cast(h0, dtype)] + [tf.cast(w, dtype) for w in weights if w is not None]
    has_mask = mask is not None
    mask_t = tf.cast(mask, tf.bool) if has_mask else tf.zeros((0, 0), tf.bool)
    saved_types = _saved_types(saved_cls, dtype)

    def numpy_args(tensors):
        x_np, h0_np, *rest = [t.numpy() for t in tensors]
        it = iter(rest)
        ws = [next(it) if p else None for p in present]
        return x_np, h0_np, ws

    def forward_np(mask_in, *tensors):
        x_np, h0_np, ws = numpy_args(tensors)
        out, h_last, saved = forward(x_np, h0_np, *ws, mask=mask_in.numpy() if has_mask else None)
        return [out, h_last] + _validate.saved_arrays(saved)

    @tf.custom_gradient
    def op(*tensors):
        results = tf.py_function(forward_np, [mask_t, *tensors], Tout=[dtype, dtype] + saved_types)
        out, h_last, *saved_tensors = results
        out.set_shape(tensors[0].shape[:2].concatenate([units]))
        h_last.set_shape(tensors[0].shape[:1].concatenate([units]))

        def grad(d_out, d_h_last):
            def backward_np(d_out_in, d_h_in, *saved_in):
                saved = _validate.restore_saved(saved_cls, [s.numpy() for s in saved_in], **meta)
                grads = backward(saved, d_out_in.numpy(), d_h_in.numpy())
                return [g for g, p in zip(grads, [True, True] + present) if p]

            grads = tf.py_function(backward_np, [d_out, d_h_last, *saved_tensors],
                                   Tout=[dtype] * len(tensors))
            for g, t in zip(grads, tensors):
                g.set_shape(t.shape)
            return grads

        return (out, h_last), grad

    out, h_last = op(*inputs)
    return tf.cast(out, out_dtype), tf.cast(h_last, out_dtype)


def _saved_types(saved_cls, dtype):
    # Float arrays share the compute dtype; the mask is bool and `first` int64.
    types = []
    for f in saved_cls.__dataclass_fields__.values():
        if f.type is not np.ndarray:
            continue
        types.append({"mask": tf.bool, "first": tf.int64}.get(f.name, dtype))
    return types


def gru(x, h0, kernel, recurrent_kernel, bias, mask=None, *, reset_after=True,
        go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
    """GRU over a sequence as a differentiable TF op. Returns (outputs, h_last)."""
    meta = dict(has_bias=bias is not None, reset_after=bool(reset_after),
                act=_validate.activation_code(activation),
                ract=_validate.activation_code(recurrent_activation, "recurrent_activation"),
                go_backwards=bool(go_backwards))

    def forward(x, h0, kernel, recurrent_kernel, bias, mask):
        return gru_cpu.gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=mask,
                                   reset_after=reset_after, go_backwards=go_backwards,
                                   activation=activation, recurrent_activation=recurrent_activation)

    return _recurrence(forward, gru_cpu.gru_backward, gru_cpu.GRUSaved, meta, x, h0,
                       [kernel, recurrent_kernel, bias], mask, recurrent_kernel.shape[0])


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, mask=None, *, activation="tanh",
               go_backwards=False):
    """SimpleRNN over a sequence as a differentiable TF op. Returns (outputs, h_last)."""
    meta = dict(has_bias=bias is not None, act=_validate.activation_code(activation),
                go_backwards=bool(go_backwards))

    def forward(x, h0, kernel, recurrent_kernel, bias, mask):
        return simple_rnn_cpu.simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias,
                                                 activation=activation, mask=mask,
                                                 go_backwards=go_backwards)

    return _recurrence(forward, simple_rnn_cpu.simple_rnn_backward, simple_rnn_cpu.SimpleRNNSaved,
                       meta, x, h0, [kernel, recurrent_kernel, bias], mask,
                       recurrent_kernel.shape[0])
