"""The linear recurrence h_t = a_t * h_{t-1} + b_t on the GPU, two ways.

Every (batch row, channel) pair is an independent recurrence over time; with
[B, T, H] arrays, neighbouring threads take neighbouring channels, so every
load and store is coalesced.

sequential: one thread per channel runs the whole time loop. One pass over
    memory; B*H threads, enough to fill a GPU only when B*H is large.
blelloch: the work-efficient scan over pairs (a, b) with the associative
    operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), in three kernels:
    1. reduce: each block takes CH channels x L steps, runs the up-sweep in
       shared memory and writes the chunk's total pair;
    2. carries: one thread per channel scans the chunk totals in order and
       writes each chunk's incoming state;
    3. scan: each block runs the up-sweep and the down-sweep (an exclusive
       scan) over its chunk again, combines it with its element and applies
       the incoming state: h_t = A_t h_in + B_t.
    Parallel over time as well as channels, at about twice the memory
    traffic of the sequential kernel.

Reverse mode (for backward passes): g_t = b_t + a_{t+1} g_{t+1}, g_T = init;
the same kernels read the sequence from the end with the coefficient shifted.
"""

from numba import cuda  # a module global: the simulator swaps it inside kernels

from ..gpu import cuda as cu
from ..checks import validate as v

METHODS = ("auto", "sequential", "blelloch")


def chunk_shape():
    """(L time steps, CH channels) per Blelloch block; tiny under the simulator."""
    return (8, 4) if cu.simulator() else (64, 32)


def _build(F):
    L, CH = chunk_shape()
    one, zero = F(1.0), F(0.0)

    @cuda.jit(device=True)
    def load(a, b, r, s, j, reverse):
        # The pair at logical step s (processing order) of channel (r, j).
        time, units = a.shape[1], a.shape[2]
        if s >= time or j >= units:
            return one, zero
        if not reverse:
            return a[r, s, j], b[r, s, j]
        t = time - 1 - s
        coeff = a[r, t + 1, j] if t + 1 < time else one
        return coeff, b[r, t, j]

    @cuda.jit
    def sequential(a, b, init, out, reverse):
        i = cuda.grid(1)
        batch, time, units = a.shape
        if i >= batch * units:
            return
        r = i // units
        j = i - r * units
        h = init[r, j]
        if not reverse:
            for t in range(time):
                h = a[r, t, j] * h + b[r, t, j]
                out[r, t, j] = h
        else:
            for t in range(time - 1, -1, -1):
                if t + 1 < time:
                    h = a[r, t + 1, j] * h + b[r, t, j]
                else:
                    h = h + b[r, t, j]
                out[r, t, j] = h

    @cuda.jit(device=True)
    def up_sweep(sa, sb, tx, ty):
        offset = 1
        d = L // 2
        while d > 0:
            cuda.syncthreads()
            if ty < d:
                ai = offset * (2 * ty + 1) - 1
                bi = offset * (2 * ty + 2) - 1
                # x[bi] = x[ai] o x[bi]
                sb[bi, tx] = sa[bi, tx] * sb[ai, tx] + sb[bi, tx]
                sa[bi, tx] = sa[ai, tx] * sa[bi, tx]
            offset *= 2
            d //= 2
        cuda.syncthreads()

    @cuda.jit
    def reduce_chunks(a, b, reverse, tot_a, tot_b):
        # Grid (ceil(H / CH), chunks, B), block (CH, L / 2).
        sa = cuda.shared.array((L, CH), F)
        sb = cuda.shared.array((L, CH), F)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j = cuda.blockIdx.x * CH + tx
        c, r = cuda.blockIdx.y, cuda.blockIdx.z
        for q in range(2):
            s = 2 * ty + q
            sa[s, tx], sb[s, tx] = load(a, b, r, c * L + s, j, reverse)
        up_sweep(sa, sb, tx, ty)
        if ty == 0 and j < a.shape[2]:
            tot_a[r, c, j] = sa[L - 1, tx]
            tot_b[r, c, j] = sb[L - 1, tx]

    @cuda.jit
    def chunk_carries(tot_a, tot_b, init, carry):
        # carry[r, c] = the state entering chunk c.
        i = cuda.grid(1)
        batch, chunks, units = tot_a.shape
        if i >= batch * units:
            return
        r = i // units
        j = i - r * units
        h = init[r, j]
        for c in range(chunks):
            carry[r, c, j] = h
            h = tot_a[r, c, j] * h + tot_b[r, c, j]

    @cuda.jit
    def scan_chunks(a, b, reverse, carry, out):
        sa = cuda.shared.array((L, CH), F)
        sb = cuda.shared.array((L, CH), F)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j = cuda.blockIdx.x * CH + tx
        c, r = cuda.blockIdx.y, cuda.blockIdx.z
        time, units = a.shape[1], a.shape[2]
        ea0, eb0 = load(a, b, r, c * L + 2 * ty, j, reverse)
        ea1, eb1 = load(a, b, r, c * L + 2 * ty + 1, j, reverse)
        sa[2 * ty, tx], sb[2 * ty, tx] = ea0, eb0
        sa[2 * ty + 1, tx], sb[2 * ty + 1, tx] = ea1, eb1
        up_sweep(sa, sb, tx, ty)
        if ty == 0:
            sa[L - 1, tx] = one
            sb[L - 1, tx] = zero
        offset = L
        d = 1
        while d < L:
            offset //= 2
            cuda.syncthreads()
            if ty < d:
                ai = offset * (2 * ty + 1) - 1
                bi = offset * (2 * ty + 2) - 1
                # left <- parent's prefix; right <- parent's prefix o left total
                la, lb = sa[ai, tx], sb[ai, tx]
                pa, pb = sa[bi, tx], sb[bi, tx]
                sa[ai, tx], sb[ai, tx] = pa, pb
                sa[bi, tx] = pa * la
                sb[bi, tx] = la * pb + lb
            d *= 2
        cuda.syncthreads()
        if j >= units:
            return
        h_in = carry[r, c, j]
        for q in range(2):
            s = 2 * ty + q
            step = c * L + s
            if step < time:
                ea, eb = (ea0, eb0) if q == 0 else (ea1, eb1)
                # inclusive = exclusive o element, applied to the incoming state
                pa, pb = sa[s, tx], sb[s, tx]
                h = ea * (pa * h_in + pb) + eb
                t = step if not reverse else time - 1 - step
                out[r, t, j] = h

    return dict(sequential=sequential, reduce_chunks=reduce_chunks, chunk_carries=chunk_carries,
                scan_chunks=scan_chunks)


KERNELS = cu.KernelSet(_build, {
    "sequential": "f3 f3 f2 f3 i",
    "reduce_chunks": "f3 f3 i f3 f3",
    "chunk_carries": "f3 f3 f2 f3",
    "scan_chunks": "f3 f3 i f3 f3",
})


def choose_method(batch, time, units):
    """Blelloch when the channels alone cannot fill a GPU and time is long.

    A GPU wants on the order of 10^5 threads in flight; the sequential kernel has
    B*H of them, each with a dependent chain of T steps. Measured on an H100
    (python -m bench --device cuda, B*H from 128 to 16384, two runs): sequential
    won every case at T=64 and T=256 but one; at T=1024 Blelloch won all three in
    one run and lost all three in the other; from T=4096 on it won every case
    (1.5-10x at T=16384). So the switch is at 64 chunks of L steps (4096 on a GPU).
    """
    L, _ = chunk_shape()
    return "blelloch" if batch * units < 65536 and time >= 64 * L else "sequential"


def run_scan(xp, a, b, init, out, reverse, method="auto"):
    """out <- the scan of (a, b) from init (forward or reverse); returns out."""
    batch, time, units = a.shape
    if method == "auto":
        method = choose_method(batch, time, units)
    k = KERNELS.get(a.dtype)
    stream = cu.stream_for(xp)
    da, db, dinit, dout = (cu.device(x) for x in (a, b, init, out))
    rev = int(bool(reverse))
    if method == "sequential":
        cu.launch(k.sequential, batch * units, stream, da, db, dinit, dout, rev)
        return out
    L, CH = chunk_shape()
    chunks = (time + L - 1) // L
    tot_a = xp.empty((batch, chunks, units), a.dtype)
    tot_b = xp.empty((batch, chunks, units), a.dtype)
    carry = xp.empty((batch, chunks, units), a.dtype)
    dta, dtb, dcarry = cu.device(tot_a), cu.device(tot_b), cu.device(carry)
    grid = ((units + CH - 1) // CH, chunks, batch)
    block = (CH, L // 2)
    config = (grid, block) if stream is None else (grid, block, stream)
    k.reduce_chunks[config](da, db, rev, dta, dtb)
    cu.launch(k.chunk_carries, batch * units, stream, dta, dtb, dinit, dcarry)
    k.scan_chunks[config](da, db, rev, dcarry, dout)
    return out


def _check(a, b, h0, names=("a", "b")):
    xp = cu.array_module(a, names[0])
    a = v.float_array(a, names[0], xp=xp)
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"{names[0]} must have shape [batch, time, units] with sizes >= 1, "
                         f"got shape {a.shape}")
    b = v.float_array(b, names[1], a.dtype, xp)
    v.expect_shape(b, names[1], a.shape, f"matching {names[0]}")
    h0 = v.check_state(h0, "h0", a.shape[0], a.shape[2], a.dtype, xp)
    return xp, a, b, h0


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def linear_scan(a, b, h0=None, *, method="auto"):
    """h_t = a_t * h_{t-1} + b_t on the GPU; as kernels.linear_scan, CuPy arrays."""
    _check_method(method)
    xp, a, b, h0 = _check(a, b, h0)
    return run_scan(xp, a, b, h0, xp.empty_like(a), False, method)


def linear_scan_backward(a, h, h0, d_h, *, method="auto"):
    """Gradients of linear_scan on the GPU: da, db, dh0, as kernels.linear_scan_backward."""
    _check_method(method)
    xp, a, h, h0 = _check(a, h, h0, ("a", "h"))
    d_h = v.check_grad(d_h, "d_h", a.shape, a.dtype, xp)
    g = run_scan(xp, a, d_h, xp.zeros_like(h0), xp.empty_like(a), True, method)
    da = g.copy()
    da[:, 1:] *= h[:, :-1]
    da[:, 0] *= h0
    return da, g, a[:, 0] * g[:, 0]
