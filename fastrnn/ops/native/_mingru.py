"""minGRU as native TensorFlow ops: FastrnnMinGRUForward / FastrnnMinGRUBackward.

The kernels run the sequential method of kernels/mingru/cpu.py (forward_core,
backward_core: blocks of batch rows, one GEMM and one fused pass each), the
fastest on one core; the Blelloch scan, parallel over time, is for direct calls
with few rows on many cores. Parallelism here comes from the graph splitting the
batch (ops.native.recurrence).
"""

import numpy as np
from numba import carray, cfunc

from fastrnn.kernels import _abi
from fastrnn.kernels._cpu_common import copy_2d
from fastrnn.kernels.mingru import cpu as mingru_cpu

from .. import _capi
from .._capi import (
    KERNEL_SIGNATURE,
    MAX_DIMS,
    TF_BOOL,
    TF_INT32,
    TF_TensorData,
    TF_TensorType,
    allocate_outputs,
    allocate_scratch,
    blas_enter,
    delete_tensors,
    finish,
    get_inputs,
    layout_scratch,
    messages,
    set_output_shapes,
    shape_is,
    zero_tensor,
)
from . import recurrence

# Forward inputs: x [B, T, I], h0 [B, H], kernel [I, 2H], bias ([2H], or [0] for none),
# mask bool ([B, T] or [0, 0]), config int32 [3]. Outputs: out [B, T, H], h_last [B, H]
# and, for the backward, gates [B, T, 2H] (z | h~ - h_{t-1}, processing order).
# Backward inputs: x, kernel, mask, config, gates, d_out [B, T, H], d_h_last [B, H].
# Outputs: dx, dh0, d_kernel, d_bias (the bias' shape, [0] for none).
MINGRU_CONFIG = ("go_backwards", "has_mask", "has_bias")
_N_CONFIG = len(MINGRU_CONFIG)

_FORWARD_ERRORS = messages("FastrnnMinGRUForward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features] with features >= 1",
    "kernel must be [features, 2 * units] with the features of x and units >= 1",
    "h0 must be [batch, units] with the batch of x and the units of kernel",
    "bias must be [2 * units] matching kernel, or empty (no bias)",
    "mask must be bool [batch, time] matching x",
    "config must be int32 [3]",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))
_BACKWARD_ERRORS = messages("FastrnnMinGRUBackward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features] with features >= 1",
    "kernel must be [features, 2 * units] with the features of x and units >= 1",
    "the saved gates do not match x and kernel",
    "d_out must be [batch, time, units] and d_h_last [batch, units]",
    "mask must be bool [batch, time] matching x",
    "config must be int32 [3]",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))
_FIRST_INTERNAL = 8  # errors from here on are INTERNAL, the others INVALID_ARGUMENT

# Shape programs (ops/_capi.set_output_shapes): per output, pieces (input, start, end).
_FORWARD_SHAPES = np.array([
    [[0, 0, 2], [1, 1, 2]],    # out [B, T, H]: x's [B, T], h0's H
    [[1, 0, 2], [-1, 0, 0]],   # h_last like h0
    [[0, 0, 2], [2, 1, 2]],    # gates [B, T, 2H]: x's [B, T], kernel's 2H
], np.int64)
_BACKWARD_SHAPES = np.array([
    [[0, 0, 3]],    # dx like x
    [[6, 0, 2]],    # dh0 like d_h_last
    [[1, 0, 2]],    # d_kernel like kernel
    [[-1, 0, 0]],   # d_bias: [2H] or [0] (the layer sets it)
], np.int64)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _forward_shapes(ictx, status):
    set_output_shapes(ictx, status, _FORWARD_SHAPES)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _backward_shapes(ictx, status):
    set_output_shapes(ictx, status, _BACKWARD_SHAPES)


_FORWARD_RANKS = np.array([3, 2, 3], np.int64)  # out, h_last, gates
_WORK_RANKS = np.array([3], np.int64)  # the backward's d_pre block


def kernels(dtype):
    """(forward, backward) cfuncs of the minGRU ops for one dtype."""
    # Cold, these cfuncs compile here while a helper process compiles the cores
    # they call (kernels._abi: bound below, the helper's cores loaded, the others
    # compiled here).
    helper = _abi.aside_when_slow(("mingru_backward", "mingru_forward"), dtype)
    code = _capi.TF_DTYPE[np.dtype(dtype)]
    size = np.dtype(dtype).itemsize
    errors_f, errors_b = _FORWARD_ERRORS, _BACKWARD_ERRORS

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def forward(state, ctx):
        blas_enter()  # one BLAS thread inside an op (see _capi.blas_enter)
        status = _capi.TF_NewStatus()
        tensors = np.zeros(6, np.intp)
        outputs = np.zeros(3, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((6, MAX_DIMS), np.int64)
        ranks = np.zeros(6, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[5]) != TF_INT32 or ranks[5] != 1 or dims[5, 0] != _N_CONFIG:
            error = 6
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            width = dims[2, 1]
            units = width // 2
            config = carray(TF_TensorData(tensors[5]), _N_CONFIG, np.int32)
            go_backwards, has_mask, has_bias = config[0] != 0, config[1] != 0, config[2] != 0
            if (ranks[2] != 2 or dims[2, 0] != inputs or width < 2 or width % 2 != 0):
                error = 2
            elif ranks[1] != 2 or not shape_is(dims, ranks, 1, batch, units, -1):
                error = 3
            elif ranks[3] != 1 or dims[3, 0] != (width if has_bias else 0):
                error = 4
            elif has_mask and (TF_TensorType(tensors[4]) != TF_BOOL or ranks[4] != 2
                               or not shape_is(dims, ranks, 4, batch, time, -1)):
                error = 5
            elif time == 0:
                error = 7
        if error < 0:
            shapes = np.zeros((3, 3), np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2] = batch, time, units
            shapes[1, 0], shapes[1, 1] = batch, units
            shapes[2, 0], shapes[2, 1], shapes[2, 2] = batch, time, width
            # Scratch: x_p [B, T, I] (x in processing order: only with go_backwards),
            # mask_bt [B, T], first [B], zeros for no bias (layout_scratch's shapes,
            # batch-major here).
            if not (allocate_outputs(ctx, status, code, size, shapes, _FORWARD_RANKS, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time,
                                       inputs if go_backwards else 0,
                                       0 if has_bias else width, temps)):
                error = 8
        if error < 0 and batch > 0:
            bias_tensor = tensors[3] if has_bias else temps[3]
            rows_p = batch if go_backwards else 0
            if not mingru_cpu.run_forward(
                    carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype),
                    carray(TF_TensorData(tensors[1]), (batch, units), dtype),
                    carray(TF_TensorData(tensors[2]), (inputs, width), dtype),
                    carray(TF_TensorData(bias_tensor), width, dtype),
                    carray(TF_TensorData(tensors[4]), (batch if has_mask else 0,
                                                       time if has_mask else 0), np.bool_),
                    has_mask, go_backwards, mingru_cpu.rows_per_block(batch, time, width, size),
                    carray(TF_TensorData(temps[0]), (rows_p, time if go_backwards else 0,
                                                     inputs if go_backwards else 0), dtype),
                    carray(TF_TensorData(outputs[2]), (batch, time, width), dtype),
                    carray(TF_TensorData(outputs[0]), (batch, time, units), dtype),
                    carray(TF_TensorData(outputs[1]), (batch, units), dtype),
                    carray(TF_TensorData(temps[1]), (batch, time), np.bool_),
                    carray(TF_TensorData(temps[2]), batch, np.int64)):
                error = 9
        finish(ctx, status, error, _FIRST_INTERNAL, errors_f, tensors, outputs, temps)

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def backward(state, ctx):
        blas_enter()  # one BLAS thread inside an op (see _capi.blas_enter)
        status = _capi.TF_NewStatus()
        tensors = np.zeros(7, np.intp)
        outputs = np.zeros(4, np.intp)
        temps = np.zeros(4, np.intp)
        work = np.zeros(1, np.intp)
        dims = np.zeros((7, MAX_DIMS), np.int64)
        ranks = np.zeros(7, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[3]) != TF_INT32 or ranks[3] != 1 or dims[3, 0] != _N_CONFIG:
            error = 6
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            width = dims[1, 1]
            units = width // 2
            config = carray(TF_TensorData(tensors[3]), _N_CONFIG, np.int32)
            go_backwards, has_mask, has_bias = config[0] != 0, config[1] != 0, config[2] != 0
            if ranks[1] != 2 or dims[1, 0] != inputs or width < 2 or width % 2 != 0:
                error = 2
            elif ranks[4] != 3 or not shape_is(dims, ranks, 4, batch, time, width):
                error = 3
            elif (ranks[5] != 3 or ranks[6] != 2 or not shape_is(dims, ranks, 5, batch, time, units)
                  or not shape_is(dims, ranks, 6, batch, units, -1)):
                error = 4
            elif has_mask and (TF_TensorType(tensors[2]) != TF_BOOL or ranks[2] != 2
                               or not shape_is(dims, ranks, 2, batch, time, -1)):
                error = 5
            elif time == 0:
                error = 7
        if error < 0:
            shapes = np.zeros((4, 3), np.int64)
            out_ranks = np.zeros(4, np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2], out_ranks[0] = batch, time, inputs, 3
            shapes[1, 0], shapes[1, 1], out_ranks[1] = batch, units, 2
            shapes[2, 0], shapes[2, 1], out_ranks[2] = inputs, width, 2
            shapes[3, 0], out_ranks[3] = width if has_bias else 0, 1
            rows = mingru_cpu.rows_per_block(max(batch, 1), time, width, size)
            work_shapes = np.zeros((1, 3), np.int64)
            work_shapes[0, 0], work_shapes[0, 1], work_shapes[0, 2] = rows, time, width
            work_codes = np.zeros(1, np.int32)
            work_codes[0] = code
            if not (allocate_outputs(ctx, status, code, size, shapes, out_ranks, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time,
                                       inputs if go_backwards else 0,
                                       0 if has_bias else width, temps)
                    and allocate_scratch(ctx, status, work_codes, work_shapes, _WORK_RANKS, work)):
                error = 8
        if error < 0 and batch == 0:  # no rows: the weight gradients are zeros
            zero_tensor(outputs[2], inputs * width * size)
            zero_tensor(outputs[3], shapes[3, 0] * size)
        if error < 0 and batch > 0:
            x = carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype)
            mask = carray(TF_TensorData(tensors[2]), (batch if has_mask else 0,
                                                      time if has_mask else 0), np.bool_)
            x_p = carray(TF_TensorData(temps[0]), (batch if go_backwards else 0,
                                                   time if go_backwards else 0,
                                                   inputs if go_backwards else 0), dtype)
            mask_bt = carray(TF_TensorData(temps[1]), (batch, time), np.bool_)
            first = carray(TF_TensorData(temps[2]), batch, np.int64)
            mingru_cpu.prepare(x, mask, has_mask, go_backwards, x_p, mask_bt, first)
            if not go_backwards:
                x_p = x
            dh = carray(TF_TensorData(outputs[1]), (batch, units), dtype)
            copy_2d(dh, carray(TF_TensorData(tensors[6]), (batch, units), dtype))
            d_bias_tensor = outputs[3] if has_bias else temps[3]
            if not mingru_cpu.run_backward(
                    x_p, carray(TF_TensorData(tensors[4]), (batch, time, width), dtype), mask_bt,
                    first, carray(TF_TensorData(tensors[1]), (inputs, width), dtype),
                    carray(TF_TensorData(tensors[5]), (batch, time, units), dtype), dh,
                    go_backwards, rows,
                    carray(TF_TensorData(work[0]), (rows, time, width), dtype),
                    carray(TF_TensorData(outputs[0]), (batch, time, inputs), dtype),
                    carray(TF_TensorData(outputs[2]), (inputs, width), dtype),
                    carray(TF_TensorData(d_bias_tensor), width, dtype)):
                error = 9
        delete_tensors(work)
        finish(ctx, status, error, _FIRST_INTERNAL, errors_b, tensors, outputs, temps)

    helper.cancel()
    _abi.ensure_all(("mingru_forward", "mingru_backward"), dtype)
    return forward, backward


FORWARD = ("FastrnnMinGRUForward",
           ["x: T", "h0: T", "kernel: T", "bias: T", "mask: bool", "config: int32"],
           ["out: T", "h_last: T", "gates: T"],
           _forward_shapes)
BACKWARD = ("FastrnnMinGRUBackward",
            ["x: T", "kernel: T", "mask: bool", "config: int32", "gates: T", "d_out: T",
             "d_h_last: T"],
            ["dx: T", "dh0: T", "d_kernel: T", "d_bias: T"],
            _backward_shapes)


def call(x, h0, kernel, bias, mask, *, go_backwards, max_parts):
    """minGRU through FastrnnMinGRUForward/Backward. Returns (out, h_last)."""
    units = int(kernel.shape[1]) // 2
    config = [go_backwards, mask is not None, bias is not None]
    out, (h_last,) = recurrence("mingru", x, [h0], [kernel], bias, mask, [], config, units,
                                2 * units, max_parts, 1)
    return out, h_last
