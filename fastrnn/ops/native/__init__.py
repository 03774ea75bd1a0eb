"""The CPU kernels as native TensorFlow ops (the default CPU route of the layers).

Each cell has two ops, `Fastrnn<Cell>Forward` and `Fastrnn<Cell>Backward`, typed
`T: {float, double}`; their kernels are Numba cfuncs (ops/_capi.py) that read the
TF tensors, check what only the run time knows (batch, time, consistency of the
inputs), allocate the outputs through TensorFlow and call the cell's nopython
core, the same code `fastrnn.kernels.*` calls. What the forward saves for the
backward is forward outputs that become backward inputs: TensorFlow owns them.

Non-tensor settings (go_backwards, activations, reset_after, whether there is a
mask or a bias, the packed product) travel as one small int32 `config` input.

An op and its kernel for a dtype are registered at the first call that needs
them; the kernel's cfunc is compiled then (or loaded from Numba's cache).
"""

import re
import sys
import threading

import numpy as np

from fastrnn.kernels import _microgemm

from .. import _capi

# The kernels link against the C API by symbol name: bind it before any cfunc below
# is compiled or loaded. Raises _capi.Unavailable where the route cannot be set up.
_capi.calls()

import tensorflow as tf  # noqa: E402 - loaded by _capi.calls() already

# Registration compiles cfuncs: autograph must not convert what runs it when a
# tf.function calls these directly.
_plain = tf.autograph.experimental.do_not_convert

_lock = threading.RLock()

# ------------------------------------------------------------- registration --

_T = "T: {float, double}"
# cell -> module with FORWARD and BACKWARD (name, inputs, outputs, shape cfunc) and
# kernels(dtype) -> (forward cfunc, backward cfunc); imported on first use.
CELLS = ("gru", "simple_rnn", "lstm", "mingru")


def _cell_module(cell):
    import importlib

    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    return importlib.import_module(f"{__name__}._{cell}")


_registered = {}   # (cell, dtype name) -> True
_wrappers = {}     # cell -> module of generated Python functions
# A cold compile of one cell's kernels for one dtype takes several seconds (cached
# on disk afterwards): say so once it has run this long.
COMPILE_NOTICE_S = 1.0


def _compile_notice(cell, dtype):
    print(f"fastrnn: compiling the native {cell} {dtype} kernels for TensorFlow "
          "(about 10-30 s, once; cached on disk afterwards)...", file=sys.stderr, flush=True)


@_plain
def ops(cell, dtype, **variant):
    """The generated op functions of `cell`, its kernels for `dtype` registered
    (compiled or loaded from cache on the first call). `variant`: the variant of the
    cell's cores the caller runs, bound before this returns (GRU: reset_after=...,
    True when not given; its two variants have cores of their own, compiled when
    first asked for)."""
    dtype = np.dtype(dtype)
    key = (cell, dtype.name)
    if key not in _registered:
        _register(cell, dtype, variant)
    prepare = getattr(_cell_module(cell), "prepare", None)
    if prepare is not None:
        prepare(dtype.type, **variant)
    return _wrappers[cell]


def _register(cell, dtype, variant):
    key = (cell, dtype.name)
    with _lock:
        if key in _registered:
            return
        spec = _cell_module(cell)
        for name, inputs, outputs, shape_fn in (spec.FORWARD, spec.BACKWARD):
            _capi.register_op(name, inputs, outputs, [_T], shape_fn)
        if cell not in _wrappers:
            _wrappers[cell] = _capi.python_wrappers(
                [spec.FORWARD[0], spec.BACKWARD[0]], f"fastrnn.ops._gen_{cell}")
        timer = threading.Timer(COMPILE_NOTICE_S, _compile_notice, (cell, dtype.name))
        timer.daemon = True
        timer.start()
        try:
            forward, backward = spec.kernels(dtype.type, **variant)
        finally:
            timer.cancel()
        _capi.register_kernel(spec.FORWARD[0], forward, _capi.TF_DTYPE[dtype])
        _capi.register_kernel(spec.BACKWARD[0], backward, _capi.TF_DTYPE[dtype])
        _register_gradient(spec, _wrappers[cell])
        _registered[key] = True


def _register_gradient(spec, gen):
    """The forward op's gradient in TensorFlow's registry: the backward op on the
    forward op's saved outputs. The layers differentiate through tf.custom_gradient
    (recurrence below); this serves a forward built while no tape could record (a
    tf.function traced for inference) that is differentiated after all."""
    import tensorflow as tf

    name, inputs, outputs, _ = spec.FORWARD
    names = [i.split(":")[0] for i in inputs]
    n_states = names.index("kernel") - 1
    n_weights = names.index("bias") - names.index("kernel")
    n_aux = names.index("config") - names.index("mask") - 1
    backward_op = getattr(gen, python_name(spec.BACKWARD[0]))

    def gradient(op, d_out, *d_rest):
        x = op.inputs[0]
        weights = list(op.inputs[1 + n_states:1 + n_states + n_weights])
        mask_at = names.index("mask")
        mask, aux, config = (op.inputs[mask_at], list(op.inputs[mask_at + 1:mask_at + 1 + n_aux]),
                             op.inputs[names.index("config")])
        results = list(op.outputs)
        d_states = [tf.zeros_like(results[1 + i]) if d is None else d
                    for i, d in enumerate(d_rest[:n_states])]
        if d_out is None:
            d_out = tf.zeros_like(results[0])
        grads = backward_op(x, *weights, mask, *aux, config, *results[1 + n_states:], d_out,
                            *d_states)
        return list(grads) + [None] * (1 + n_aux + 1)

    try:
        tf.RegisterGradient(name)(gradient)
    except KeyError:  # registered by an earlier import of this module
        pass


def python_name(op):
    """The generated Python function of op `op`: TensorFlow's snake case of its name
    (FastrnnGRUForward -> fastrnn_gru_forward, FastrnnMinGRUForward ->
    fastrnn_min_gru_forward)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", op).lower()


def packed():
    """Whether the ops' per-step product uses the packed one-core micro-kernel
    (one BLAS thread inside an op: the graph runs the parallel parts)."""
    return bool(_microgemm.ENABLED)


# ------------------------------------------------------------- the TF side --


def row_placeholder(x):
    """A [B, 0] tensor standing for an absent per-row input (a recurrent dropout mask):
    it splits with the batch like a real one (B from the run time where it is not known
    statically: the split is then planned there)."""
    import tensorflow as tf

    batch = x.shape[0] if x.shape.rank is not None else None
    return tf.zeros((batch, 0) if batch is not None else tf.stack([tf.shape(x)[0], 0]), x.dtype)


def _static_batch(x):
    return x.shape[0] if x.shape.rank is not None else None


# A call splits into one op per core from a quarter of the direct kernels' SMALL_WORK
# (kernels._parts.work): where they stop holding OpenBLAS at one thread
# (ONE_THREAD_WORK). An op holds the BLAS at one thread, so a second op is its only
# way onto a second core. Training steps measured here (2-core EPYC, float32,
# Input -> layer -> Dense(1), medians of interleaved runs, one op against two):
# SimpleRNN(150) B128 T17 I100 (work 0.61 SMALL_WORK) 9.3-10.3 against 6.6-8.1 ms
# (Keras 7.3-8.5: one op was slower than Keras), B64 (0.30) 5.0-5.8 against 4.4-4.6,
# B32 (0.15) 3.8-4.1 against 3.3-3.4; but LSTM(45) B32 T15 I1 (0.12) 2.1-2.3 against
# 2.4-2.5 ms, its 16-row parts too small for the per-step product.
SPLIT_FRACTION = 4


def plan_parts(x, width, max_parts):
    """How many batch parts a call on x splits into: 1 unless the batch is known
    statically and the work is at least SMALL_WORK / SPLIT_FRACTION; then one per
    core (max_parts), each with at least kernels._parts.MIN_ROWS rows. None when
    the batch or time is known only at run time (plan_sizes then plans in the graph)."""
    from fastrnn.kernels import _parts

    batch, time, features = (x.shape.as_list() + [None] * 3)[:3]
    if max_parts < 2:
        return 1
    if None in (batch, time, features):
        return None
    if _parts.work(batch, time, features, width) < _parts.SMALL_WORK // SPLIT_FRACTION:
        return 1
    return max(1, min(max_parts, batch // _parts.MIN_ROWS))


def plan_sizes(x, features, width, max_parts):
    """The rows of each of max_parts parts as an int32 [max_parts] tensor computed at
    run time, for a batch (or time) known only then: the split plan_parts would
    choose for that batch, its unused parts empty.

    `model.fit` traces its step with batch None whenever the data is not a whole
    number of batches or comes from a tf.data pipeline without drop_remainder, so
    this is the plan of most real fits. The parts a batch does not need get no rows;
    an op on an empty batch returns empty outputs and zero weight gradients, for a
    few microseconds (its part costs far less than a tf.cond of two graphs would).
    """
    import tensorflow as tf

    from fastrnn.kernels import _parts

    shape = tf.shape(x, out_type=tf.int64)
    batch, time = shape[0], shape[1]
    per_row_step = width * (features + width)   # work() of one row and one step
    big = batch * time * per_row_step >= _parts.SMALL_WORK // SPLIT_FRACTION
    n = tf.where(big, tf.clip_by_value(batch // _parts.MIN_ROWS, 1, max_parts),
                 tf.constant(1, tf.int64))
    # edges as _parts.slices(batch, n) makes them, and batch for every part past n.
    edges = batch * tf.minimum(tf.range(max_parts + 1, dtype=tf.int64), n) // n
    return tf.cast(edges[1:] - edges[:-1], tf.int32)


@_plain
def recurrence(cell, x, states0, weights, bias, mask, aux, config, units, width, max_parts,
               n_saved, variant=None):
    """Differentiable (out [B, T, H], [final states]) through the cell's native ops.

    x, states0, weights (kernel[, recurrent_kernel]) and bias (or None) are tensors
    of one float dtype (float32 or float64); mask bool [B, T] or None; aux per-row
    tensors the ops take after the mask (SimpleRNN's recurrent dropout mask);
    config the int32 settings. Forward op: (x, *states0, *weights, bias, mask,
    *aux, config) -> (out, *states, *saved). Backward op: (x, *weights, mask, *aux,
    config, *saved, d_out, *d_states) -> (dx, *d_states0, *d_weights, d_bias).
    Large calls run as one op per batch part (TensorFlow's threads run them in
    parallel); their weight gradients are added in the graph.
    """
    import tensorflow as tf
    from tensorflow.python.eager import record

    from fastrnn.kernels import _parts

    gen = ops(cell, x.dtype.as_numpy_dtype, **(variant or {}))
    spec = _cell_module(cell)
    forward_op = getattr(gen, python_name(spec.FORWARD[0]))
    backward_op = getattr(gen, python_name(spec.BACKWARD[0]))
    dtype = x.dtype
    n_states = len(states0)
    has_bias = bias is not None
    bias_t = bias if has_bias else tf.zeros((0,), dtype)
    mask_t = tf.cast(mask, tf.bool) if mask is not None else tf.zeros((0, 0), tf.bool)
    config_t = tf.constant(np.asarray(config, np.int32))
    parts = plan_parts(x, width, max_parts)
    if parts is None:   # batch or time known only at run time: plan in the graph
        parts = max_parts
        sizes = plan_sizes(x, int(weights[0].shape[0]), width, max_parts)
    elif parts > 1:
        sizes = [s.stop - s.start for s in _parts.slices(int(x.shape[0]), parts)]
    if parts > 1:
        def split(t, always=True):
            if t is None or (not always and mask is None):
                return [t] * parts
            return tf.split(t, sizes, num=parts, axis=0)
    else:
        def split(t, always=True):
            return [t]

    def forward(x_, states_, weights_, bias_):
        xs, masks = split(x_), split(mask_t, always=False)
        states_p = [split(s) for s in states_]
        aux_p = [split(a) for a in aux]
        results = []
        for i in range(parts):
            results.append(forward_op(xs[i], *[s[i] for s in states_p], *weights_, bias_,
                                      masks[i], *[a[i] for a in aux_p], config_t))
        if parts == 1:
            joined = list(results[0][:1 + n_states])
        else:
            joined = [tf.concat([r[k] for r in results], 0) for k in range(1 + n_states)]
        saved = [list(r[1 + n_states:]) for r in results]
        joined[0].set_shape(x_.shape[:2].concatenate([units]))
        for s in joined[1:]:
            s.set_shape(x_.shape[:1].concatenate([units]))
        return joined, saved, xs, masks, aux_p

    if not record.could_possibly_record():
        joined, _, _, _, _ = forward(x, states0, weights, bias_t)
        return joined[0], joined[1:]

    @tf.custom_gradient
    def op(x_, *rest):
        states_, rest = list(rest[:n_states]), rest[n_states:]
        weights_ = list(rest[:len(weights)])
        bias_ = rest[len(weights)] if has_bias else bias_t
        joined, saved, xs, masks, aux_p = forward(x_, states_, weights_, bias_)

        def grad(d_out, *d_states):
            d_states = [tf.zeros_like(s) if d is None else d for d, s in zip(d_states, joined[1:])]
            if d_out is None:
                d_out = tf.zeros_like(joined[0])
            d_outs = split(d_out)
            d_states_p = [split(d) for d in d_states]
            grads = []
            for i in range(parts):
                grads.append(backward_op(xs[i], *weights_, masks[i], *[a[i] for a in aux_p],
                                         config_t, *saved[i], d_outs[i],
                                         *[d[i] for d in d_states_p]))
            if parts == 1:
                g = list(grads[0])
            else:
                g = ([tf.concat([r[k] for r in grads], 0) for k in range(1 + n_states)]
                     + [tf.add_n([r[k] for r in grads]) for k in range(1 + n_states, len(grads[0]))])
            g[0].set_shape(x_.shape)
            for d, s in zip(g[1:1 + n_states], states_):
                d.set_shape(s.shape)
            for d, w in zip(g[1 + n_states:], weights_ + ([bias_] if has_bias else [])):
                d.set_shape(w.shape)
            return g[:1 + n_states + len(weights)] + ([g[-1]] if has_bias else [])

        return (joined[0], *joined[1:]), grad

    out, *states = op(x, *states0, *weights, *([bias] if has_bias else []))
    return out, states


@_plain
def gru(*args, **kwargs):
    return _cell_module("gru").call(*args, **kwargs)


@_plain
def simple_rnn(*args, **kwargs):
    return _cell_module("simple_rnn").call(*args, **kwargs)


@_plain
def lstm(*args, **kwargs):
    return _cell_module("lstm").call(*args, **kwargs)


@_plain
def mingru(*args, **kwargs):
    return _cell_module("mingru").call(*args, **kwargs)
