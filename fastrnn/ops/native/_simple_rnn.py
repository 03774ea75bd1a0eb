"""SimpleRNN as native TensorFlow ops: FastrnnSimpleRNNForward / FastrnnSimpleRNNBackward."""

import numpy as np
from numba import carray, cfunc

from fastrnn.kernels import _abi
from fastrnn.kernels._cpu_common import copy_2d, run_prepare
from fastrnn.kernels.simple_rnn import cpu as simple_rnn_cpu

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

# Forward inputs: x [B, T, I], h0 [B, H], kernel [I, H], recurrent_kernel [H, H], bias
# ([H], or [0] for none), mask bool ([B, T], or [0, 0] / [B, 0] for none),
# recurrent_mask ([B, H] recurrent dropout, or [B, 0] / [0, 0] for none: a per-row
# input, split with the batch), config int32 [6]. Outputs: out [B, T, H], h_last [B, H]
# and, for the backward, states [T + 1, B, H] (h0 then every step's state).
# Backward inputs: x, kernel, recurrent_kernel, mask, recurrent_mask, config, states,
# d_out [B, T, H], d_h_last [B, H]. Outputs: dx, dh0, d_kernel, d_recurrent_kernel,
# d_bias ([H], or [0] without a bias). The recurrent mask gets no gradient.
CONFIG = ("go_backwards", "act", "has_mask", "has_bias", "has_recurrent_mask", "packed")
_N_CONFIG = len(CONFIG)
_N_ACTIVATIONS = 5  # kernels._validate.ACTIVATIONS: codes 0..4

_FORWARD_ERRORS = messages("FastrnnSimpleRNNForward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features] with at least one feature",
    "h0 must be [batch, units] with the batch of x",
    "kernel must be [features, units] with the features of x and units >= 1",
    "recurrent_kernel must be [units, units] matching kernel",
    "bias must be [units] or empty (no bias)",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, units] matching x and kernel",
    "config must be int32 [6] with an activation code in 0..4",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))
_BACKWARD_ERRORS = messages("FastrnnSimpleRNNBackward", (
    "could not read an input (rank above 4?)",
    "x must have rank 3 [batch, time, features] with at least one feature",
    "kernel must be [features, units] and recurrent_kernel [units, units] (units >= 1)",
    "the saved states do not match x and the kernels",
    "d_out must be [batch, time, units] and d_h_last [batch, units]",
    "mask must be bool [batch, time] matching x",
    "recurrent_mask must be [batch, units] matching x and kernel",
    "config must be int32 [6] with an activation code in 0..4",
    "the time axis is empty: inputs need at least one step",
    "could not allocate an output",
    "the kernel raised an exception (out of memory?)",
))
_ALLOCATE_F, _ALLOCATE_B = 10, 9  # from here on, errors are INTERNAL

# Shape programs (ops/_capi.set_output_shapes): per output, pieces (input, start, end).
_FORWARD_SHAPES = np.array([
    [[0, 0, 2], [3, 0, 1]],    # out [B, T, H]
    [[0, 0, 1], [3, 0, 1]],    # h_last [B, H]
    [[-1, 0, 0], [-1, 0, 0]],  # states [T + 1, B, H]: unknown
], np.int64)
_BACKWARD_SHAPES = np.array([
    [[0, 0, 3]],   # dx like x
    [[8, 0, 2]],   # dh0 like d_h_last
    [[1, 0, 2]],   # d_kernel like kernel
    [[2, 0, 2]],   # d_recurrent_kernel like recurrent_kernel
    [[-1, 0, 0]],  # d_bias: unknown here (the layer sets it)
], np.int64)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _forward_shapes(ictx, status):
    set_output_shapes(ictx, status, _FORWARD_SHAPES)


@cfunc(KERNEL_SIGNATURE, cache=True)
def _backward_shapes(ictx, status):
    set_output_shapes(ictx, status, _BACKWARD_SHAPES)


_FORWARD_RANKS = np.array([3, 2, 3], np.int64)  # out, h_last, states


def kernels(dtype):
    """(forward, backward) cfuncs of the SimpleRNN ops for one dtype."""
    # Cold, these cfuncs compile here while a helper process compiles the cores
    # they call (kernels._abi: bound below, the helper's cores loaded, the others
    # compiled here).
    helper = _abi.aside_when_slow(
        ("simple_rnn_backward", "simple_rnn_forward", "prepare"), dtype)
    code = _capi.TF_DTYPE[np.dtype(dtype)]
    size = np.dtype(dtype).itemsize
    errors_f, errors_b = _FORWARD_ERRORS, _BACKWARD_ERRORS
    n_config, n_act = _N_CONFIG, _N_ACTIVATIONS

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def forward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(8, np.intp)
        outputs = np.zeros(3, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((8, MAX_DIMS), np.int64)
        ranks = np.zeros(8, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[7]) != TF_INT32 or ranks[7] != 1 or dims[7, 0] != n_config:
            error = 8
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[2, 1]
            config = carray(TF_TensorData(tensors[7]), n_config, np.int32)
            has_mask, has_bias, has_rmask = config[2] != 0, config[3] != 0, config[4] != 0
            bias_size = 1
            for d in range(ranks[4]):
                bias_size *= dims[4, d]
            if ranks[2] != 2 or units < 1 or not shape_is(dims, ranks, 2, inputs, units, -1):
                error = 3
            elif ranks[3] != 2 or not shape_is(dims, ranks, 3, units, units, -1):
                error = 4
            elif ranks[1] != 2 or not shape_is(dims, ranks, 1, batch, units, -1):
                error = 2
            elif (ranks[4] != 1 or dims[4, 0] != units) if has_bias else bias_size != 0:
                error = 5
            elif has_mask and (TF_TensorType(tensors[5]) != TF_BOOL or ranks[5] != 2
                               or not shape_is(dims, ranks, 5, batch, time, -1)):
                error = 6
            elif has_rmask and (ranks[6] != 2 or not shape_is(dims, ranks, 6, batch, units, -1)):
                error = 7
            elif config[1] < 0 or config[1] >= n_act:
                error = 8
            elif time == 0:
                error = 9
        if error < 0:
            shapes = np.zeros((3, 3), np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2] = batch, time, units
            shapes[1, 0], shapes[1, 1] = batch, units
            shapes[2, 0], shapes[2, 1], shapes[2, 2] = time + 1, batch, units
            if not (allocate_outputs(ctx, status, code, size, shapes, _FORWARD_RANKS, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else units, temps)):
                error = 10
        if error < 0 and batch > 0:
            bias_tensor = tensors[4] if has_bias else temps[3]  # zeros without a bias
            if not simple_rnn_cpu.run_forward(
                    carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype),
                    carray(TF_TensorData(tensors[1]), (batch, units), dtype),
                    carray(TF_TensorData(tensors[2]), (inputs, units), dtype),
                    carray(TF_TensorData(tensors[3]), (units, units), dtype),
                    carray(TF_TensorData(bias_tensor), units, dtype),
                    carray(TF_TensorData(tensors[5]), (batch if has_mask else 0,
                                                       time if has_mask else 0), np.bool_),
                    has_mask, config[0] != 0, np.int64(config[1]),
                    carray(TF_TensorData(tensors[6]), (batch if has_rmask else 0,
                                                       units if has_rmask else 0), dtype),
                    config[5] != 0,
                    carray(TF_TensorData(outputs[0]), (batch, time, units), dtype),
                    carray(TF_TensorData(outputs[1]), (batch, units), dtype),
                    carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype),
                    carray(TF_TensorData(outputs[2]), (time + 1, batch, units), dtype),
                    carray(TF_TensorData(temps[1]), (time, batch), np.bool_),
                    carray(TF_TensorData(temps[2]), batch, np.int64)):
                error = 11
        finish(ctx, status, error, 10, errors_f, tensors, outputs, temps)

    @cfunc(KERNEL_SIGNATURE, cache=True)
    def backward(state, ctx):
        blas_enter()
        status = _capi.TF_NewStatus()
        tensors = np.zeros(9, np.intp)
        outputs = np.zeros(5, np.intp)
        temps = np.zeros(4, np.intp)
        dims = np.zeros((9, MAX_DIMS), np.int64)
        ranks = np.zeros(9, np.int64)
        error = -1
        if not get_inputs(ctx, status, tensors, dims, ranks):
            error = 0
        elif ranks[0] != 3 or dims[0, 2] < 1:
            error = 1
        elif TF_TensorType(tensors[5]) != TF_INT32 or ranks[5] != 1 or dims[5, 0] != n_config:
            error = 7
        if error < 0:
            batch, time, inputs = dims[0, 0], dims[0, 1], dims[0, 2]
            units = dims[1, 1]
            config = carray(TF_TensorData(tensors[5]), n_config, np.int32)
            has_mask, has_bias, has_rmask = config[2] != 0, config[3] != 0, config[4] != 0
            if (ranks[1] != 2 or ranks[2] != 2 or units < 1
                    or not shape_is(dims, ranks, 1, inputs, units, -1)
                    or not shape_is(dims, ranks, 2, units, units, -1)):
                error = 2
            elif ranks[6] != 3 or not shape_is(dims, ranks, 6, time + 1, batch, units):
                error = 3
            elif (ranks[7] != 3 or ranks[8] != 2 or not shape_is(dims, ranks, 7, batch, time, units)
                  or not shape_is(dims, ranks, 8, batch, units, -1)):
                error = 4
            elif has_mask and (TF_TensorType(tensors[3]) != TF_BOOL or ranks[3] != 2
                               or not shape_is(dims, ranks, 3, batch, time, -1)):
                error = 5
            elif has_rmask and (ranks[4] != 2 or not shape_is(dims, ranks, 4, batch, units, -1)):
                error = 6
            elif config[1] < 0 or config[1] >= n_act:
                error = 7
            elif time == 0:
                error = 8
        if error < 0:
            shapes = np.zeros((5, 3), np.int64)
            out_ranks = np.zeros(5, np.int64)
            shapes[0, 0], shapes[0, 1], shapes[0, 2], out_ranks[0] = batch, time, inputs, 3
            shapes[1, 0], shapes[1, 1], out_ranks[1] = batch, units, 2
            shapes[2, 0], shapes[2, 1], out_ranks[2] = inputs, units, 2
            shapes[3, 0], shapes[3, 1], out_ranks[3] = units, units, 2
            shapes[4, 0], out_ranks[4] = units if has_bias else 0, 1
            if not (allocate_outputs(ctx, status, code, size, shapes, out_ranks, outputs)
                    and layout_scratch(ctx, status, code, size, batch, time, inputs,
                                       0 if has_bias else units, temps)):
                error = 9
        if error < 0 and batch == 0:  # no rows: the weight gradients are zeros
            zero_tensor(outputs[2], inputs * units * size)
            zero_tensor(outputs[3], units * units * size)
            zero_tensor(outputs[4], shapes[4, 0] * size)
        if error < 0 and batch > 0:
            x = carray(TF_TensorData(tensors[0]), (batch, time, inputs), dtype)
            mask = carray(TF_TensorData(tensors[3]), (batch if has_mask else 0,
                                                      time if has_mask else 0), np.bool_)
            x_tm = carray(TF_TensorData(temps[0]), (time, batch, inputs), dtype)
            mask_tm = carray(TF_TensorData(temps[1]), (time, batch), np.bool_)
            first = carray(TF_TensorData(temps[2]), batch, np.int64)
            dh = carray(TF_TensorData(outputs[1]), (batch, units), dtype)
            copy_2d(dh, carray(TF_TensorData(tensors[8]), (batch, units), dtype))
            go_backwards = config[0] != 0
            d_bias_tensor = outputs[4] if has_bias else temps[3]
            if not (run_prepare(x, mask, has_mask, go_backwards, x_tm, mask_tm, first)
                    and simple_rnn_cpu.run_backward(
                        x_tm, carray(TF_TensorData(tensors[6]), (time + 1, batch, units), dtype),
                        mask_tm, first,
                        carray(TF_TensorData(tensors[1]), (inputs, units), dtype),
                        carray(TF_TensorData(tensors[2]), (units, units), dtype),
                        carray(TF_TensorData(tensors[4]), (batch if has_rmask else 0,
                                                           units if has_rmask else 0), dtype),
                        carray(TF_TensorData(tensors[7]), (batch, time, units), dtype), dh,
                        go_backwards, np.int64(config[1]), config[5] != 0,
                        carray(TF_TensorData(outputs[0]), (batch, time, inputs), dtype),
                        carray(TF_TensorData(outputs[2]), (inputs, units), dtype),
                        carray(TF_TensorData(outputs[3]), (units, units), dtype),
                        carray(TF_TensorData(d_bias_tensor), units, dtype))):
                error = 10
        finish(ctx, status, error, 9, errors_b, tensors, outputs, temps)

    helper.cancel()
    _abi.ensure_all(("simple_rnn_forward", "simple_rnn_backward", "prepare"), dtype)
    return forward, backward


FORWARD = ("FastrnnSimpleRNNForward",
           ["x: T", "h0: T", "kernel: T", "recurrent_kernel: T", "bias: T", "mask: bool",
            "recurrent_mask: T", "config: int32"],
           ["out: T", "h_last: T", "states: T"],
           _forward_shapes)
BACKWARD = ("FastrnnSimpleRNNBackward",
            ["x: T", "kernel: T", "recurrent_kernel: T", "mask: bool", "recurrent_mask: T",
             "config: int32", "states: T", "d_out: T", "d_h_last: T"],
            ["dx: T", "dh0: T", "d_kernel: T", "d_recurrent_kernel: T", "d_bias: T"],
            _backward_shapes)


def call(x, h0, kernel, recurrent_kernel, bias, mask, *, act, go_backwards, recurrent_mask,
         max_parts):
    """SimpleRNN through FastrnnSimpleRNNForward/Backward. Returns (out, h_last).

    x, h0, kernel, recurrent_kernel, bias (or None) and recurrent_mask ([B, H] or None)
    are tensors of one float dtype; mask bool [B, T] or None; act an activation code
    (kernels._validate.ACTIVATIONS). h0 None means zeros."""
    import tensorflow as tf

    units = int(recurrent_kernel.shape[0])
    if h0 is None:
        h0 = tf.zeros(tf.stack([tf.shape(x)[0], units]), x.dtype)
    has_rmask = recurrent_mask is not None
    if not has_rmask:
        recurrent_mask = row_placeholder(x)
    config = [go_backwards, act, mask is not None, bias is not None, has_rmask, packed()]
    out, (h_last,) = recurrence("simple_rnn", x, [h0], [kernel, recurrent_kernel], bias, mask,
                                [recurrent_mask], config, units, units, max_parts, 1)
    return out, h_last
