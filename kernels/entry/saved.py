"""A kernel call's `saved`, as frameworks carry it: its arrays out and back in, and
the `saved` of a call over an empty batch.

`saved_arrays` lists the arrays of a cell's `saved` that its forward's inputs cannot
rebuild; `restore_saved` rebuilds the object from them and those inputs (the
TensorFlow glue carries them between its forward and backward calls). `EmptySaved`
stands for the `saved` of a forward over an empty batch (kernels.entry.dispatch answers
those calls without a kernel).

Depends on kernels.checks.validate and kernels.gpu.cuda only (the import layers: _validate,
then _saved, then _dispatch).
"""

import importlib
from dataclasses import dataclass

import numpy as np

from ..gpu import cuda as _cuda
from ..checks import validate as v

_KERNELS = __package__.rpartition(".")[0]  # kernels (or fastrnn.kernels)
SAVED_CLASSES = {"gru": "GRUSaved", "lstm": "LSTMSaved", "mingru": "MinGRUSaved",
                  "simple_rnn": "SimpleRNNSaved"}
GATES = {"gru": 3, "lstm": 4, "mingru": 2, "simple_rnn": 1}
STATES = {"gru": ("h",), "lstm": ("h", "c"), "mingru": ("h",), "simple_rnn": ("h",)}


def array_module_of(x):
    return _cuda.array_module(x) if _cuda.is_cupy_array(x) else np


def bias_shape(cell, units, reset_after=True):
    if cell == "gru" and reset_after:
        return (2, 3 * units)
    return (GATES[cell] * units,)


@dataclass(eq=False)
class EmptySaved:
    """The `saved` of a forward over an empty batch: only what the backward's
    results' shapes need. Its backward returns dx [0, T, I], [0, H] per state and
    zeros of the weights' shapes (None for a missing bias)."""

    cell: str
    time: int
    features: int
    units: int
    dtype: np.dtype
    kernel_shape: tuple
    recurrent_kernel_shape: tuple  # None for minGRU
    bias_shape: tuple              # None without a bias
    xp: object                     # numpy or cupy

    @property
    def gates(self):
        """An empty [0, T, G*H] array, as minGRU's `saved.gates` (the TF glue carries it)."""
        return self.xp.empty((0, self.time, self.kernel_shape[1]), self.dtype)

    def carried_arrays(self):
        """As many empty arrays as saved_arrays carries for the cell."""
        cls = getattr(importlib.import_module(f"{_KERNELS}.{self.cell}.cpu"),
                      SAVED_CLASSES[self.cell])
        return [self.xp.empty((0,), self.dtype) for _ in _plan(cls)[0]]

    def backward(self, bound):
        """The backward's results, after checking the upstream gradients of `bound`
        (the backward's arguments: saved, d_out, then one per state)."""
        xp, dtype = self.xp, self.dtype
        grads = list(bound.arguments.items())[1:]
        shapes = [(0, self.time, self.units)] + [(0, self.units)] * (len(grads) - 1)
        for (name, g), shape in zip(grads, shapes):
            v.check_grad(g, name, shape, dtype, xp)
        weights = [self.kernel_shape, self.recurrent_kernel_shape, self.bias_shape]
        if self.cell == "mingru":
            del weights[1]
        return (xp.zeros((0, self.time, self.features), dtype),
                *[xp.zeros((0, self.units), dtype) for _ in STATES[self.cell]],
                *[None if shape is None else xp.zeros(shape, dtype) for shape in weights])


def empty_saved(cell, x, kernel, recurrent_kernel, has_bias, reset_after=True):
    """The EmptySaved of a forward over x [0, T, I] with these (checked) weights."""
    units = kernel.shape[1] // GATES[cell]
    return EmptySaved(cell, x.shape[1], x.shape[2], units, np.dtype(x.dtype),
                      tuple(kernel.shape),
                      None if recurrent_kernel is None else tuple(recurrent_kernel.shape),
                      bias_shape(cell, units, reset_after) if has_bias else None, array_module_of(x))


# Fields of every `saved` object that can be rebuilt from the forward's own inputs.
DERIVED_FIELDS = ("x_tm", "mask", "first", "kernel", "recurrent_kernel", "recurrent_mask")


_PLANS = {}


def _plan(cls):
    """(names of cls' carried array fields, names of all its fields), computed once
    per class: dataclasses.fields costs microseconds, and a layer call asks twice."""
    plan = _PLANS.get(cls)
    if plan is None:
        from dataclasses import fields

        plan = ([f.name for f in fields(cls)
                 if f.type is np.ndarray and f.name not in DERIVED_FIELDS],
                frozenset(f.name for f in fields(cls)))
        _PLANS[cls] = plan
    return plan


def saved_arrays(saved):
    """The ndarray fields of a kernel's `saved` that cannot be rebuilt from its inputs.

    Frameworks that must carry `saved` across a boundary (TensorFlow's forward
    and backward py_functions) pass these as tensors and rebuild the object
    with `restore_saved`.
    """
    if type(saved) is EmptySaved:  # an empty batch's: as many (empty) arrays
        return saved.carried_arrays()
    return [getattr(saved, name) for name in _plan(type(saved))[0]]


def restore_saved(cls, arrays, x, mask, kernel, recurrent_kernel, recurrent_mask=None,
                  cuda=None, **meta):
    """Inverse of saved_arrays, given the forward's inputs and the other fields.

    `cls` is the CPU class; CuPy arrays (or cuda=True: NumPy arrays under the
    CUDA simulator) rebuild the CUDA kernels' subclass of it instead.
    """
    if cuda is None:
        cuda = _cuda.is_cupy_array(x)
    go_backwards = meta["go_backwards"]
    batch, time = x.shape[:2]
    if batch == 0:
        return empty_saved(cls.__module__.split(".")[-2], x, kernel, recurrent_kernel,
                           meta["has_bias"], meta.get("reset_after", True))
    if cuda:
        xp = _cuda.array_module(x)
        cls = getattr(importlib.import_module(cls.__module__.rsplit(".", 1)[0] + ".cuda"),
                      cls.__name__ + "CUDA")
        mask_tm, first = _cuda.time_major_mask(xp, mask, batch, time, go_backwards)
        x_tm = _cuda.to_time_major(xp, x, go_backwards)
    else:
        from ..fastmath.common import time_major_mask, to_time_major

        xp = np
        mask_tm, first = time_major_mask(mask, batch, time, go_backwards)
        x_tm = to_time_major(x, go_backwards)
    names, present = _plan(cls)
    derived = dict(x_tm=x_tm, mask=mask_tm, first=first, kernel=kernel,
                   recurrent_kernel=recurrent_kernel)
    if "recurrent_mask" in present:
        derived["recurrent_mask"] = v.check_recurrent_mask(recurrent_mask, batch, kernel.shape[1],
                                                         x.dtype, xp)
    return cls(**dict(zip(names, arrays)), **derived, **meta)
