"""Large calls split over the cores: the batch in one part per core, each part the
whole recurrence on OpenBLAS' own worker threads.

A recurrence has T dependent steps, and a per-step product at B16 H128 is too small
for BLAS to spread over cores well: OpenBLAS' two threads synchronise every step,
and the fused gate pass between the products runs on one thread. Rows of the batch
are independent, so a call of at least SMALL_WORK multiply-adds runs as one part
per core (at least MIN_ROWS rows each): every part runs the whole kernel, forward or
backward, with a one-thread BLAS; outputs are joined and the parts' weight
gradients summed. Measured here (2-core EPYC, float32, forward+backward, medians):
GRU B64 T100 H256 120 -> 106 ms, GRU B16 T1024 H128 104-126 -> 99-100 ms, SimpleRNN
B16 T1024 45-52 -> 36-39 ms, LSTM B16 T1024 136-143 -> 121-128 ms, minGRU
B16 T1024 39 -> 27 ms (its sequential method only; the Blelloch scan, for fewer
rows than cores, is parallel over time instead).

The parts run on OpenBLAS' worker threads (`gotoblas_pthread`, OpenBLAS' own
pthread-compatible parallel-for), not on threads of ours. After a multi-threaded
product OpenBLAS' workers spin for about 0.1 s waiting for more work; parts on
other threads would share the cores with them. Measured: after one 1000 x 1000
NumPy product, the GRU B64 T100 call above took 155 ms in two parts on Python
threads and 106 ms on OpenBLAS' threads. Where NumPy's BLAS is not OpenBLAS, or
OpenBLAS is limited to one thread, calls are not split.

A call is not split either while someone holds a BLAS thread limit
(`_blas.hold_threads`): that caller manages the threading itself (the Keras
layers split on their own, on threads of theirs, inside TensorFlow), and the
parts, which run under such a limit, never split again.
"""

import contextlib
import ctypes
import itertools
import threading
from dataclasses import dataclass

import numpy as np

from ..blas import binding as _blas
from ..blas import microgemm as _microgemm
from . import pool as _pool
from ..checks import validate as v

# Below this much work, B * T * G*H * (I + G*H) (the products' multiply-adds are
# B * T * G*H * (I + H)), a call is one part: handing a part to another thread costs
# more than it saves (GRU B32 T15 layer call split in two: 1.59 -> 1.96 ms).
SMALL_WORK = 1 << 27
# GRU(128) forward+backward at T1024 in two parts against OpenBLAS' two threads:
# B8 (4 rows a part) 51 against 66 ms, B4 (2 rows) 42 against 43 ms.
MIN_ROWS = 4

# Below this much work a call runs with a one-thread OpenBLAS (kernels.entry.dispatch).
# Measured forward+backward here, OpenBLAS' two threads against one: SimpleRNN B32
# T15 0.28 / 0.22 ms, GRU B32 T15 0.78 / 0.62 ms, SimpleRNN B16 T64 H128 3.3 / 2.6
# ms (work 0.19 SMALL_WORK), but GRU B16 T16 H128 2.3 / 2.8 ms (0.33 SMALL_WORK).
ONE_THREAD_WORK = SMALL_WORK // 4

_PART = ctypes.CFUNCTYPE(None, ctypes.c_size_t)


def _bind():
    """(gotoblas_pthread, OpenBLAS' current thread count, its count of started
    threads) from NumPy's OpenBLAS, or None where it has no such symbols (or no
    way to hold its thread count at 1 while the parts run)."""
    if _blas._set_threads is None:
        return None
    try:
        import numpy._core._multiarray_umath as umath

        lib = ctypes.CDLL(umath.__file__)
        run = lib.gotoblas_pthread
        started = ctypes.c_int.in_dll(lib, "blas_num_threads")
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                     "openblas_get_num_threads"):
            current = getattr(lib, name, None)
            if current is not None:
                break
        else:
            return None
    except (ImportError, OSError, AttributeError, ValueError):
        return None
    run.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    run.restype = ctypes.c_int
    current.argtypes = []
    current.restype = ctypes.c_int
    return run, current, started


_OPENBLAS = _bind()


_local = threading.local()


@contextlib.contextmanager
def unsplit():
    """No kernel call made by this thread splits while inside (for callers that
    need one `saved` per call, or manage the threads themselves)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


class team:
    """This thread's split calls run their parts on another thread team while inside:
    `runner(n, base)` calls run_part(base + i) for parts i < n at once, each on a
    thread of its own (a part it leaves out runs on the calling thread afterwards),
    and `threads` is the team's size. fastrnn.torch_ops runs them on torch's OpenMP
    threads, which would otherwise spin beside them. (A class, not a generator: it
    wraps every kernel call on the torch backend, small ones included.)"""

    __slots__ = ("chosen", "previous")

    def __init__(self, runner, threads):
        self.chosen = (runner, threads)

    def __enter__(self):
        self.previous = getattr(_local, "team", None)
        _local.team = self.chosen

    def __exit__(self, *exc):
        _local.team = self.previous


def available_threads():
    """How many parts a call may run in at once: OpenBLAS' thread count, or the
    `team`'s size inside one (1 where NumPy's BLAS is not OpenBLAS, while a thread
    limit is held, or inside `unsplit`)."""
    if _OPENBLAS is None or _blas.holders() > 0 or getattr(_local, "depth", 0):
        return 1
    chosen = getattr(_local, "team", None)
    if chosen is not None:
        return max(1, chosen[1])
    _, current, started = _OPENBLAS
    # gotoblas_pthread hands part i > 0 to worker i - 1: only as many parts as there
    # are started workers (plus the calling thread), or it would wait forever.
    return max(1, min(current(), started.value))


def work(batch, time, inputs, width):
    """A call's work as SMALL_WORK and ONE_THREAD_WORK count it: B * T * G*H * (I + G*H)
    for kernel columns `width` = G * H."""
    return batch * time * width * (inputs + width)


def few_rows(batch):
    """Whether a call with too few rows to split (batch < 2 * MIN_ROWS) should run on one
    thread however large it is: the per-step product on one core with packed weights
    (kernels.blas.microgemm) beats OpenBLAS' two threads on a few rows. Measured here,
    forward+backward float32, one thread against two: GRU B1 T1024 H128 11.1 / 30.8
    ms, LSTM B4 T256 H256 27.4 / 47.3 ms, GRU B2 T256 H512 51.2 / 110.0 ms (a 3 MiB
    recurrent kernel), SimpleRNN B6 T256 H384 22.1 / 41.3 ms."""
    return batch < 2 * MIN_ROWS and _microgemm.ENABLED


def one_thread(amount, rows=None):
    """Whether a call of `amount` of work (None: unknown) should hold OpenBLAS at one
    thread: NumPy's BLAS is OpenBLAS, nobody holds a limit, not inside `unsplit`, and
    the call is small, or is a recurrence (with a per-step product) over `rows` that
    are too few to split (`few_rows`). Inside a `team`, every call that will not split
    holds it: OpenBLAS' threads would share the cores with the team's spinning ones
    (on torch's: GRU B8 T400 H64 forward+backward 37.7 ms with OpenBLAS' two threads,
    against LSTM's 15.1 ms at that shape split in two parts on the team)."""
    if amount is None or _blas._set_threads is None or _blas.holders() or getattr(
            _local, "depth", 0):
        return False
    chosen = getattr(_local, "team", None)
    if chosen is not None:
        return _parts(amount, rows, chosen[1]) == 1
    return amount < ONE_THREAD_WORK or (rows is not None and few_rows(rows))


def plan(batch, time, inputs, width, threads=None):
    """How many parts a call on [batch, time, inputs] with kernel columns `width`
    (G * H) runs in, given `threads` cores (by default `available_threads()`)."""
    # The work first: most calls are small, and asking OpenBLAS for its thread
    # counts (ctypes) costs a few microseconds a call.
    amount = work(batch, time, inputs, width)
    if amount < SMALL_WORK:
        return 1
    return _parts(amount, batch, available_threads() if threads is None else threads)


def _parts(amount, batch, threads):
    """plan's rule: one part below SMALL_WORK or on one thread, else one per thread
    with at least MIN_ROWS rows each (`batch` None: unknown, as many as threads)."""
    if amount < SMALL_WORK or threads < 2:
        return 1
    rows = threads * MIN_ROWS if batch is None else batch
    return max(1, min(threads, rows // MIN_ROWS))


def slices(batch, parts):
    """The parts' batch rows: `parts` contiguous slices of nearly equal size."""
    edges = [batch * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


# One ctypes callback for every call: a callback object made per call lives in a
# reference cycle (CPython's ctypes thunk), and so would everything its function
# refers to, the parts' results included, until the cyclic garbage collector runs:
# their pooled buffers never came back idle, and every call page-faulted fresh ones
# (GRU B64 T100 forward: 40 -> 125 ms).
_JOB_PARTS = 1 << 16      # part i of job j runs with argument j * _JOB_PARTS + i
_jobs = {}
_job_ids = itertools.count()


def run_part(argument):
    """Part i of job j, for argument j * _JOB_PARTS + i (the callback of `run`'s threads)."""
    job, i = divmod(argument, _JOB_PARTS)
    fn, results, errors, started = _jobs[job]
    started[i] = True
    try:
        results[i] = fn(i)
    except BaseException as error:  # noqa: BLE001 - re-raised by run, in the caller
        errors.append(error)


_CALLBACK = _PART(run_part)
_CALLBACK_ADDRESS = ctypes.cast(_CALLBACK, ctypes.c_void_p).value


def run(fn, n):
    """[fn(0), ..., fn(n - 1)] at once on OpenBLAS' threads, or the `team`'s (fn(0) on
    this one), with a one-thread BLAS inside; an exception in any part is raised here."""
    if n == 1:
        return [fn(0)]
    if n >= _JOB_PARTS:
        raise ValueError(f"at most {_JOB_PARTS - 1} parts, got {n}")
    job = next(_job_ids)
    results, errors, started = [None] * n, [], [False] * n
    _jobs[job] = (fn, results, errors, started)
    chosen = getattr(_local, "team", None)
    _blas.hold_threads(1)
    try:
        if chosen is None:
            _OPENBLAS[0](n, _CALLBACK_ADDRESS, job * _JOB_PARTS, 1)
        else:
            chosen[0](n, job * _JOB_PARTS)
        for i in range(n):  # what a smaller team than asked for left out
            if not started[i]:
                run_part(job * _JOB_PARTS + i)
    finally:
        _blas.release_threads()
        del _jobs[job]
    if errors:
        raise errors[0]
    return results


def concat(arrays):
    """Parts joined along the batch axis, into an aligned buffer (None stays None)."""
    if arrays[0] is None:
        return None
    out = _pool.empty((sum(a.shape[0] for a in arrays),) + arrays[0].shape[1:], arrays[0].dtype)
    return np.concatenate(arrays, out=out)


def add(arrays):
    """The parts' weight gradients added up (None stays None: no bias)."""
    if arrays[0] is None:
        return None
    total = arrays[0]
    for a in arrays[1:]:
        total += a
    return total


@dataclass(eq=False)
class SplitSaved:
    """What a split forward keeps for its backward: one `saved` per part."""

    parts: list
    rows: list      # the parts' batch slices
    batch: int
    time: int
    units: int
    dtype: np.dtype


def forward(call, batch, time, units, dtype, parts):
    """Run call(rows) -> (*outputs, saved) for each part's rows at once; return the
    outputs joined along the batch axis and a SplitSaved."""
    rows = slices(batch, parts)
    results = run(lambda i: call(rows[i]), parts)
    outputs = [concat([r[k] for r in results]) for k in range(len(results[0]) - 1)]
    return (*outputs, SplitSaved([r[-1] for r in results], rows, batch, time, units,
                                 np.dtype(dtype)))


def backward(backward_fn, saved, grads, names):
    """The backward of a split forward: backward_fn per part on its rows of the
    upstream gradients `grads` (d_out [B, T, H], then one [B, H] per state, each
    may be None); the batch-row gradients (dx and one per state) are joined, the
    weight gradients summed."""
    shapes = [(saved.batch, saved.time, saved.units)] + [(saved.batch, saved.units)] * (
        len(grads) - 1)
    grads = [None if g is None else v.check_grad(g, name, shape, saved.dtype)
             for g, name, shape in zip(grads, names, shapes)]
    results = run(lambda i: backward_fn(saved.parts[i], *[
        None if g is None else g[saved.rows[i]] for g in grads]), len(saved.parts))
    n_rows = len(grads)
    return tuple([concat([r[k] for r in results]) for k in range(n_rows)]
                 + [add([r[k] for r in results]) for k in range(n_rows, len(results[0]))])

