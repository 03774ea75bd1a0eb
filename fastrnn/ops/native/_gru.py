"""GRU as native TensorFlow ops: FastrnnGRUForward / FastrnnGRUBackward."""

import numpy as np
from numba import carray, cfunc

from fastrnn.kernels import _abi
from fastrnn.kernels._cpu_common import copy_2d, run_prepare
from fastrnn.kernels.gru import cpu as gru_cpu

from .. import _capi
from .._capi import (
    KERNEL_SIGNATURE,
    MAX_DIMS,
    TF_BOOL,
    TF_INT32,
    TF_TensorData,
    TF_TensorType,
    allocate_outputs,
    blas_enter,
    finish,
    get_inputs,
    layout_scratch,
    messages,
    set_output_shapes,
    shape_is,
    zero_tensor,
)
from . import packed, recurrence, row_placeholder

# Forward inputs: x [B, T, I], h0 [B, H], kernel [I, 3H], recurrent_kernel [H, 3H],
# bias ([2, 3H] reset_after, [3H] otherwise, [0] none), mask bool ([B, T] or [0, 0]),
# recurrent_mask ([B, 3H] per-gate recurrent dropout, or [B, 0] for none: a per-row
# input, split with the batch), config int32 [8]. Outputs: out [B, T, H], h_last
# [B, H] and, for the backward, gates [T, B, 3H], extra [T, B, H], states [T + 1, B, H].
# Backward inputs: x, kernel, recurrent_kernel, mask, recurrent_mask, config, gates,
# extra, states, d_out [B, T, H], d_h_last [B, H]. Outputs: dx, dh0, d_kernel,
# d_recurrent_kernel, d_bias (the bias' shape). The recurrent mask gets no gradient.
GRU_CONFIG = ("reset_after", "go_backwards", "act", "ract", "has_mask", "has_bias", "packed",
              "has_recurrent_mask")

_GRU_FORWARD_ERRORS = messages("FastrnnGRUForward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features]",
    "h0 must be [batch, units] with the batch of x",
    "kernel must be [features, 3 * units] with the features of x",
    "recurrent_kernel must be [units, 3 * units] matching kernel",
    "bias must be [2, 3 * units] (reset_after=True), [3 * units] (False) or empty (no bias)",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, 3 * units] matching x and kernel",
    "config must be int32 [8]",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?), or the cores of this reset_after "
    "variant were not bound (fastrnn.ops.native.ops binds them)",
))
_GRU_BACKWARD_ERRORS = messages("FastrnnGRUBackward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features]",
    "kernel or recurrent_kernel does not match x and the saved gates",
    "the saved tensors (gates, extra, states) do not match x",
    "d_out must be [batch, time, units] and d_h_last [batch, units]",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, 3 * units] matching x and kernel",
    "config must be int32 [8]",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?), or the cores of this reset_after "
    "variant were not bound (fastrnn.ops.native.ops binds them)",
))

# Shape programs (ops/_capi.set_output_shapes): per output, pieces (input, start, end).
_GRU_FORWARD_SHAPES = np.array([
    [[0, 0, 2], [3, 0, 1], [-1, 0, 0]],   # out [B, T, H]
    [[0, 0, 1], [3, 0, 1], [-1, 0, 0]],   # h_last [B, H]
    [[0, 1, 2], [0, 0, 1], [3, 1, 2]],    # gates [T, B, 3H]
    [[0, 1, 2], [0, 0, 1], [3, 0, 1]],    # extra [T, B, H]
    [[-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],  # states [T + 1, B, H]: unknown
], np.int64)
_GRU_BACKWARD_SHAPES = np.array([
    [[0, 0, 3], [-1, 0, 0], [-1, 0, 0]],  # dx like x
    [[10, 0, 2], [-1, 0, 0], [-1, 0, 0]],  # dh0 like d_h_last
    [[1, 0, 2], [-1, 0, 0], [-1, 0, 0]],  # d_kernel like kernel
    [[2, 0, 2], [-1, 0, 0], [-1, 0, 0]],  # d_recurrent_kernel like recurrent_kernel
    [[-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],  # d_bias: unknown here (the layer sets it)
], np.int64)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _gru_forward_shapes(ictx, status):
    set_output_shapes(ictx, status, _GRU_FORWARD_SHAPES)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _gru_backward_shapes(ictx, status):
    set_output_shapes(ictx, status, _GRU_BACKWARD_SHAPES)


_FORWARD_RANKS = np.array([3, 2, 3, 3, 3], np.int64)  # out, h_last, gates, extra, states


def _gru_kernels(dtype, reset_after=True):
    """(forward, backward) cfuncs of the GRU ops for one dtype; the cores of the
    variant `reset_after` bound (the ops run either variant: see prepare)."""
    # Cold, these cfuncs compile here while a helper process compiles the cores
    # they call (kernels._abi: bound below, the helper's cores loaded, the others
    # compiled here).
    helper = _abi.aside_when_slow(gru_cpu.core_names(reset_after)[::-1] + ("prepare",), dtype)
    code = _capi.TF_DTYPE[np.dtype(dtype)]
    size = np.dtype(dtype).itemsize
    errors_f, errors_b = _GRU_FORWARD_ERRORS, _GRU_BACKWARD_ERRORS

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def forward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(8, np.intp)
        outputs = np.zeros(5, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((8, MAX_DIMS), np.int64)
        ranks = np.zeros(8, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3:
            error = 1
        elif TF_TensorType(tensors[7]) != TF_INT32 or ranks[7] != 1 or dims[7, 0] != 8:
            error = 8
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[3, 0]
            config = carray(TF_TensorData(tensors[7]), 8, np.int32)
            reset_after, has_mask, has_bias = config[0] != 0, config[4] != 0, config[5] != 0
            has_rmask = config[7] != 0
            bias_size = dims[4, 0] * (dims[4, 1] if ranks[4] == 2 else 1)
            if ranks[1] != 2 or not shape_is(dims, ranks, 1, batch, units, -1):
                error = 2
            elif ranks[2] != 2 or not shape_is(dims, ranks, 2, inputs, 3 * units, -1):
                error = 3
            elif ranks[3] != 2 or not shape_is(dims, ranks, 3, units, 3 * units, -1):
                error = 4
            elif (ranks[4] != (2 if reset_after else 1) or bias_size != (
                    (2 if reset_after else 1) * 3 * units)) if has_bias else bias_size != 0:
                error = 5
            elif has_mask and (TF_TensorType(tensors[5]) != TF_BOOL or ranks[5] != 2
                               or not shape_is(dims, ranks, 5, batch, time, -1)):
                error = 6
            elif has_rmask and (ranks[6] != 2
                                or not shape_is(dims, ranks, 6, batch, 3 * units, -1)):
                error = 7
            elif time == 0:
                error = 9
        if error < 0:
            rows = 2 if reset_after else 1
            shapes = np.zeros((5, 3), np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2] = batch, time, units
            shapes[1, 0], shapes[1, 1] = batch, units
            shapes[2, 0], shapes[2, 1], shapes[2, 2] = time, batch, 3 * units
            shapes[3, 0], shapes[3, 1], shapes[3, 2] = time, batch, units
            shapes[4, 0], shapes[4, 1], shapes[4, 2] = time + 1, batch, units
            if not (allocate_outputs(ctx, status, code, size, shapes, _FORWARD_RANKS, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else rows * 3 * units, temps)):
                error = 10
        if error < 0 and batch > 0:
            x = carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype)
            h0 = carray(TF_TensorData(tensors[1]), (batch, units), dtype)
            kernel = carray(TF_TensorData(tensors[2]), (inputs, 3 * units), dtype)
            recurrent = carray(TF_TensorData(tensors[3]), (units, 3 * units), dtype)
            if has_bias:
                bias = carray(TF_TensorData(tensors[4]), (rows, 3 * units), dtype)
            else:  # zeros
                bias = carray(TF_TensorData(temps[3]), (rows, 3 * units), dtype)
            mask = carray(TF_TensorData(tensors[5]), (batch if has_mask else 0,
                                                      time if has_mask else 0), np.bool_)
            if not gru_cpu.run_forward(
                    x, h0, kernel, recurrent, bias, mask, has_mask, reset_after, config[1] != 0,
                    np.int64(config[2]), np.int64(config[3]),
                    carray(TF_TensorData(tensors[6]), (batch if has_rmask else 0,
                                                       3 * units if has_rmask else 0), dtype),
                    config[6] != 0,
                    carray(TF_TensorData(outputs[0]), (batch, time, units), dtype),
                    carray(TF_TensorData(outputs[1]), (batch, units), dtype),
                    carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype),
                    carray(TF_TensorData(outputs[2]), (time, batch, 3 * units), dtype),
                    carray(TF_TensorData(outputs[3]), (time, batch, units), dtype),
                    carray(TF_TensorData(outputs[4]), (time + 1, batch, units), dtype),
                    carray(TF_TensorData(temps[1]), (time, batch), np.bool_),
                    carray(TF_TensorData(temps[2]), batch, np.int64)):
                error = 11
        finish(ctx, status, error, 10, errors_f, tensors, outputs, temps)

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def backward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(11, np.intp)
        outputs = np.zeros(5, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((11, MAX_DIMS), np.int64)
        ranks = np.zeros(11, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3:
            error = 1
        elif TF_TensorType(tensors[5]) != TF_INT32 or ranks[5] != 1 or dims[5, 0] != 8:
            error = 7
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[2, 0]
            config = carray(TF_TensorData(tensors[5]), 8, np.int32)
            reset_after, has_mask, has_bias = config[0] != 0, config[4] != 0, config[5] != 0
            has_rmask = config[7] != 0
            if (ranks[1] != 2 or ranks[2] != 2 or not shape_is(dims, ranks, 1, inputs, 3 * units, -1)
                    or not shape_is(dims, ranks, 2, units, 3 * units, -1)):
                error = 2
            elif (ranks[6] != 3 or ranks[7] != 3 or ranks[8] != 3
                  or not shape_is(dims, ranks, 6, time, batch, 3 * units)
                  or not shape_is(dims, ranks, 7, time, batch, units)
                  or not shape_is(dims, ranks, 8, time + 1, batch, units)):
                error = 3
            elif (ranks[9] != 3 or ranks[10] != 2
                  or not shape_is(dims, ranks, 9, batch, time, units)
                  or not shape_is(dims, ranks, 10, batch, units, -1)):
                error = 4
            elif has_mask and (TF_TensorType(tensors[3]) != TF_BOOL or ranks[3] != 2
                               or not shape_is(dims, ranks, 3, batch, time, -1)):
                error = 5
            elif has_rmask and (ranks[4] != 2
                                or not shape_is(dims, ranks, 4, batch, 3 * units, -1)):
                error = 6
        if error < 0:
            rows = 2 if reset_after else 1
            shapes = np.zeros((5, 3), np.int64)
            out_ranks = np.zeros(5, np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2], out_ranks[0] = batch, time, inputs, 3
            shapes[1, 0], shapes[1, 1], out_ranks[1] = batch, units, 2
            shapes[2, 0], shapes[2, 1], out_ranks[2] = inputs, 3 * units, 2
            shapes[3, 0], shapes[3, 1], out_ranks[3] = units, 3 * units, 2
            if not has_bias:
                shapes[4, 0], out_ranks[4] = 0, 1
            elif reset_after:
                shapes[4, 0], shapes[4, 1], out_ranks[4] = 2, 3 * units, 2
            else:
                shapes[4, 0], out_ranks[4] = 3 * units, 1
            if not (allocate_outputs(ctx, status, code, size, shapes, out_ranks, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else rows * 3 * units, temps)):
                error = 8
        if error < 0 and batch == 0:  # no rows: the weight gradients are zeros
            for i in range(2, 5):
                zero_tensor(outputs[i], shapes[i, 0] * max(1, shapes[i, 1]) * size)
        if error < 0 and batch > 0:
            d_bias_tensor = outputs[4] if has_bias else temps[3]
            x = carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype)
            mask = carray(TF_TensorData(tensors[3]), (batch if has_mask else 0,
                                                      time if has_mask else 0), np.bool_)
            x_tm = carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype)
            mask_tm = carray(TF_TensorData(temps[1]), (time, batch), np.bool_)
            first = carray(TF_TensorData(temps[2]), batch, np.int64)
            dh = carray(TF_TensorData(outputs[1]), (batch, units), dtype)
            copy_2d(dh, carray(TF_TensorData(tensors[10]), (batch, units), dtype))
            go_backwards = config[1] != 0
            if not (run_prepare(x, mask, has_mask, go_backwards, x_tm, mask_tm, first)
                    and gru_cpu.run_backward(
                        x_tm, carray(TF_TensorData(tensors[6]), (time, batch, 3 * units), dtype),
                        carray(TF_TensorData(tensors[7]), (time, batch, units), dtype),
                        carray(TF_TensorData(tensors[8]), (time + 1, batch, units), dtype),
                        mask_tm, first,
                        carray(TF_TensorData(tensors[1]), (inputs, 3 * units), dtype),
                        carray(TF_TensorData(tensors[2]), (units, 3 * units), dtype),
                        carray(TF_TensorData(tensors[4]), (batch if has_rmask else 0,
                                                           3 * units if has_rmask else 0), dtype),
                        carray(TF_TensorData(tensors[9]), (batch, time, units), dtype), dh,
                        reset_after, go_backwards, np.int64(config[2]), np.int64(config[3]),
                        config[6] != 0,
                        carray(TF_TensorData(outputs[0]), (batch, time, inputs), dtype),
                        carray(TF_TensorData(outputs[2]), (inputs, 3 * units), dtype),
                        carray(TF_TensorData(outputs[3]), (units, 3 * units), dtype),
                        carray(TF_TensorData(d_bias_tensor), (rows, 3 * units), dtype))):
                error = 9
        finish(ctx, status, error, 8, errors_b, tensors, outputs, temps)

    helper.cancel()
    _abi.ensure_all(gru_cpu.core_names(reset_after) + ("prepare",), dtype)
    return forward, backward


FORWARD = ("FastrnnGRUForward",
           ["x: T", "h0: T", "kernel: T", "recurrent_kernel: T", "bias: T", "mask: bool",
            "recurrent_mask: T", "config: int32"],
           ["out: T", "h_last: T", "gates: T", "extra: T", "states: T"],
           _gru_forward_shapes)
BACKWARD = ("FastrnnGRUBackward",
            ["x: T", "kernel: T", "recurrent_kernel: T", "mask: bool", "recurrent_mask: T",
             "config: int32", "gates: T", "extra: T", "states: T", "d_out: T", "d_h_last: T"],
            ["dx: T", "dh0: T", "d_kernel: T", "d_recurrent_kernel: T", "d_bias: T"],
            _gru_backward_shapes)
kernels = _gru_kernels


def prepare(dtype, reset_after=True):
    """Bind the cores of variant `reset_after` for dtype (compiled or loaded once):
    an op running a variant whose cores are not bound fails with a TF error."""
    gru_cpu.prepare_cores(dtype, reset_after)


def call(x, h0, kernel, recurrent_kernel, bias, mask, *, reset_after, go_backwards, act, ract,
         max_parts, recurrent_mask=None):
    """GRU through FastrnnGRUForward/Backward. Returns (out, h_last).

    recurrent_mask: [B, 3H] per-gate recurrent dropout masks side by side, or None."""
    units = int(recurrent_kernel.shape[0])
    has_rmask = recurrent_mask is not None
    if not has_rmask:
        recurrent_mask = row_placeholder(x)
    config = [reset_after, go_backwards, act, ract, mask is not None, bias is not None, packed(),
              has_rmask]
    out, (h_last,) = recurrence("gru", x, [h0], [kernel, recurrent_kernel], bias, mask,
                                [recurrent_mask], config,
                                units, 3 * units, max_parts, 3,
                                variant={"reset_after": bool(reset_after)})
    return out, h_last
