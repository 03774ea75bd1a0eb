"""LSTM as native TensorFlow ops: FastrnnLSTMForward / FastrnnLSTMBackward."""

import numpy as np
from numba import carray, cfunc

from fastrnn.kernels import _abi
from fastrnn.kernels._cpu_common import copy_2d, run_prepare, steps_per_block
from fastrnn.kernels.lstm import cpu as lstm_cpu

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
from . import packed, recurrence, row_placeholder

# Forward inputs: x [B, T, I], h0 [B, H], c0 [B, H], kernel [I, 4H],
# recurrent_kernel [H, 4H], bias ([4H], or [0] for none), mask bool ([B, T] or
# [0, 0]), recurrent_mask ([B, 4H] per-gate recurrent dropout, or [B, 0] for none: a
# per-row input, split with the batch), config int32 [7]. Outputs: out [B, T, H],
# h_last [B, H], c_last [B, H] and, for the backward, gates [T, B, 4H], h_states
# [T + 1, B, H], c_states [T + 1, B, H], tanh_c [T, B, H].
# Backward inputs: x, kernel, recurrent_kernel, mask, recurrent_mask, config, gates,
# h_states, c_states, tanh_c, d_out [B, T, H], d_h_last [B, H], d_c_last [B, H].
# Outputs: dx, dh0, dc0, d_kernel, d_recurrent_kernel, d_bias ([4H], or [0] for none).
# The recurrent mask gets no gradient.
LSTM_CONFIG = ("go_backwards", "act", "ract", "has_mask", "has_bias", "packed",
               "has_recurrent_mask")
_N_CONFIG = len(LSTM_CONFIG)
_MAX_ACTIVATION = 4  # codes 0-4 (kernels._validate.ACTIVATIONS)

_FORWARD_ERRORS = messages("FastrnnLSTMForward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features], features >= 1",
    "h0 must be [batch, units] with the batch of x",
    "c0 must be [batch, units] with the batch of x",
    "kernel must be [features, 4 * units] with the features of x",
    "recurrent_kernel must be [units, 4 * units] matching kernel, units >= 1",
    "bias must be [4 * units] or empty (no bias)",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, 4 * units] matching x and kernel",
    "config must be int32 [7] with activation codes 0-4",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))
_BACKWARD_ERRORS = messages("FastrnnLSTMBackward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features], features >= 1",
    "kernel or recurrent_kernel does not match x and the saved gates",
    "the saved tensors (gates, h_states, c_states, tanh_c) do not match x",
    "d_out must be [batch, time, units], d_h_last and d_c_last [batch, units]",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, 4 * units] matching x and kernel",
    "config must be int32 [7] with activation codes 0-4",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))

# Shape programs (ops/_capi.set_output_shapes): per output, pieces (input, start, end).
_FORWARD_SHAPES = np.array([
    [[0, 0, 2], [4, 0, 1], [-1, 0, 0]],   # out [B, T, H]
    [[0, 0, 1], [4, 0, 1], [-1, 0, 0]],   # h_last [B, H]
    [[0, 0, 1], [4, 0, 1], [-1, 0, 0]],   # c_last [B, H]
    [[0, 1, 2], [0, 0, 1], [4, 1, 2]],    # gates [T, B, 4H]
    [[-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],  # h_states [T + 1, B, H]: unknown
    [[-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],  # c_states [T + 1, B, H]: unknown
    [[0, 1, 2], [0, 0, 1], [4, 0, 1]],    # tanh_c [T, B, H]
], np.int64)
_BACKWARD_SHAPES = np.array([
    [[0, 0, 3], [-1, 0, 0], [-1, 0, 0]],   # dx like x
    [[11, 0, 2], [-1, 0, 0], [-1, 0, 0]],  # dh0 like d_h_last
    [[12, 0, 2], [-1, 0, 0], [-1, 0, 0]],  # dc0 like d_c_last
    [[1, 0, 2], [-1, 0, 0], [-1, 0, 0]],   # d_kernel like kernel
    [[2, 0, 2], [-1, 0, 0], [-1, 0, 0]],   # d_recurrent_kernel like recurrent_kernel
    [[-1, 0, 0], [-1, 0, 0], [-1, 0, 0]],  # d_bias: [4H] or [0] (the wrapper sets it)
], np.int64)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _forward_shapes(ictx, status):
    set_output_shapes(ictx, status, _FORWARD_SHAPES)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _backward_shapes(ictx, status):
    set_output_shapes(ictx, status, _BACKWARD_SHAPES)


_WORK_RANKS = np.array([3, 3], np.int64)  # the backward's dz and dx_tm scratch


def _lstm_kernels(dtype):
    """(forward, backward) cfuncs of the LSTM ops for one dtype."""
    # Cold, these cfuncs compile here while a helper process compiles the cores
    # they call (kernels._abi: bound below, the helper's cores loaded, the others
    # compiled here).
    helper = _abi.aside_when_slow(("lstm_backward", "lstm_forward", "prepare"), dtype)
    code = _capi.TF_DTYPE[np.dtype(dtype)]
    size = np.dtype(dtype).itemsize
    errors_f, errors_b = _FORWARD_ERRORS, _BACKWARD_ERRORS
    n_config, max_act = _N_CONFIG, _MAX_ACTIVATION

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def forward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(9, np.intp)
        outputs = np.zeros(7, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((9, MAX_DIMS), np.int64)
        ranks = np.zeros(9, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[8]) != TF_INT32 or ranks[8] != 1 or dims[8, 0] != n_config:
            error = 9
        if error < 0:
            config = carray(TF_TensorData(tensors[8]), n_config, np.int32)
            if not (0 <= config[1] <= max_act and 0 <= config[2] <= max_act):
                error = 9
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[4, 0]
            has_mask, has_bias, has_rmask = config[3] != 0, config[4] != 0, config[6] != 0
            bias_size = 1
            for d in range(ranks[5]):
                bias_size *= dims[5, d]
            if ranks[1] != 2 or not shape_is(dims, ranks, 1, batch, units, -1):
                error = 2
            elif ranks[2] != 2 or not shape_is(dims, ranks, 2, batch, units, -1):
                error = 3
            elif ranks[3] != 2 or not shape_is(dims, ranks, 3, inputs, 4 * units, -1):
                error = 4
            elif ranks[4] != 2 or units < 1 or not shape_is(dims, ranks, 4, units, 4 * units, -1):
                error = 5
            elif (ranks[5] != 1 or dims[5, 0] != 4 * units) if has_bias else bias_size != 0:
                error = 6
            elif has_mask and (TF_TensorType(tensors[6]) != TF_BOOL or ranks[6] != 2
                               or not shape_is(dims, ranks, 6, batch, time, -1)):
                error = 7
            elif has_rmask and (ranks[7] != 2
                                or not shape_is(dims, ranks, 7, batch, 4 * units, -1)):
                error = 8
            elif time == 0:
                error = 10
        if error < 0:
            shapes = np.zeros((7, 3), np.int64)
            out_ranks = np.full(7, 3, np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2] = batch, time, units
            for i in (1, 2):
                shapes[i, 0], shapes[i, 1], out_ranks[i] = batch, units, 2
            shapes[3, 0], shapes[3, 1], shapes[3, 2] = time, batch, 4 * units
            for i in (4, 5):
                shapes[i, 0], shapes[i, 1], shapes[i, 2] = time + 1, batch, units
            shapes[6, 0], shapes[6, 1], shapes[6, 2] = time, batch, units
            if not (allocate_outputs(ctx, status, code, size, shapes, out_ranks, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else 4 * units, temps)):
                error = 11
        if error < 0 and batch > 0:
            bias_tensor = tensors[5] if has_bias else temps[3]  # zeros without a bias
            if not lstm_cpu.run_forward(
                    carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype),
                    carray(TF_TensorData(tensors[1]), (batch, units), dtype),
                    carray(TF_TensorData(tensors[2]), (batch, units), dtype),
                    carray(TF_TensorData(tensors[3]), (inputs, 4 * units), dtype),
                    carray(TF_TensorData(tensors[4]), (units, 4 * units), dtype),
                    carray(TF_TensorData(bias_tensor), 4 * units, dtype),
                    carray(TF_TensorData(tensors[6]), (batch if has_mask else 0,
                                                       time if has_mask else 0), np.bool_),
                    has_mask, config[0] != 0, np.int64(config[1]), np.int64(config[2]),
                    carray(TF_TensorData(tensors[7]), (batch if has_rmask else 0,
                                                       4 * units if has_rmask else 0), dtype),
                    config[5] != 0,
                    carray(TF_TensorData(outputs[0]), (batch, time, units), dtype),
                    carray(TF_TensorData(outputs[1]), (batch, units), dtype),
                    carray(TF_TensorData(outputs[2]), (batch, units), dtype),
                    carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype),
                    carray(TF_TensorData(outputs[3]), (time, batch, 4 * units), dtype),
                    carray(TF_TensorData(outputs[4]), (time + 1, batch, units), dtype),
                    carray(TF_TensorData(outputs[5]), (time + 1, batch, units), dtype),
                    carray(TF_TensorData(outputs[6]), (time, batch, units), dtype),
                    carray(TF_TensorData(temps[1]), (time, batch), np.bool_),
                    carray(TF_TensorData(temps[2]), batch, np.int64)):
                error = 12
        finish(ctx, status, error, 11, errors_f, tensors, outputs, temps)

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def backward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(13, np.intp)
        outputs = np.zeros(6, np.intp)
        temps = np.zeros(4, np.intp)
        work = np.zeros(2, np.intp)
        dims = np.zeros((13, MAX_DIMS), np.int64)
        ranks = np.zeros(13, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[5]) != TF_INT32 or ranks[5] != 1 or dims[5, 0] != n_config:
            error = 7
        if error < 0:
            config = carray(TF_TensorData(tensors[5]), n_config, np.int32)
            if not (0 <= config[1] <= max_act and 0 <= config[2] <= max_act):
                error = 7
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[2, 0]
            has_mask, has_bias, has_rmask = config[3] != 0, config[4] != 0, config[6] != 0
            if (ranks[1] != 2 or ranks[2] != 2 or units < 1
                    or not shape_is(dims, ranks, 1, inputs, 4 * units, -1)
                    or not shape_is(dims, ranks, 2, units, 4 * units, -1)):
                error = 2
            elif (ranks[6] != 3 or ranks[7] != 3 or ranks[8] != 3 or ranks[9] != 3
                  or not shape_is(dims, ranks, 6, time, batch, 4 * units)
                  or not shape_is(dims, ranks, 7, time + 1, batch, units)
                  or not shape_is(dims, ranks, 8, time + 1, batch, units)
                  or not shape_is(dims, ranks, 9, time, batch, units)):
                error = 3
            elif (ranks[10] != 3 or ranks[11] != 2 or ranks[12] != 2
                  or not shape_is(dims, ranks, 10, batch, time, units)
                  or not shape_is(dims, ranks, 11, batch, units, -1)
                  or not shape_is(dims, ranks, 12, batch, units, -1)):
                error = 4
            elif has_mask and (TF_TensorType(tensors[3]) != TF_BOOL or ranks[3] != 2
                               or not shape_is(dims, ranks, 3, batch, time, -1)):
                error = 5
            elif has_rmask and (ranks[4] != 2
                                or not shape_is(dims, ranks, 4, batch, 4 * units, -1)):
                error = 6
            elif time == 0:
                error = 8
        if error < 0:
            shapes = np.zeros((6, 3), np.int64)
            out_ranks = np.full(6, 2, np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2], out_ranks[0] = batch, time, inputs, 3
            shapes[1, 0], shapes[1, 1] = batch, units
            shapes[2, 0], shapes[2, 1] = batch, units
            shapes[3, 0], shapes[3, 1] = inputs, 4 * units
            shapes[4, 0], shapes[4, 1] = units, 4 * units
            shapes[5, 0], out_ranks[5] = 4 * units if has_bias else 0, 1
            steps = steps_per_block(batch * 4 * units * size, time)
            work_shapes = np.zeros((2, 3), np.int64)
            work_shapes[0, 0], work_shapes[0, 1], work_shapes[0, 2] = steps, batch, 4 * units
            work_shapes[1, 0], work_shapes[1, 1], work_shapes[1, 2] = time, batch, inputs
            work_codes = np.zeros(2, np.int32)
            work_codes[0], work_codes[1] = code, code
            if not (allocate_outputs(ctx, status, code, size, shapes, out_ranks, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else 4 * units, temps)
                    and allocate_scratch(ctx, status, work_codes, work_shapes, _WORK_RANKS, work)):
                error = 9
        if error < 0 and batch == 0:  # no rows: the weight gradients are zeros
            zero_tensor(outputs[3], inputs * 4 * units * size)
            zero_tensor(outputs[4], units * 4 * units * size)
            zero_tensor(outputs[5], shapes[5, 0] * size)
        if error < 0 and batch > 0:
            x = carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype)
            mask = carray(TF_TensorData(tensors[3]), (batch if has_mask else 0,
                                                      time if has_mask else 0), np.bool_)
            x_tm = carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype)
            mask_tm = carray(TF_TensorData(temps[1]), (time, batch), np.bool_)
            first = carray(TF_TensorData(temps[2]), batch, np.int64)
            dh = carray(TF_TensorData(outputs[1]), (batch, units), dtype)
            dc = carray(TF_TensorData(outputs[2]), (batch, units), dtype)
            copy_2d(dh, carray(TF_TensorData(tensors[11]), (batch, units), dtype))
            copy_2d(dc, carray(TF_TensorData(tensors[12]), (batch, units), dtype))
            go_backwards = config[0] != 0
            d_bias_tensor = outputs[5] if has_bias else temps[3]
            if not (run_prepare(x, mask, has_mask, go_backwards, x_tm, mask_tm, first)
                    and lstm_cpu.run_backward(
                        x_tm, carray(TF_TensorData(tensors[6]), (time, batch, 4 * units), dtype),
                        carray(TF_TensorData(tensors[7]), (time + 1, batch, units), dtype),
                        carray(TF_TensorData(tensors[8]), (time + 1, batch, units), dtype),
                        carray(TF_TensorData(tensors[9]), (time, batch, units), dtype),
                        mask_tm, first,
                        carray(TF_TensorData(tensors[1]), (inputs, 4 * units), dtype),
                        carray(TF_TensorData(tensors[2]), (units, 4 * units), dtype),
                        carray(TF_TensorData(tensors[4]), (batch if has_rmask else 0,
                                                           4 * units if has_rmask else 0), dtype),
                        carray(TF_TensorData(tensors[10]), (batch, time, units), dtype), dh, dc,
                        go_backwards, np.int64(config[1]), np.int64(config[2]), config[5] != 0,
                        carray(TF_TensorData(outputs[0]), (batch, time, inputs), dtype),
                        carray(TF_TensorData(outputs[3]), (inputs, 4 * units), dtype),
                        carray(TF_TensorData(outputs[4]), (units, 4 * units), dtype),
                        carray(TF_TensorData(d_bias_tensor), 4 * units, dtype),
                        carray(TF_TensorData(work[0]), (steps, batch, 4 * units), dtype),
                        carray(TF_TensorData(work[1]), (time, batch, inputs), dtype))):
                error = 10
        delete_tensors(work)
        finish(ctx, status, error, 9, errors_b, tensors, outputs, temps)

    helper.cancel()
    _abi.ensure_all(("lstm_forward", "lstm_backward", "prepare"), dtype)
    return forward, backward


FORWARD = ("FastrnnLSTMForward",
           ["x: T", "h0: T", "c0: T", "kernel: T", "recurrent_kernel: T", "bias: T",
            "mask: bool", "recurrent_mask: T", "config: int32"],
           ["out: T", "h_last: T", "c_last: T", "gates: T", "h_states: T", "c_states: T",
            "tanh_c: T"],
           _forward_shapes)
BACKWARD = ("FastrnnLSTMBackward",
            ["x: T", "kernel: T", "recurrent_kernel: T", "mask: bool", "recurrent_mask: T",
             "config: int32", "gates: T", "h_states: T", "c_states: T", "tanh_c: T", "d_out: T", "d_h_last: T",
             "d_c_last: T"],
            ["dx: T", "dh0: T", "dc0: T", "d_kernel: T", "d_recurrent_kernel: T", "d_bias: T"],
            _backward_shapes)
kernels = _lstm_kernels


def call(x, h0, c0, kernel, recurrent_kernel, bias, mask, *, act, ract, go_backwards,
         max_parts, recurrent_mask=None):
    """LSTM through FastrnnLSTMForward/Backward. Returns (out, h_last, c_last).

    recurrent_mask: [B, 4H] per-gate recurrent dropout masks side by side, or None."""
    units = int(recurrent_kernel.shape[0])
    has_rmask = recurrent_mask is not None
    if not has_rmask:
        recurrent_mask = row_placeholder(x)
    config = [go_backwards, act, ract, mask is not None, bias is not None, packed(), has_rmask]
    out, (h_last, c_last) = recurrence("lstm", x, [h0, c0], [kernel, recurrent_kernel], bias,
                                       mask, [recurrent_mask], config, units, 4 * units,
                                       max_parts, 4)
    return out, h_last, c_last
