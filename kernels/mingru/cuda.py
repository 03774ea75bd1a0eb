"""minGRU forward and backward on the GPU: one cuBLAS GEMM, a fused gate kernel and the scan.

    z_t = sig(x_t W_z + b_z),  h~_t = x_t W_h + b_h,  h_t = (1 - z_t) h_{t-1} + z_t h~_t

Same signatures, semantics and layout ([B, T, .], processing order) as
kernels/mingru/cpu.py, CuPy arrays in and out. Forward: one GEMM for both gates
of every step, one kernel (one thread per (b, t, j)) for the gates and the
scan's coefficients a = 1 - z, b = z h~ (a = 1, b = 0 on masked steps), then
the scan (kernels/scan/cuda.py), then one kernel for the outputs that also
turns h~ into h~ - h_{t-1} in place. Backward: the reverse scan
g_t = dL/dh_t + a_{t+1} g_{t+1}, one kernel for the gate gradients, one GEMM
each for dx and dW. Saved per step and batch row: x_t and z | h~ - h_{t-1} (2H),
as on the CPU.
"""

from dataclasses import dataclass

from numba import cuda  # a module global: the simulator swaps it inside kernels

from ..gpu import cuda as cu
from ..checks import validate as v
from .cpu import MinGRUSaved
from ..scan.cuda import choose_method, run_scan


def _build(F):
    m = cu.device_math(F)
    sigmoid, one, zero = m.sigmoid, m.one, m.zero

    @cuda.jit(device=True)
    def row_step_unit(i, time, units):
        # Thread i of a [B, T, H] grid -> (batch row, step, unit).
        rt = i // units
        r = rt // time
        return r, rt - r * time, i - rt * units

    @cuda.jit
    def gates_to_scan(gates, bias, mask, a, b):
        # gates [B, T, 2H]: x W in, z | h~ out (unmasked steps); a, b [B, T, H].
        i = cuda.grid(1)
        batch, time, units = a.shape
        if i >= batch * time * units:
            return
        r, t, j = row_step_unit(i, time, units)
        if mask[r, t]:
            z = sigmoid(gates[r, t, j] + bias[j])
            ht = gates[r, t, units + j] + bias[units + j]
            gates[r, t, j] = z
            gates[r, t, units + j] = ht
            a[r, t, j] = one - z
            b[r, t, j] = z * ht
        else:
            a[r, t, j] = one
            b[r, t, j] = zero

    @cuda.jit
    def output(states, h0, mask, first, gates, out):
        # Keras' rule: zeros before the first unmasked step, the state after it;
        # and h~ -> h~ - h_{t-1} in gates at unmasked steps (what the backward reads).
        i = cuda.grid(1)
        batch, time, units = states.shape
        if i >= batch * time * units:
            return
        r, t, j = row_step_unit(i, time, units)
        if mask[r, t]:
            hp = states[r, t - 1, j] if t > 0 else h0[r, j]
            gates[r, t, units + j] -= hp
        out[r, t, j] = states[r, t, j] if t >= first[r] else zero

    @cuda.jit
    def backward_coefficients(gates, d_out, first, mask, a, d_state):
        # a = 1 - z (1 on masked steps); d_state = dL/dout_t where the output is the state.
        i = cuda.grid(1)
        batch, time, units = a.shape
        if i >= batch * time * units:
            return
        r, t, j = row_step_unit(i, time, units)
        a[r, t, j] = one - gates[r, t, j] if mask[r, t] else one
        d_state[r, t, j] = d_out[r, t, j] if t >= first[r] else zero

    @cuda.jit
    def gate_gradients(gates, g, mask, d_pre):
        # d_pre [B, T, 2H] = dL/d(x W + b): g (h~ - h_{t-1}) z (1 - z) | g z.
        i = cuda.grid(1)
        batch, time, units = g.shape
        if i >= batch * time * units:
            return
        r, t, j = row_step_unit(i, time, units)
        if mask[r, t]:
            z = gates[r, t, j]
            gt = g[r, t, j]
            d_pre[r, t, j] = gt * gates[r, t, units + j] * z * (one - z)
            d_pre[r, t, units + j] = gt * z
        else:
            d_pre[r, t, j] = zero
            d_pre[r, t, units + j] = zero

    return dict(gates_to_scan=gates_to_scan, output=output,
                backward_coefficients=backward_coefficients, gate_gradients=gate_gradients)


KERNELS = cu.KernelSet(_build, {
    "gates_to_scan": "f3 f1 b2 f3 f3",
    "output": "f3 f2 b2 i1 f3 f3",
    "backward_coefficients": "f3 f3 i1 b2 f3 f3",
    "gate_gradients": "f3 f3 b2 f3",
})


@dataclass(eq=False)
class MinGRUSavedCUDA(MinGRUSaved):
    """What the CUDA backward needs (the CPU fields, holding CuPy arrays); opaque."""


def _processing_order_mask(xp, mask, batch, time, go_backwards):
    mask_tm, first = cu.time_major_mask(xp, mask, batch, time, go_backwards)
    return xp.ascontiguousarray(mask_tm.T), first


def mingru_forward(x, h0, kernel, bias, mask=None, go_backwards=False, *, method="auto"):
    """minGRU on the GPU; arguments and results as kernels.mingru_forward, as CuPy arrays.

    method: the scan, "sequential" (one thread per channel), "blelloch" or "auto".
    """
    xp = cu.array_module(x)
    x = v.check_x(x, xp)
    kernel, _, bias, units = v.check_weights(x, kernel, None, 2, bias, lambda h: (2 * h,), xp)
    if method not in ("auto", "sequential", "blelloch"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'blelloch', got {method!r}")
    batch, time, _ = x.shape
    h0 = v.check_state(h0, "h0", batch, units, x.dtype, xp)
    mask_bt, first = _processing_order_mask(xp, v.check_mask(mask, batch, time, xp), batch, time,
                                            go_backwards)
    has_bias = bias is not None
    if bias is None:
        bias = xp.zeros(2 * units, x.dtype)
    if method == "auto":
        method = choose_method(batch, time, units)
    k = KERNELS.get(x.dtype)
    stream = cu.stream_for(xp)
    n = batch * time * units

    x_p = xp.ascontiguousarray(x[:, ::-1]) if go_backwards else x
    gates = cu.matmul(xp, x_p.reshape(batch * time, -1), kernel).reshape(batch, time, 2 * units)
    a = xp.empty((batch, time, units), x.dtype)
    b = xp.empty((batch, time, units), x.dtype)
    cu.launch(k.gates_to_scan, n, stream, cu.device(gates), cu.device(bias), cu.device(mask_bt),
              cu.device(a), cu.device(b))
    states = run_scan(xp, a, b, h0, xp.empty_like(a), False, method)
    out = b  # b is spent: reuse it for the outputs
    cu.launch(k.output, n, stream, cu.device(states), cu.device(h0), cu.device(mask_bt),
              cu.device(first), cu.device(gates), cu.device(out))
    saved = MinGRUSavedCUDA(x_p, gates, mask_bt, first, kernel, has_bias, go_backwards, method)
    return out, states[:, -1].copy(), saved


def mingru_backward(saved, d_out, d_h_last):
    """Gradients of the CUDA mingru_forward: dx, dh0, d_kernel, d_bias (None without bias)."""
    v.check_saved(saved, MinGRUSavedCUDA, "mingru_forward (CUDA)")
    xp = cu.array_module(saved.gates, "saved")
    batch, time, width = saved.gates.shape
    units = width // 2
    dtype = saved.gates.dtype
    d_out = v.check_grad(d_out, "d_out", (batch, time, units), dtype, xp)
    dh = v.check_grad(d_h_last, "d_h_last", (batch, units), dtype, xp)
    k = KERNELS.get(dtype)
    stream = cu.stream_for(xp)
    n = batch * time * units
    a = xp.empty((batch, time, units), dtype)
    d_state = xp.empty((batch, time, units), dtype)
    cu.launch(k.backward_coefficients, n, stream, cu.device(saved.gates), cu.device(d_out),
              cu.device(saved.first), cu.device(saved.mask_bt), cu.device(a), cu.device(d_state))
    g = run_scan(xp, a, d_state, dh, d_state, True, saved.method)  # in place: g_t needs only d_t
    d_pre = xp.empty((batch, time, 2 * units), dtype)
    cu.launch(k.gate_gradients, n, stream, cu.device(saved.gates), cu.device(g),
              cu.device(saved.mask_bt), cu.device(d_pre))
    dh0 = a[:, 0] * g[:, 0]
    d_pre2 = d_pre.reshape(batch * time, 2 * units)
    dx = cu.matmul(xp, d_pre2, saved.kernel.T).reshape(batch, time, -1)
    if saved.go_backwards:
        dx = xp.ascontiguousarray(dx[:, ::-1])
    d_kernel = cu.matmul(xp, saved.x_p.reshape(batch * time, -1).T, d_pre2)
    d_bias = d_pre2.sum(axis=0) if saved.has_bias else None
    return dx, dh0, d_kernel, d_bias


def restore_saved(carried, x, kernel, mask, *, has_bias, go_backwards, method="auto"):
    """Rebuild the CUDA mingru_forward's `saved` from its inputs and its carried
    array (gates), as kernels/mingru/cpu.py's restore_saved does."""
    xp = cu.array_module(x)
    (gates,) = carried
    batch, time, width = gates.shape
    units = width // 2
    mask_bt, first = _processing_order_mask(xp, mask, batch, time, go_backwards)
    x_p = xp.ascontiguousarray(x[:, ::-1]) if go_backwards else x
    if method == "auto":
        method = choose_method(batch, time, units)
    return MinGRUSavedCUDA(x_p, gates, mask_bt, first, kernel, has_bias, go_backwards, method)
