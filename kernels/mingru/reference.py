"""float64 reference for minGRU (Feng et al. 2024, "Were RNNs All We Needed?").

kernel [I, 2H] = z | h~, bias [2H]:
    z_t = sig(x_t W_z + b_z),  h~_t = x_t W_h + b_h,  h_t = (1 - z_t) h_{t-1} + z_t h~_t
Masks and go_backwards follow Keras' rules (the shared loop in _reference.py).
"""

import numpy as np

from ..checks.reference import f64, run_forward, single_state_backward


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def mingru_forward(x, h0, kernel, bias, mask=None, go_backwards=False):
    """Returns out [B, T, H], h_last [B, H] and the tape for mingru_backward."""
    W = f64(kernel)
    H = W.shape[1] // 2
    b = np.zeros(2 * H) if bias is None else f64(bias)
    h0 = np.zeros((x.shape[0], H)) if h0 is None else h0

    def step(x_t, states):
        (h_prev,) = states
        pre = x_t @ W + b
        z, h_tilde = _sigmoid(pre[:, :H]), pre[:, H:]
        return ((1.0 - z) * h_prev + z * h_tilde,), (x_t, h_prev, z, h_tilde)

    def step_backward(cache, d_new):
        x_t, h_prev, z, h_tilde = cache
        (dh,) = d_new
        d_pre = np.concatenate([dh * (h_tilde - h_prev) * z * (1.0 - z), dh * z], axis=1)
        db = None if bias is None else d_pre.sum(axis=0)
        return d_pre @ W.T, (dh * (1.0 - z),), (x_t.T @ d_pre, db)

    out, (h_last,), tape = run_forward(step, x, (h0,), mask, go_backwards)
    tape["step_backward"] = step_backward
    tape["units"] = H
    return out, h_last, tape


def mingru_backward(tape, d_out, d_h_last):
    """Returns dx, dh0, d_kernel, d_bias (None without bias)."""
    return single_state_backward(tape, d_out, d_h_last)
