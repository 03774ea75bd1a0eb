"""float64 NumPy reference for GRU (Keras gate order z | r | h), the truth for the kernels.

reset_after=True, bias [2, 3H] (row 0 input, row 1 recurrent):
    xz, xr, xh = x_t W + b_in;   hz, hr, hh = h_{t-1} U + b_rec
    z = sig(xz + hz);  r = sig(xr + hr);  c = act(xh + r * hh)
    h_t = z * h_{t-1} + (1 - z) * c
reset_after=False, bias [3H]:
    c = act(xh + (r * h_{t-1}) U_h)
"""

import numpy as np

from ..checks.reference import activation_functions, f64, run_forward, single_state_backward


def gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=None, reset_after=True,
                go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
                recurrent_mask=None):
    """Returns out [B, T, H], h_last [B, H] and the tape for gru_backward.

    recurrent_mask [B, 3H] (Keras' per-gate recurrent dropout, gate order z | r | h):
    each gate's recurrent product takes h_{t-1} * m_g in place of h_{t-1}
    (reset_after=False: (r * h_{t-1} * m_h) U_h).
    """
    act, act_grad = activation_functions(activation)
    ract, ract_grad = activation_functions(recurrent_activation)
    W, U = f64(kernel), f64(recurrent_kernel)
    H = U.shape[0]
    if bias is None:
        b_in, b_rec = np.zeros(3 * H), np.zeros(3 * H)
    elif reset_after:
        b_in, b_rec = f64(bias)[0], f64(bias)[1]
    else:
        b_in, b_rec = f64(bias), np.zeros(3 * H)
    h0 = np.zeros((x.shape[0], H)) if h0 is None else h0
    rm = np.ones((x.shape[0], 3 * H)) if recurrent_mask is None else f64(recurrent_mask)
    mz, mr, mh = rm[:, :H], rm[:, H:2 * H], rm[:, 2 * H:]

    def step(x_t, states):
        (h_prev,) = states
        xw = x_t @ W + b_in
        xz, xr, xh = xw[:, :H], xw[:, H:2 * H], xw[:, 2 * H:]
        pz = xz + (h_prev * mz) @ U[:, :H] + b_rec[:H]
        pr = xr + (h_prev * mr) @ U[:, H:2 * H] + b_rec[H:2 * H]
        z, r = ract(pz), ract(pr)
        if reset_after:
            hh = (h_prev * mh) @ U[:, 2 * H:] + b_rec[2 * H:]
            pc = xh + r * hh
        else:
            hh = None
            pc = xh + (r * h_prev * mh) @ U[:, 2 * H:]
        c = act(pc)
        h = z * h_prev + (1.0 - z) * c
        return (h,), (x_t, h_prev, pz, pr, pc, z, r, c, hh)

    def step_backward(cache, d_new):
        x_t, h_prev, pz, pr, pc, z, r, c, hh = cache
        (dh,) = d_new
        dz = dh * (h_prev - c)
        dc = dh * (1.0 - z)
        dh_prev = dh * z
        dpc = dc * act_grad(pc)
        if reset_after:
            dhh = dpc * r
            dr = dpc * hh
        else:
            drh = dpc @ U[:, 2 * H:].T
            dr = drh * h_prev * mh
            dh_prev = dh_prev + drh * r * mh
        dpz = dz * ract_grad(pz)
        dpr = dr * ract_grad(pr)
        d_xw = np.concatenate([dpz, dpr, dpc], axis=1)
        dx = d_xw @ W.T
        dW = x_t.T @ d_xw
        dh_prev = dh_prev + (dpz @ U[:, :H].T) * mz + (dpr @ U[:, H:2 * H].T) * mr
        dU = np.zeros_like(U)
        dU[:, :H] = (h_prev * mz).T @ dpz
        dU[:, H:2 * H] = (h_prev * mr).T @ dpr
        if reset_after:
            dh_prev = dh_prev + (dhh @ U[:, 2 * H:].T) * mh
            dU[:, 2 * H:] = (h_prev * mh).T @ dhh
            d_hu = np.concatenate([dpz, dpr, dhh], axis=1)
            db = np.stack([d_xw.sum(axis=0), d_hu.sum(axis=0)])
        else:
            dU[:, 2 * H:] = (r * h_prev * mh).T @ dpc
            db = d_xw.sum(axis=0)
        if bias is None:
            db = None
        return dx, (dh_prev,), (dW, dU, db)

    out, (h_last,), tape = run_forward(step, x, (h0,), mask, go_backwards)
    tape["step_backward"] = step_backward
    tape["units"] = H
    return out, h_last, tape


def gru_backward(tape, d_out, d_h_last):
    """Returns dx, dh0, d_kernel, d_recurrent_kernel, d_bias (None without bias)."""
    return single_state_backward(tape, d_out, d_h_last)
