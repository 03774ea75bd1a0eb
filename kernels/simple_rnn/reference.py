"""float64 NumPy reference for SimpleRNN, the truth the fast kernels are checked against.

    h_t = act(x_t W + b + h_{t-1} U)

Same signatures as the fast kernels; results are always float64.
"""

import numpy as np

from ..checks.reference import activation_functions, f64, run_forward, single_state_backward


def simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias, activation="tanh",
                       mask=None, go_backwards=False, recurrent_mask=None):
    """Returns out [B, T, H], h_last [B, H] and the tape for simple_rnn_backward.

    recurrent_mask [B, H] (Keras' recurrent dropout) multiplies h_{t-1} before U.
    """
    act, act_grad = activation_functions(activation)
    W, U, b = f64(kernel), f64(recurrent_kernel), f64(bias)
    h0 = np.zeros((x.shape[0], U.shape[0])) if h0 is None else h0
    rm = np.ones_like(f64(h0)) if recurrent_mask is None else f64(recurrent_mask)

    def step(x_t, states):
        (h_prev,) = states
        h_prev = h_prev * rm
        pre = x_t @ W + h_prev @ U
        if b is not None:
            pre = pre + b
        return (act(pre),), (x_t, h_prev, pre)

    def step_backward(cache, d_new):
        x_t, h_prev, pre = cache
        d_pre = d_new[0] * act_grad(pre)
        db = None if b is None else d_pre.sum(axis=0)
        return d_pre @ W.T, ((d_pre @ U.T) * rm,), (x_t.T @ d_pre, h_prev.T @ d_pre, db)

    out, (h_last,), tape = run_forward(step, x, (h0,), mask, go_backwards)
    tape["step_backward"] = step_backward
    tape["units"] = U.shape[0]
    return out, h_last, tape


def simple_rnn_backward(tape, d_out, d_h_last):
    """Returns dx, dh0, d_kernel, d_recurrent_kernel, d_bias (None without bias)."""
    return single_state_backward(tape, d_out, d_h_last)
