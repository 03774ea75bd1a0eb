"""float64 reference for the first-order linear recurrence, forward and backward.

    h_t = a_t * h_{t-1} + b_t,   h_{-1} = h0,   over [B, T, H]

Backward, for upstream gradients d_h (and none through h0 other than the result):
    g_t = d_h_t + a_{t+1} * g_{t+1}     (g_{T-1} = d_h_{T-1})
    da_t = g_t * h_{t-1},  db_t = g_t,  dh0 = a_0 * g_0
"""

import numpy as np


def linear_scan(a, b, h0=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h_prev = np.zeros(a.shape[::2]) if h0 is None else np.asarray(h0, np.float64)
    h = np.empty_like(a)
    for t in range(a.shape[1]):
        h_prev = a[:, t] * h_prev + b[:, t]
        h[:, t] = h_prev
    return h


def linear_scan_backward(a, h, h0, d_h):
    """Returns da, db, dh0 (float64)."""
    a, h, d_h = (np.asarray(v, np.float64) for v in (a, h, d_h))
    h0 = np.zeros(a.shape[::2]) if h0 is None else np.asarray(h0, np.float64)
    g = np.zeros_like(a)
    carry = np.zeros(a.shape[::2])
    for t in reversed(range(a.shape[1])):
        carry = d_h[:, t] + carry
        g[:, t] = carry
        carry = a[:, t] * carry
    h_prev = np.concatenate([h0[:, None], h[:, :-1]], axis=1)
    return g * h_prev, g, carry
