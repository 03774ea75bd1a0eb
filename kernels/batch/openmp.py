"""A split call's parts on an OpenMP runtime's thread team (for `parts.team`).

PyTorch's CPU operators run on an OpenMP team (libgomp on Linux), whose workers
spin for milliseconds after each parallel operator, waiting for the next. Parts on
OpenBLAS' threads then share the cores with them: the next-word LSTM(150) training
step on Keras' torch backend took 212 ms with the parts on OpenBLAS' threads, 72 ms
with them on torch's own team (2-core EPYC, train_on_batch medians; Keras' loop 85
ms). `GOMP_parallel` hands the parts to the workers the calling thread's team
already has (libgomp keeps one pool per calling thread): they run our parts instead
of spinning beside them.

`runner(path)` binds the runtime in a shared library already loaded in this process
(GOMP_parallel, which libgomp and LLVM's and Intel's OpenMP all export, and
omp_get_thread_num); None where it has neither.
"""

import ctypes
import functools

from . import parts as _parts

_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def runner(path):
    """A `parts.team` runner on the OpenMP runtime at `path`, or None."""
    try:
        lib = ctypes.CDLL(path)
        parallel, thread_num = lib.GOMP_parallel, lib.omp_get_thread_num
    except (OSError, AttributeError):
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    thread_num.argtypes = []
    thread_num.restype = ctypes.c_int

    def body(base):
        # Every thread of the team runs this with the same base (None for 0).
        _parts.run_part((base or 0) + thread_num())

    callback = _BODY(body)  # kept alive as run.callback; run itself by the cache
    address = ctypes.cast(callback, ctypes.c_void_p).value

    def run(n, base):
        # A nested or size-limited team may run fewer than n threads: parts.run runs
        # what none of them started.
        parallel(address, base, n, 0)

    run.callback = callback
    return run


def loaded(prefer="", names=("libgomp", "libiomp", "libomp")):
    """The path of an OpenMP runtime among this process' mapped libraries (Linux:
    /proc/self/maps), the first under the folder `prefer` if any is, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps]
    except OSError:
        return None
    found = [p for p in dict.fromkeys(paths)
             if p.startswith("/") and any(n in p.rsplit("/", 1)[-1] for n in names)]
    found.sort(key=lambda p: not (prefer and p.startswith(prefer)))
    return found[0] if found else None
