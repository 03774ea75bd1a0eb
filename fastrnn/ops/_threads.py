"""How a layer call's work is spread over the cores when TensorFlow calls the kernels
through tf.numpy_function (the native ops split in the graph instead: ops/native)."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from fastrnn.kernels.blas import binding as _blas
from fastrnn.kernels.batch import parts as _parts

# How a call's work is spread over the cores when TensorFlow calls the kernels.
#
# Below SMALL_WORK multiply-adds (kernels.batch.parts) a call runs on one thread with a
# one-thread BLAS: TF runs other ops of the graph at the same time on its own
# thread pool, and for small recurrences a multi-threaded OpenBLAS competing with
# it measured slower (a minGRU(128) T32 language-model training step: 43 ms with 2
# OpenBLAS threads, 35 ms with 1; 2-core EPYC).
#
# Larger calls split the batch into one part per core (at least MIN_ROWS rows
# each), as the kernels called directly do (kernels.batch.parts), but here on threads
# of this module's own rather than on OpenBLAS' workers: each part runs the whole
# kernel, forward or backward, with a one-thread BLAS, and the parts' weight
# gradients are summed. No OpenBLAS worker thread is ever woken. That matters as
# much as the speed of the kernel itself: after any multi-threaded work OpenBLAS'
# workers spin for about 0.1 s (2^28 cycles) waiting for more, and a spinning
# worker takes a core from TensorFlow's own ops. Measured here: one 400 x 400
# NumPy product before each step made a Keras next-word LSTM training step 35 ->
# 47 ms. LSTM(150) forward+backward at B128 T17: 22.1 ms with OpenBLAS' two
# threads, 16.5 ms in two parts; B64 T100 H256: 127 -> 111 ms.
#
# FASTRNN_BLAS_THREADS_IN_TF=n forces n BLAS threads and no split for every call.
_FORCED_THREADS = os.environ.get("FASTRNN_BLAS_THREADS_IN_TF")


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_PARTS = cores()
_executor = None
_executor_lock = threading.Lock()


def forget_executor():
    # A forked child inherits the executor but not its threads: work submitted
    # there would wait forever. The child makes a new one on first use.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_executor)


def run_parts(fn, n):
    """[fn(0), ..., fn(n - 1)]: the first n - 1 on the pool's threads, the last here."""
    global _executor
    if n == 1:
        return [fn(0)]
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max(1, MAX_PARTS - 1), thread_name_prefix="fastrnn")
    futures = [_executor.submit(fn, i) for i in range(n - 1)]
    last = fn(n - 1)
    return [f.result() for f in futures] + [last]


def plan(x, width, max_parts, recurrent=True):
    """(parts, BLAS threads or None for the library's own count) for a call on x.
    `recurrent`: the cell has a per-step recurrent product (kernels.batch.parts.few_rows)."""
    if _FORCED_THREADS:
        return 1, int(_FORCED_THREADS)
    batch, time, features = x.shape
    if _parts.work(batch, time, features, width) < _parts.SMALL_WORK:
        return 1, 1
    parts = _parts.plan(batch, time, features, width, max_parts)
    if parts > 1:
        return parts, 1
    return 1, (1 if recurrent and _parts.few_rows(batch) else None)


def with_threads(threads, fn):
    # Either way the kernels themselves never split (kernels.batch.parts): the backward
    # needs one `saved` per part it runs, and here the parts are this module's.
    if threads is None:
        with _parts.unsplit():
            return fn()
    _blas.hold_threads(threads)
    try:
        return fn()
    finally:
        _blas.release_threads()
