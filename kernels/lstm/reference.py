"""float64 NumPy reference for LSTM (Keras gate order i | f | c | o), the truth for the kernels.

    i, f, g, o = rec(x W_i + h U_i + b_i), rec(... f), act(... c), rec(... o)
    c_t = f * c_{t-1} + i * g,   h_t = o * act(c_t)

`act` is Keras' `activation` (tanh), `rec` its `recurrent_activation` (sigmoid).
"""

import numpy as np

from ..checks.reference import (activation_functions, f64, gate_products, gate_products_backward,
                          run_backward, run_forward)


def lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, go_backwards=False,
                 activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None):
    """Returns out [B, T, H], h_last, c_last [B, H] and the tape for lstm_backward.

    recurrent_mask [B, 4H] (Keras' per-gate recurrent dropout, gate order i | f | c | o):
    gate g's pre-activation takes (h_{t-1} * m_g) U_g, m_g = recurrent_mask[:, gH:(g+1)H].
    """
    act, act_grad = activation_functions(activation)
    rec, rec_grad = activation_functions(recurrent_activation)
    W, U = f64(kernel), f64(recurrent_kernel)
    H = U.shape[0]
    b = np.zeros(4 * H) if bias is None else f64(bias)
    h0 = np.zeros((x.shape[0], H)) if h0 is None else h0
    c0 = np.zeros((x.shape[0], H)) if c0 is None else c0
    rm = None if recurrent_mask is None else f64(recurrent_mask)

    def step(x_t, states):
        h_prev, c_prev = states
        z = x_t @ W + gate_products(h_prev, U, rm) + b
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        i, f, g, o = rec(zi), rec(zf), act(zg), rec(zo)
        c = f * c_prev + i * g
        h = o * act(c)
        return (h, c), (x_t, h_prev, c_prev, zi, zf, zg, zo, i, f, g, o, c)

    def step_backward(cache, d_new):
        x_t, h_prev, c_prev, zi, zf, zg, zo, i, f, g, o, c = cache
        dh, dc = d_new
        dc = dc + dh * o * act_grad(c)
        dz = np.concatenate([dc * g * rec_grad(zi), dc * c_prev * rec_grad(zf),
                             dc * i * act_grad(zg), dh * act(c) * rec_grad(zo)], axis=1)
        db = None if bias is None else dz.sum(axis=0)
        dh_prev, dU = gate_products_backward(h_prev, U, rm, dz)
        return dz @ W.T, (dh_prev, dc * f), (x_t.T @ dz, dU, db)

    out, (h_last, c_last), tape = run_forward(step, x, (h0, c0), mask, go_backwards)
    tape["step_backward"] = step_backward
    tape["units"] = H
    return out, h_last, c_last, tape


def lstm_backward(tape, d_out, d_h_last, d_c_last):
    """Returns dx, dh0, dc0, d_kernel, d_recurrent_kernel, d_bias (None without bias)."""
    batch, time, _ = tape["x_shape"]
    H = tape["units"]
    d_out = np.zeros((batch, time, H)) if d_out is None else d_out
    zeros = np.zeros((batch, H))
    d_h_last = zeros if d_h_last is None else d_h_last
    d_c_last = zeros if d_c_last is None else d_c_last
    dx, (dh0, dc0), dw = run_backward(tape["step_backward"], tape, d_out, (d_h_last, d_c_last))
    return (dx, dh0, dc0) + dw
