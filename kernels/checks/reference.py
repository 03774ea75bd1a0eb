"""The masked time loop every float64 reference shares, written for clarity.

A cell is a pair of functions working on one time step in float64:

    step(x_t, states) -> (new_states, cache)
    step_backward(cache, d_new_states) -> (dx_t, d_states, d_weights)

`states` is a tuple of [B, H] arrays whose first entry is the output. The loop
below applies Keras' rules literally (keras/src/backend/tensorflow/rnn.py):

    new_states = where(mask_t, step_states, states)
    output_t   = where(mask_t, step_states[0], output_{t-1}),  output_{-1} = 0

and `go_backwards` reverses time on the way in (outputs stay in processing
order). The backward loop is the reverse-mode derivative of exactly that
program, one line per line, so it is checked by finite differences rather than
trusted.
"""

import numpy as np

# Activations by name, with derivatives written in terms of the pre-activation
# (deliberately not the output-based forms the fast kernels use).


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


ACTIVATION = {
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0.0),
    "sigmoid": _sigmoid,
    "linear": lambda v: v,
    "hard_sigmoid": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
}

ACTIVATION_GRAD = {
    "tanh": lambda v: 1.0 - np.tanh(v) ** 2,
    "relu": lambda v: (v > 0.0).astype(np.float64),
    "sigmoid": lambda v: _sigmoid(v) * (1.0 - _sigmoid(v)),
    "linear": lambda v: np.ones_like(v),
    "hard_sigmoid": lambda v: ((v > -3.0) & (v < 3.0)) / 6.0,
}


def activation_functions(name):
    key = "linear" if name is None else name.lower()
    return ACTIVATION[key], ACTIVATION_GRAD[key]


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def gate_products(h, U, rm):
    """[(h * m_g) U_g for each gate g], side by side: h [B, H] @ U [H, G*H] under a
    per-gate recurrent dropout mask rm [B, G*H] (gate g's columns gH..(g+1)H), or
    plain h @ U when rm is None."""
    if rm is None:
        return h @ U
    H = U.shape[0]
    return np.concatenate([(h * rm[:, g * H:(g + 1) * H]) @ U[:, g * H:(g + 1) * H]
                           for g in range(U.shape[1] // H)], axis=1)


def gate_products_backward(h, U, rm, dz):
    """(dL/dh, dL/dU) of gate_products(h, U, rm) given dz = dL/d(its result)."""
    if rm is None:
        return dz @ U.T, h.T @ dz
    H = U.shape[0]
    dh = np.zeros_like(h)
    dU = np.zeros_like(U)
    for g in range(U.shape[1] // H):
        cols = slice(g * H, (g + 1) * H)
        dh += (dz[:, cols] @ U[:, cols].T) * rm[:, cols]
        dU[:, cols] = (h * rm[:, cols]).T @ dz[:, cols]
    return dh, dU


def run_forward(step, x, states, mask, go_backwards):
    """Run `step` over time with Keras' mask rules. Returns out, states, tape."""
    x = f64(x)
    batch, time, _ = x.shape
    mask = np.ones((batch, time), bool) if mask is None else np.asarray(mask, bool)
    if go_backwards:
        x, mask = x[:, ::-1], mask[:, ::-1]
    states = tuple(f64(s) for s in states)
    prev_out = np.zeros_like(states[0])
    outs = []
    caches = []
    for t in range(time):
        new_states, cache = step(x[:, t], states)
        m = mask[:, t, None]
        states = tuple(np.where(m, n, s) for n, s in zip(new_states, states))
        prev_out = np.where(m, new_states[0], prev_out)
        outs.append(prev_out)
        caches.append(cache)
    tape = {"caches": caches, "mask": mask, "go_backwards": go_backwards,
            "x_shape": x.shape, "n_states": len(states)}
    return np.stack(outs, axis=1), states, tape


def single_state_backward(tape, d_out, d_h_last):
    """run_backward for cells whose only state is h (tape["units"] wide); None
    upstream gradients mean zeros. Returns dx, dh0, *d_weights."""
    batch, time, _ = tape["x_shape"]
    units = tape["units"]
    d_out = np.zeros((batch, time, units)) if d_out is None else d_out
    d_h_last = np.zeros((batch, units)) if d_h_last is None else d_h_last
    dx, (dh0,), d_weights = run_backward(tape["step_backward"], tape, d_out, (d_h_last,))
    return (dx, dh0) + d_weights


def run_backward(step_backward, tape, d_out, d_states):
    """Reverse of run_forward. Returns dx, d_initial_states, d_weights."""
    caches, mask = tape["caches"], tape["mask"]
    batch, time, features = tape["x_shape"]
    d_out = f64(d_out)
    d_states = [f64(d) for d in d_states]
    d_prev_out = np.zeros_like(d_states[0])
    dx = np.zeros((batch, time, features))
    d_weights = None
    for t in reversed(range(time)):
        m = mask[:, t, None]
        d_output_t = d_out[:, t] + d_prev_out
        # output_t = where(m, step_states[0], output_{t-1})
        d_prev_out = np.where(m, 0.0, d_output_t)
        # new_states = where(m, step_states, states)
        d_step = [np.where(m, d, 0.0) for d in d_states]
        d_step[0] = d_step[0] + np.where(m, d_output_t, 0.0)
        carried = [np.where(m, 0.0, d) for d in d_states]
        dx_t, d_prev, d_w = step_backward(caches[t], tuple(d_step))
        dx[:, t] = dx_t
        d_states = [c + d for c, d in zip(carried, d_prev)]
        d_weights = d_w if d_weights is None else tuple(
            None if a is None else a + b for a, b in zip(d_weights, d_w))
    if tape["go_backwards"]:
        dx = dx[:, ::-1].copy()
    return dx, tuple(d_states), d_weights
