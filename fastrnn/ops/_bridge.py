"""The kernels' NumPy (or CuPy) launchers as TensorFlow ops: one py_func for the
forward, one for the backward, joined by tf.custom_gradient (the numpy_function
route, and the GPU route).

The py_funcs are `tf.numpy_function`: it hands NumPy arrays straight to the
kernels and measured about 120 us cheaper per call than `tf.py_function` here
(2-core EPYC, TF 2.21), which wraps them in eager tensors first.

What the forward saves for the backward travels as tensors (the arrays of the
kernel's `saved` object that cannot be rebuilt from the inputs), so TensorFlow
owns their lifetime: nothing is kept on the Python side between the two calls.
When no gradient tape is recording while the op is built (inference: predict,
eager calls), the forward returns only its outputs, and the backward, should a
gradient be asked for after all (a tf.function traced without a tape and called
under one), re-runs the forward first.

GPU route (`device`): where the CUDA kernels can run (CuPy + numba-cuda and a
GPU TensorFlow also sees), the py_funcs are `tf.py_function` instead: a tensor
on a GPU goes to CuPy through DLPack (no copy, no host round trip), runs the
CUDA kernels, and comes back through DLPack after CuPy's stream is
synchronized; a tensor on the CPU takes the NumPy kernels as before. What
the forward saves travels between the two py_functions as tensors, as on the
CPU route (by DLPack, without copies, on a GPU).
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from fastrnn.kernels.gpu import cuda as _cuda
from fastrnn.kernels.batch import parts as _parts
from fastrnn.kernels.entry import saved as _saved

from . import _threads, route


COMPUTE = {tf.float16: tf.float32, tf.bfloat16: tf.float32}  # the kernels' dtype for x's


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


def _rows(s, arrays):
    return [None if a is None else a[s] for a in arrays]


class _Bridge:
    """One layer call through the launchers (see `recurrence`): the forward and
    backward py_func bodies over NumPy (or CuPy) arrays, and how they are called."""

    def __init__(self, forward, backward, n_states, present, has_mask, has_rmask, width,
                 carry, restore, n_carry, device, recurrent):
        self.forward, self.backward = forward, backward
        self.n_states, self.present, self.width = n_states, present, width
        self.has_mask, self.has_rmask, self.recurrent = has_mask, has_rmask, recurrent
        self.carry, self.restore, self.n_carry = carry, restore, n_carry
        self.gpu = route.use_gpu_route(device)
        self.save = record.could_possibly_record()
        # The forward's outputs have a fixed count: room for the carried arrays of
        # every part a call may split into; parts a call does not use carry empty arrays.
        self.max_parts = 1 if self.gpu else _threads.MAX_PARTS

    def call(self, fn, args, dtypes):
        if self.gpu:
            return tf.py_function(_eager(fn), args, Tout=dtypes)
        if tf.executing_eagerly():
            # tf.numpy_function's eager branch copies every input (np.array), and so
            # does EagerTensor.numpy(); np.asarray shares a CPU tensor's memory
            # (read-only: the kernels never write to their inputs).
            return [tf.convert_to_tensor(r) for r in fn(*[np.asarray(t) for t in args])]
        return tf.numpy_function(fn, args, Tout=dtypes)

    def unpack(self, mask, rmask, arrays):
        """(x, states, weights with None for absent ones, mask or None, rmask or None)."""
        x, rest = arrays[0], arrays[1:]
        states, it = list(rest[:self.n_states]), iter(rest[self.n_states:])
        return (x, states, [next(it) if p else None for p in self.present],
                mask if self.has_mask else None, rmask if self.has_rmask else None)

    def plan(self, x, carried=None):
        """(parts, BLAS threads) of a forward, or of a backward given what it carried."""
        if self.gpu:
            return 1, None
        if carried:
            # As many parts as the forward used: the others carried nothing.
            # (At least one: an empty batch's part carries empty arrays.)
            parts = max(1, sum(carried[i * self.n_carry].size > 0
                               for i in range(self.max_parts)))
            return parts, 1 if parts > 1 else _threads.plan(x, self.width, 1, self.recurrent)[1]
        return _threads.plan(x, self.width, self.max_parts, self.recurrent)

    def join(self, results, n_batch):
        """The parts' results: the first n_batch joined along the batch, the rest added."""
        if len(results) == 1:
            return list(results[0])
        return ([_parts.concat([r[k] for r in results]) for k in range(n_batch)]
                + [_parts.add([r[k] for r in results]) for k in range(n_batch, len(results[0]))])

    def forward_np(self, mask, rmask, *tensors):
        x, states, weights, m, rm = self.unpack(mask, rmask, tensors)
        parts, threads = self.plan(x)
        slices = _parts.slices(x.shape[0], parts)

        def part(i):
            s = slices[i]
            return self.forward(x[s], *_rows(s, states), *weights, *_rows(s, [m, rm]))

        results = _threads.with_threads(threads, lambda: _threads.run_parts(part, parts))
        outputs = self.join([r[:-1] for r in results], 1 + self.n_states)
        if not self.save:
            return outputs
        carried = [a for r in results for a in self.carry(r[-1])]
        empty = np.empty((0,), x.dtype)
        return outputs + carried + [empty] * (self.n_carry * (self.max_parts - len(results)))

    def backward_np(self, n_inputs, d_out, *rest):
        n = self.n_states
        d_states, (mask, rmask), rest = rest[:n], rest[n:n + 2], rest[n + 2:]
        tensors, carried = rest[:n_inputs], rest[n_inputs:]
        x, states, weights, m, rm = self.unpack(mask, rmask, tensors)
        parts, threads = self.plan(x, carried)
        slices = _parts.slices(x.shape[0], parts)

        def part(i):
            s = slices[i]
            x_s, states_s, masks = x[s], _rows(s, states), _rows(s, [m, rm])
            if carried:
                mine = list(carried[i * self.n_carry:(i + 1) * self.n_carry])
                saved = self.restore(mine, x_s, states_s, weights, *masks)
            else:
                saved = self.forward(x_s, *states_s, *weights, *masks)[-1]
            return self.backward(saved, d_out[s], *_rows(s, d_states))

        results = _threads.with_threads(threads, lambda: _threads.run_parts(part, parts))
        grads = self.join(results, 1 + n)
        return [g for g, p in zip(grads, [True] * (1 + n) + self.present) if p]


def recurrence(forward, backward, saved_cls, meta, x, states0, weights, mask, units,
               recurrent_mask=None, carry=None, restore=None, n_carry=None, device="cpu",
               recurrent=True):
    """Differentiable (outputs [B, T, H], [final states, each [B, H]]).

    `forward(x, *states0, *weights, mask, recurrent_mask) -> (out, *states, saved)`
    and `backward(saved, d_out, *d_states) -> (dx, *d_states0, *d_weights)` are the
    launchers; `states0` the initial states (h, or h and c); `weights` tensors
    (kernel, recurrent_kernel, bias or None); `meta` the non-array fields of
    `saved_cls`, fixed by the configuration. `mask` and `recurrent_mask` get no
    gradient. `carry(saved)` lists the arrays the backward cannot rebuild and
    `restore(carried, x, states0, weights, mask, recurrent_mask)` rebuilds `saved`
    (`n_carry` arrays); by default the recurrent cells' (kernels.entry.saved).
    `recurrent`: the cell has a per-step recurrent product (False for minGRU).
    Half precision is computed in float32.
    """
    if carry is None:
        n_carry = sum(f.type is np.ndarray and f.name not in _saved.DERIVED_FIELDS
                      for f in saved_cls.__dataclass_fields__.values())
        carry = _saved.saved_arrays

        def restore(carried, x_np, states_np, ws, m, rm):
            return _saved.restore_saved(saved_cls, carried, x_np, m, ws[0], ws[1],
                                        recurrent_mask=rm, **meta)

    dtype = COMPUTE.get(x.dtype, x.dtype)
    inputs = ([tf.cast(x, dtype)] + [tf.cast(s, dtype) for s in states0]
              + [tf.cast(w, dtype) for w in weights if w is not None])
    mask_t = tf.cast(mask, tf.bool) if mask is not None else tf.zeros((0, 0), tf.bool)
    rmask_t = (tf.cast(recurrent_mask, dtype) if recurrent_mask is not None
               else tf.zeros((0, 0), dtype))
    bridge = _Bridge(forward, backward, len(states0), [w is not None for w in weights],
                     mask is not None, recurrent_mask is not None, weights[0].shape[1], carry,
                     restore, n_carry, device, recurrent)
    n_out = 1 + len(states0) + (bridge.n_carry * bridge.max_parts if bridge.save else 0)

    @tf.custom_gradient
    def op(*tensors):
        out, *rest = bridge.call(bridge.forward_np, [mask_t, rmask_t, *tensors], [dtype] * n_out)
        states, carried = rest[:len(states0)], rest[len(states0):]
        out.set_shape(tensors[0].shape[:2].concatenate([units]))
        for state in states:
            state.set_shape(tensors[0].shape[:1].concatenate([units]))

        def grad(d_out, *d_states):
            grads = bridge.call(lambda *args: bridge.backward_np(len(tensors), *args),
                                [d_out, *d_states, mask_t, rmask_t, *tensors, *carried],
                                [dtype] * len(tensors))
            for g, t in zip(grads, tensors):
                g.set_shape(t.shape)
            return grads

        return (out, *states), grad

    out, *states = op(*inputs)
    return tf.cast(out, x.dtype), [tf.cast(state, x.dtype) for state in states]
