"""Kernels as TensorFlow ops: one py_func for the forward, one for the backward, joined
by tf.custom_gradient.

The py_funcs are `tf.numpy_function`: it hands NumPy arrays straight to the
kernels and measured about 120 us cheaper per call than `tf.py_function` here
(2-core EPYC, TF 2.21), which wraps them in eager tensors first.

What the forward saves for the backward travels as tensors (the arrays of the
kernel's `saved` object that cannot be rebuilt from the inputs), so TensorFlow
owns their lifetime: nothing is kept on the Python side between the two calls.
When no gradient tape is recording while the op is built (inference: predict,
eager calls), the forward returns only its outputs, and the backward, should a
gradient be asked for after all (a tf.function traced without a tape and called
under one), re-runs the forward first. Half precision is computed in float32.

GPU route (`device`): where the CUDA kernels can run (CuPy + numba-cuda and a
GPU TensorFlow also sees), the py_funcs are `tf.py_function` instead: a tensor
on a GPU goes to CuPy through DLPack (no copy, no host round trip), runs the
CUDA kernels, and comes back through DLPack after CuPy's stream is
synchronized; a tensor on the CPU takes the NumPy kernels as before. What
the forward saves travels between the two py_functions as tensors, as on the
CPU route (by DLPack, without copies, on a GPU).
"""

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from fastrnn import kernels
from fastrnn.kernels import _blas, _cuda, _parts, _saved, _validate
from fastrnn.kernels.gru import cpu as gru_cpu
from fastrnn.kernels.lstm import cpu as lstm_cpu
from fastrnn.kernels.mingru import cpu as mingru_cpu
from fastrnn.kernels.simple_rnn import cpu as simple_rnn_cpu

_COMPUTE = {tf.float16: tf.float32, tf.bfloat16: tf.float32}

# How a call's work is spread over the cores when TensorFlow calls the kernels.
#
# Below SMALL_WORK multiply-adds (kernels._parts) a call runs on one thread with a
# one-thread BLAS: TF runs other ops of the graph at the same time on its own
# thread pool, and for small recurrences a multi-threaded OpenBLAS competing with
# it measured slower (a minGRU(128) T32 language-model training step: 43 ms with 2
# OpenBLAS threads, 35 ms with 1; 2-core EPYC).
#
# Larger calls split the batch into one part per core (at least MIN_ROWS rows
# each), as the kernels called directly do (kernels._parts), but here on threads
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


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_PARTS = _cores()
_executor = None
_executor_lock = threading.Lock()


def _forget_executor():
    # A forked child inherits the executor but not its threads: work submitted
    # there would wait forever. The child makes a new one on first use.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executor)


def _run_parts(fn, n):
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


def _plan(x, width, max_parts, recurrent=True):
    """(parts, BLAS threads or None for the library's own count) for a call on x.
    `recurrent`: the cell has a per-step recurrent product (kernels._parts.few_rows)."""
    if _FORCED_THREADS:
        return 1, int(_FORCED_THREADS)
    batch, time, features = x.shape
    if _parts.work(batch, time, features, width) < _parts.SMALL_WORK:
        return 1, 1
    parts = _parts.plan(batch, time, features, width, max_parts)
    if parts > 1:
        return parts, 1
    return 1, (1 if recurrent and _parts.few_rows(batch) else None)


def _with_threads(threads, fn):
    # Either way the kernels themselves never split (kernels._parts): the backward
    # needs one `saved` per part it runs, and here the parts are this module's.
    if threads is None:
        with _parts.unsplit():
            return fn()
    _blas.hold_threads(threads)
    try:
        return fn()
    finally:
        _blas.release_threads()


DEVICES = ("auto", "cpu", "cuda")

# The CPU route of the layers: "native" (TensorFlow ops registered through the C
# API, ops/native.py), "numpy_function" (this module's tf.numpy_function pairs),
# or "auto" (native where it can be set up, else numpy_function with one warning
# saying why). FASTRNN_ROUTE sets it for a process; fastrnn.set_route for a session.
ROUTES = ("auto", "native", "numpy_function")
_route = os.environ.get("FASTRNN_ROUTE", "auto").strip().lower() or "auto"
_native = None          # the ops.native module once set up
_native_error = None    # why it could not be, once tried
_native_lock = threading.Lock()


def set_route(route):
    """Choose the layers' CPU route for layers called from now on (see ROUTES)."""
    global _route
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    _route = route


def get_route():
    return _route


def _native_module():
    """ops.native, set up on first use; None (with one warning) where it cannot be."""
    global _native, _native_error
    if _native is not None or _native_error is not None:
        return _native
    with _native_lock:
        if _native is None and _native_error is None:
            try:
                from fastrnn.ops import native

                _native = native
            except Exception as error:  # noqa: BLE001 - any failure means: fall back
                _native_error = f"{type(error).__name__}: {error}"
                warnings.warn("fastrnn: the native TensorFlow ops cannot be set up here "
                              f"({_native_error}); the layers run their kernels through "
                              "tf.numpy_function instead (slower per call).", stacklevel=3)
    return _native


def native_route(device="cpu"):
    """The ops.native module when a layer call on `device` should use it, else None."""
    if _route == "numpy_function" or use_gpu_route(device):
        return None
    if _route not in ROUTES:
        raise ValueError(f"FASTRNN_ROUTE must be one of {ROUTES}, got {_route!r}")
    module = _native_module()
    if module is None and _route == "native":
        raise RuntimeError(f"the native route was asked for (route='native'), but {_native_error}")
    return module


def route_name(device="cpu"):
    """Which route a layer call on `device` takes: "cuda", "native op" or
    "numpy_function fallback"."""
    if use_gpu_route(device):
        return "cuda"
    return "native op" if native_route(device) is not None else "numpy_function fallback"


def _native_inputs(x, tensors):
    """tensors cast to the ops' dtype for inputs x (float32 or float64; half in float32)."""
    dtype = _COMPUTE.get(x.dtype, x.dtype)
    return [None if t is None else tf.cast(t, dtype) for t in tensors]


def check_device(device):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def use_gpu_route(device):
    """True when the layer should run through tf.py_function with the CUDA kernels.

    "cpu": never. "cuda": always, or a RuntimeError saying what is missing.
    "auto": when CuPy + numba-cuda find a GPU and TensorFlow has one too.
    """
    check_device(device)
    if device == "cpu":
        return False
    if device == "cuda":
        reason = _cuda.missing_reason()
        if reason is None and _cuda.simulator():
            reason = "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) cannot take TensorFlow tensors"
        if reason is not None:
            raise RuntimeError(f"device='cuda' was asked for, but {reason}; "
                               "use device='auto' or 'cpu' to run the CPU kernels")
        return True
    return _cuda.gpu_available() and bool(tf.config.list_logical_devices("GPU"))


def _from_tensor(t):
    """An eager tensor as the kernels take it: CuPy (by DLPack) on a GPU, else NumPy."""
    if "GPU" not in t.device:
        return t.numpy()
    import cupy

    if t.dtype == tf.bool or t.shape.num_elements() == 0:
        # DLPack bool and empty-tensor support varies; masks and placeholders are small.
        return cupy.asarray(t.numpy())
    capsule = tf.experimental.dlpack.to_dlpack(t)  # waits until t's data is ready
    try:
        return cupy.from_dlpack(capsule)
    except TypeError:  # CuPy versions that take only __dlpack__ objects
        return cupy.fromDlpack(capsule)


def _to_tensor(a):
    if not _cuda.is_cupy_array(a):
        return tf.convert_to_tensor(a)
    import cupy

    cupy.cuda.get_current_stream().synchronize()  # TensorFlow reads on its own stream
    return tf.experimental.dlpack.from_dlpack(a.toDlpack())


def _eager(fn):
    """fn over arrays -> a tf.py_function body over eager tensors (GPU or CPU)."""

    def body(*tensors):
        return [_to_tensor(a) for a in fn(*[_from_tensor(t) for t in tensors])]

    return body


def _recurrence(forward, backward, saved_cls, meta, x, states0, weights, mask, units,
                recurrent_mask=None, carry=None, restore=None, n_carry=None, device="cpu",
                recurrent=True):
    """Differentiable (outputs [B, T, H], [final states, each [B, H]]).

    `forward(x, *states0, *weights, mask, recurrent_mask) -> (out, *states, saved)`
    and `backward(saved, d_out, *d_states) -> (dx, *d_states0, *d_weights)` are the
    NumPy kernels; `states0` the initial states (h, or h and c); `weights` tensors
    (kernel, recurrent_kernel, bias or None); `meta` the non-array fields of
    `saved_cls`, fixed by the configuration. `mask` and `recurrent_mask` get no
    gradient. `carry(saved)` lists the arrays the backward cannot rebuild and
    `restore(carried, x, states0, weights, mask, recurrent_mask)` rebuilds `saved`
    (`n_carry` arrays); by default the recurrent cells' (kernels._saved).
    `recurrent`: the cell has a per-step recurrent product (False for minGRU).
    """
    if carry is None:
        n_carry = sum(f.type is np.ndarray and f.name not in _saved.DERIVED_FIELDS
                      for f in saved_cls.__dataclass_fields__.values())
        carry = _saved.saved_arrays

        def restore(carried, x_np, states_np, ws, m, rm):
            return _saved.restore_saved(saved_cls, carried, x_np, m, ws[0], ws[1],
                                           recurrent_mask=rm, **meta)

    out_dtype = x.dtype
    dtype = _COMPUTE.get(out_dtype, out_dtype)
    present = [w is not None for w in weights]
    n_states = len(states0)
    inputs = ([tf.cast(x, dtype)] + [tf.cast(s, dtype) for s in states0]
              + [tf.cast(w, dtype) for w in weights if w is not None])
    has_mask = mask is not None
    mask_t = tf.cast(mask, tf.bool) if has_mask else tf.zeros((0, 0), tf.bool)
    has_rmask = recurrent_mask is not None
    rmask_t = tf.cast(recurrent_mask, dtype) if has_rmask else tf.zeros((0, 0), dtype)
    gpu_route = use_gpu_route(device)
    save = record.could_possibly_record()
    width = weights[0].shape[1]  # G * H, the kernel's columns
    # The forward's outputs have a fixed count: room for the carried arrays of every
    # part a call may split into; parts a call does not use carry empty arrays.
    max_parts = 1 if gpu_route else MAX_PARTS
    if gpu_route:
        def call(fn, args, Tout):
            return tf.py_function(_eager(fn), args, Tout=Tout)
    else:
        def call(fn, args, Tout):
            if tf.executing_eagerly():
                # tf.numpy_function's eager branch copies every input (np.array), and
                # so does EagerTensor.numpy(); np.asarray shares a CPU tensor's memory
                # (read-only: the kernels never write to their inputs).
                return [tf.convert_to_tensor(r) for r in fn(*[np.asarray(t) for t in args])]
            return tf.numpy_function(fn, args, Tout=Tout)

    def unpack(mask_in, rmask_in, arrays):
        x_np, rest = arrays[0], arrays[1:]
        states_np, it = list(rest[:n_states]), iter(rest[n_states:])
        return (x_np, states_np, [next(it) if p else None for p in present],
                mask_in if has_mask else None, rmask_in if has_rmask else None)

    def rows(s, arrays):
        return [None if a is None else a[s] for a in arrays]

    def forward_np(mask_in, rmask_in, *tensors):
        x_np, states_np, ws, m, rm = unpack(mask_in, rmask_in, tensors)
        if gpu_route:
            parts, threads = 1, None
        else:
            parts, threads = _plan(x_np, width, max_parts, recurrent)
        slices = _parts.slices(x_np.shape[0], parts)

        def part(i):
            s = slices[i]
            return forward(x_np[s], *rows(s, states_np), *ws, *rows(s, [m, rm]))

        results = _with_threads(threads, lambda: _run_parts(part, parts))
        outputs = list(results[0][:-1]) if parts == 1 else [
            _parts.concat([r[k] for r in results]) for k in range(1 + n_states)]
        saved = [r[-1] for r in results]
        if not save:
            return outputs
        carried = [a for sv in saved for a in carry(sv)]
        empty = np.empty((0,), x_np.dtype)
        return outputs + carried + [empty] * (n_carry * (max_parts - len(saved)))

    @tf.custom_gradient
    def op(*tensors):
        out, *rest = call(forward_np, [mask_t, rmask_t, *tensors],
                          [dtype] * (1 + n_states + (n_carry * max_parts if save else 0)))
        states, carried = rest[:n_states], rest[n_states:]
        out.set_shape(tensors[0].shape[:2].concatenate([units]))
        for state in states:
            state.set_shape(tensors[0].shape[:1].concatenate([units]))

        def grad(d_out, *d_states):
            def backward_np(d_out_in, *rest):
                d_states_in, (mask_in, rmask_in) = rest[:n_states], rest[n_states:n_states + 2]
                rest = rest[n_states + 2:]
                tensors_in, carried_in = rest[:len(tensors)], rest[len(tensors):]
                x_np, states_np, ws, m, rm = unpack(mask_in, rmask_in, tensors_in)
                if gpu_route:
                    parts, threads = 1, None
                elif carried_in:
                    # As many parts as the forward used: the others carried nothing.
                    # (At least one: an empty batch's part carries empty arrays.)
                    parts = max(1, sum(carried_in[i * n_carry].size > 0
                                       for i in range(max_parts)))
                    threads = 1 if parts > 1 else _plan(x_np, width, 1, recurrent)[1]
                else:
                    parts, threads = _plan(x_np, width, max_parts, recurrent)
                slices = _parts.slices(x_np.shape[0], parts)

                def part(i):
                    s = slices[i]
                    x_s, states_s, mask_s = x_np[s], rows(s, states_np), rows(s, [m, rm])
                    if carried_in:
                        saved = restore(list(carried_in[i * n_carry:(i + 1) * n_carry]), x_s,
                                        states_s, ws, *mask_s)
                    else:
                        saved = forward(x_s, *states_s, *ws, *mask_s)[-1]
                    return backward(saved, d_out_in[s], *rows(s, d_states_in))

                results = _with_threads(threads, lambda: _run_parts(part, parts))
                grads = results[0] if parts == 1 else (
                    [_parts.concat([r[k] for r in results]) for k in range(1 + n_states)]
                    + [_parts.add([r[k] for r in results]) for k in range(1 + n_states, len(results[0]))])
                return [g for g, p in zip(grads, [True] * (1 + n_states) + present) if p]

            grads = call(backward_np, [d_out, *d_states, mask_t, rmask_t, *tensors, *carried],
                         [dtype] * len(tensors))
            for g, t in zip(grads, tensors):
                g.set_shape(t.shape)
            return grads

        return (out, *states), grad

    out, *states = op(*inputs)
    return tf.cast(out, out_dtype), [tf.cast(state, out_dtype) for state in states]


def gru(x, h0, kernel, recurrent_kernel, bias, mask=None, *, reset_after=True,
        go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
        recurrent_mask=None, device="cpu"):
    """GRU over a sequence as a differentiable TF op. Returns (outputs, h_last).

    recurrent_mask [B, 3H]: Keras' per-gate recurrent dropout masks (z | r | h side by
    side; each gate's recurrent product takes h_{t-1} * its mask)."""
    meta = dict(has_bias=bias is not None, reset_after=bool(reset_after),
                act=_validate.activation_code(activation),
                ract=_validate.activation_code(recurrent_activation, "recurrent_activation"),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        (x_c, h0_c, w, u, b, rm) = _native_inputs(
            x, [x, h0, kernel, recurrent_kernel, bias, recurrent_mask])
        out, h_last = native.gru(x_c, h0_c, w, u, b, mask, reset_after=meta["reset_after"],
                                 go_backwards=meta["go_backwards"], act=meta["act"],
                                 ract=meta["ract"], max_parts=MAX_PARTS, recurrent_mask=rm)
        return tf.cast(out, x.dtype), tf.cast(h_last, x.dtype)

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=mask,
                                   reset_after=reset_after, go_backwards=go_backwards,
                                   activation=activation, recurrent_activation=recurrent_activation,
                                   recurrent_mask=recurrent_mask)

    out, (h_last,) = _recurrence(forward, kernels.gru_backward, gru_cpu.GRUSaved, meta, x, [h0],
                                 [kernel, recurrent_kernel, bias], mask, recurrent_kernel.shape[0],
                                 recurrent_mask, device=device)
    return out, h_last


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, mask=None, *, activation="tanh",
               go_backwards=False, recurrent_mask=None, device="cpu"):
    """SimpleRNN over a sequence as a differentiable TF op. Returns (outputs, h_last).

    recurrent_mask [B, H]: Keras' recurrent dropout mask (h_{t-1} * m before U).
    """
    meta = dict(has_bias=bias is not None, act=_validate.activation_code(activation),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        (x_c, h0_c, w, u, b, rm) = _native_inputs(
            x, [x, h0, kernel, recurrent_kernel, bias, recurrent_mask])
        out, h_last = native.simple_rnn(x_c, h0_c, w, u, b, mask, act=meta["act"],
                                        go_backwards=meta["go_backwards"], recurrent_mask=rm,
                                        max_parts=MAX_PARTS)
        return tf.cast(out, x.dtype), tf.cast(h_last, x.dtype)

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias,
                                          activation=activation, mask=mask,
                                          go_backwards=go_backwards,
                                          recurrent_mask=recurrent_mask)

    out, (h_last,) = _recurrence(
        forward, kernels.simple_rnn_backward, simple_rnn_cpu.SimpleRNNSaved, meta, x, [h0],
        [kernel, recurrent_kernel, bias], mask, recurrent_kernel.shape[0], recurrent_mask,
        device=device)
    return out, h_last


def mingru(x, h0, kernel, bias, mask=None, *, go_backwards=False, device="cpu"):
    """minGRU over a sequence as a differentiable TF op. Returns (outputs, h_last)."""
    native = native_route(device)
    if native is not None:
        (x_c, h0_c, w, b) = _native_inputs(x, [x, h0, kernel, bias])
        out, h_last = native.mingru(x_c, h0_c, w, b, mask, go_backwards=bool(go_backwards),
                                    max_parts=MAX_PARTS)
        return tf.cast(out, x.dtype), tf.cast(h_last, x.dtype)

    def forward(x, h0, kernel, bias, mask, recurrent_mask):
        return kernels.mingru_forward(x, h0, kernel, bias, mask=mask, go_backwards=go_backwards)

    def restore(carried, x_np, states_np, ws, m, rm):
        module = mingru_cpu
        if _cuda.is_cupy_array(x_np):
            from fastrnn.kernels.mingru import cuda as module
        return module.restore_saved(carried, x_np, ws[0], m, has_bias=bias is not None,
                                    go_backwards=go_backwards)

    out, (h_last,) = _recurrence(
        forward, kernels.mingru_backward, mingru_cpu.MinGRUSaved, {}, x, [h0], [kernel, bias],
        mask, kernel.shape[1] // 2, carry=lambda saved: [saved.gates], restore=restore,
        n_carry=1, device=device, recurrent=False)
    return out, h_last


def lstm(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, *, go_backwards=False,
         activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None, device="cpu"):
    """LSTM over a sequence as a differentiable TF op. Returns (outputs, h_last, c_last).

    recurrent_mask [B, 4H]: Keras' per-gate recurrent dropout masks (i | f | c | o side
    by side; gate g's recurrent product takes h_{t-1} * its mask)."""
    meta = dict(has_bias=bias is not None, act=_validate.activation_code(activation),
                ract=_validate.activation_code(recurrent_activation, "recurrent_activation"),
                go_backwards=bool(go_backwards))
    native = native_route(device)
    if native is not None:
        (x_c, h0_c, c0_c, w, u, b, rm) = _native_inputs(
            x, [x, h0, c0, kernel, recurrent_kernel, bias, recurrent_mask])
        out, h_last, c_last = native.lstm(x_c, h0_c, c0_c, w, u, b, mask,
                                          go_backwards=meta["go_backwards"], act=meta["act"],
                                          ract=meta["ract"], max_parts=MAX_PARTS,
                                          recurrent_mask=rm)
        return tf.cast(out, x.dtype), tf.cast(h_last, x.dtype), tf.cast(c_last, x.dtype)

    def forward(x, h0, c0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=mask,
                                     go_backwards=go_backwards, activation=activation,
                                     recurrent_activation=recurrent_activation,
                                     recurrent_mask=recurrent_mask)

    out, (h_last, c_last) = _recurrence(forward, kernels.lstm_backward, lstm_cpu.LSTMSaved, meta,
                                        x, [h0, c0], [kernel, recurrent_kernel, bias], mask,
                                        recurrent_kernel.shape[0], recurrent_mask, device=device)
    return out, h_last, c_last
