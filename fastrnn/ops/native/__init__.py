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

from fastrnn.kernels.blas import microgemm as _microgemm

from .. import _capi

# The kernels link against the C API by symbol name: bind it before any cfunc below
# is compiled or loaded. Raises _capi.Unavailable where the route cannot be set up.
_capi.calls()

import tensorflow as tf  # noqa: E402 - loaded by _capi.calls() already

# Registration compiles cfuncs: autograph must not convert what runs it when a
# tf.function calls these directly.
_plain = tf.autograph.experimental.do_not_convert

_T = "T: {float, double}"
_lock = threading.RLock()
_registered = {}   # (cell, dtype name, cores) -> True
_wrappers = {}     # cell -> module of generated Python functions
# A cold compile of the op kernel and a cell's cores takes seconds (cached on disk
# afterwards): say so once it has run this long.
COMPILE_NOTICE_S = 1.0


def cell(name):
    """The description of cell `name` (native/cells.py)."""
    from .cells import CELLS

    if name not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}, got {name!r}")
    return CELLS[name]


def _compile_notice(name, dtype):
    print(f"fastrnn: compiling the native {name} {dtype} kernels for TensorFlow "
          "(several seconds, once; cached on disk afterwards)...", file=sys.stderr, flush=True)


@_plain
def ops(name, dtype, **variant):
    """The generated op functions of cell `name`, its ops registered for `dtype` and
    the cores of `variant` bound (compiled or loaded from cache on first use). The
    variant: GRU's reset_after (True when not given); the other cells have one."""
    dtype = np.dtype(dtype)
    spec = cell(name)
    key = spec.get("variant")
    cores = spec["cores"][None if key is None else int(bool(variant.get(key, True)))]
    if (name, dtype.name, cores) not in _registered:
        _register(spec, dtype, cores)
    return _wrappers[name]


def _register(spec, dtype, cores):
    import importlib

    from fastrnn.kernels.runtime import abi as _abi

    with _lock:
        if (spec["name"], dtype.name, cores) in _registered:
            return
        importlib.import_module(spec["module"])   # registers the cores' factories
        timer = threading.Timer(COMPILE_NOTICE_S, _compile_notice, (spec["name"], dtype.name))
        timer.daemon = True
        timer.start()
        # Cold, the op kernel compiles here while a helper process compiles the cores.
        helper = _abi.aside_when_slow(cores, dtype)
        try:
            from . import _shell   # compiles (or loads) the one op kernel
            helper.cancel()
            _abi.ensure_all(cores[::-1], dtype)
        finally:
            timer.cancel()
            helper.cancel()
        code = _capi.TF_DTYPE[dtype]
        for op in (spec["forward"], spec["backward"]):
            program = _shell.install(spec, op)
            inputs = [f"{n}: {_shell.input_type(n)}" for n, _, _ in op["inputs"]]
            outputs = [f"{n}: T" for n, _, _ in op["outputs"]]
            _capi.register_op(op["name"], inputs, outputs,
                              [_T, f"program: int = {program}"], _shell.unknown_shapes)
            _capi.register_kernel(op["name"], _shell.compute, code, _shell.create)
        if spec["name"] not in _wrappers:
            _wrappers[spec["name"]] = _capi.python_wrappers(
                [spec["forward"]["name"], spec["backward"]["name"]],
                f"fastrnn.ops._gen_{spec['name']}")
            _register_gradient(spec)
        _registered[(spec["name"], dtype.name, cores)] = True


def _op_function(name, op):
    return getattr(_wrappers[name], python_name(op["name"]))


def _register_gradient(spec):
    """The forward op's gradient in TensorFlow's registry: the backward op on the
    forward op's saved outputs. The layers differentiate through tf.custom_gradient
    (recurrence below); this serves a forward built while no tape could record (a
    tf.function traced for inference) that is differentiated after all."""
    import tensorflow as tf

    forward, backward = spec["forward"], spec["backward"]
    names = [n for n, _, _ in forward["inputs"]]
    outputs = [n for n, _, _ in forward["outputs"]]

    def gradient(op, *d_outputs):
        values = dict(zip(names, op.inputs))
        values.update(zip(outputs, op.outputs))
        for out, d in zip(spec["returns"], d_outputs):
            values["d_" + out] = tf.zeros_like(values[out]) if d is None else d
        grads = dict(zip((n for n, _, _ in backward["outputs"]),
                         _op_function(spec["name"], backward)(
                             *[values[n] for n, _, _ in backward["inputs"]])))
        return [grads.get(_gradient_name(n)) for n in names]

    try:
        tf.RegisterGradient(forward["name"])(gradient)
    except KeyError:  # registered by an earlier import of this module
        pass


def _gradient_name(name):
    """The backward output holding the gradient of forward input `name`."""
    return {"x": "dx", "h0": "dh0", "c0": "dc0"}.get(name, "d_" + name)


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

# A call splits into one op per core from a quarter of the direct kernels' SMALL_WORK
# (kernels.batch.parts.work): where they stop holding OpenBLAS at one thread
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
    core (max_parts), each with at least kernels.batch.parts.MIN_ROWS rows. None when
    the batch or time is known only at run time (plan_sizes then plans in the graph)."""
    from fastrnn.kernels.batch import parts as _parts

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

    from fastrnn.kernels.batch import parts as _parts

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
def call(name, tensors, config, max_parts):
    """Differentiable (out [B, T, H], *final states) of cell `name` through its ops.

    tensors: the forward op's inputs by name (native/cells.py), of one float dtype
    (float32 or float64): x, the states (None: zeros), the weights, bias (None: no
    bias), mask (bool [B, T] or None), recurrent_mask (or None). config: the cell's
    settings by name; has_mask, has_recurrent_mask and packed are filled in here.
    Large calls run as one op per batch part (TensorFlow's threads run them in
    parallel); their weight gradients are added in the graph.
    """
    import tensorflow as tf
    from tensorflow.python.eager import record

    spec = cell(name)
    forward = spec["forward"]
    tensors = {n: None if t is None else tf.convert_to_tensor(t) for n, t in tensors.items()}
    x = tensors["x"]
    key = spec.get("variant")
    ops(name, x.dtype.as_numpy_dtype, **({key: config[key]} if key else {}))
    config = dict(config, has_mask=tensors.get("mask") is not None, packed=packed(),
                  has_recurrent_mask=tensors.get("recurrent_mask") is not None)
    known = _known(spec, tensors, config)
    inputs = _inputs(spec, tensors, config, known)
    has_bias = tensors.get("bias") is not None
    diff = ["x", *spec["states"], *spec["weights"]] + (["bias"] if has_bias else [])
    width = int(tensors[spec["weights"][-1]].shape[-1])
    split, parts = _splitter(x, int(tensors[spec["weights"][0]].shape[0]), width, max_parts)
    rows = {n for n, shape, when in forward["inputs"]
            if shape.startswith("B,") and (not when or config[when])}

    def run(values):
        pieces = {n: split(t) if n in rows else [t] * parts for n, t in dict(inputs, **values).items()}
        results = [dict(zip([n for n, _, _ in forward["outputs"]], _op_function(name, forward)(
            *[pieces[n][i] for n, _, _ in forward["inputs"]]))) for i in range(parts)]
        joined = [_join([r[n] for r in results]) for n in spec["returns"]]
        for t, (n, shape, _) in zip(joined, forward["outputs"]):
            t.set_shape(_shell_shape(shape, known))
        return joined, pieces, results

    if not record.could_possibly_record():
        return tuple(run({})[0])

    @tf.custom_gradient
    def op(*values):
        values = dict(zip(diff, values))
        if has_bias:
            values["bias"] = tf.reshape(values["bias"], _shell_shape(_shape(forward, "bias"), known))
        joined, pieces, results = run(values)

        def grad(*d_returns):
            return _gradients(name, split, parts, (joined, pieces, results), d_returns, diff,
                              {n: tensors[n] if n == "bias" else inputs[n] for n in diff})

        return tuple(joined), grad

    return tuple(op(*[tensors[n] if n == "bias" else inputs[n] for n in diff]))


def _gradients(name, split, parts, forward, d_returns, diff, originals):
    """The gradients of `diff` (forward inputs, as `originals`) through the backward
    op, one per batch part: batch-dim gradients joined, weight gradients added."""
    import tensorflow as tf

    spec = cell(name)
    backward = spec["backward"]
    joined, pieces, results = forward
    d = {"d_" + n: split(tf.zeros_like(j) if g is None else g)
         for n, j, g in zip(spec["returns"], joined, d_returns)}
    names = [n for n, _, _ in backward["outputs"]]
    per_part = [dict(zip(names, _op_function(name, backward)(*[
        d[n][i] if n in d else results[i][n] if n in results[i] else pieces[n][i]
        for n, _, _ in backward["inputs"]]))) for i in range(parts)]
    grads = []
    for n in diff:
        g = _gradient_name(n)
        batch_dim = _shape(backward, g, "outputs").startswith("B,")
        total = _join([r[g] for r in per_part]) if batch_dim else tf.add_n([r[g] for r in per_part])
        grads.append(tf.reshape(total, tf.shape(originals[n])) if n == "bias" else total)
        grads[-1].set_shape(originals[n].shape)
    return grads


def _shape(op, name, key="inputs"):
    return next(shape for n, shape, _ in op[key] if n == name)


def _shell_shape(shape, known):
    from ._shell import static_shape

    return static_shape(shape, known)


def _known(spec, tensors, config):
    """The cell's sizes known statically (name -> int or None)."""
    known = {k: int(v) for k, v in config.items()}
    for n, shape, _ in spec["forward"]["inputs"]:
        t = tensors.get(n)
        if t is not None and t.shape.rank == len(shape.split(",")):
            for term, dim in zip(shape.split(","), t.shape.as_list()):
                if term.isidentifier() and dim is not None and known.get(term) is None:
                    known[term] = dim
    from ._shell import _TERM, _evaluate

    for name, spec_ in {**spec["forward"].get("sizes", {}), **spec["sizes"]}.items():
        if known.get(name) is None and _TERM.match(spec_.replace(" ", "")):
            known[name] = _evaluate(spec_, known)
    return known


def _inputs(spec, tensors, config, known):
    """Every forward input as the op takes it: placeholders for absent ones (their
    configs say so), zeros for absent states and bias, the bias in the op's shape."""
    import tensorflow as tf

    x = tensors["x"]
    inputs = {}
    for n, shape, _ in spec["forward"]["inputs"]:
        t = tensors.get(n)
        if n == "config":
            t = tf.constant(np.array([int(config[c]) for c in spec["config"]], np.int32))
        elif n == "mask":
            t = tf.zeros((0, 0), tf.bool) if t is None else tf.cast(t, tf.bool)
        elif n == "recurrent_mask" and t is None:
            t = tf.zeros((0, 0), x.dtype)
        elif n == "bias":   # in the op's shape (GRU reset_after=False: [3H] -> [1, 3H])
            t = (tf.zeros(_shell_shape(shape, known), x.dtype) if t is None
                 else tf.reshape(t, _shell_shape(shape, known)))
        elif t is None:   # an initial state: zeros
            t = tf.zeros(tf.stack([tf.shape(x)[0], known["H"]]), x.dtype)
        inputs[n] = t
    return inputs


def _splitter(x, features, width, max_parts):
    """(split(t) -> [parts of t along the batch], parts) for a call on x."""
    import tensorflow as tf

    from fastrnn.kernels.batch import parts as _parts

    parts = plan_parts(x, width, max_parts)
    if parts is None:   # batch or time known only at run time: plan in the graph
        parts, sizes = max_parts, plan_sizes(x, features, width, max_parts)
    elif parts > 1:
        sizes = [s.stop - s.start for s in _parts.slices(int(x.shape[0]), parts)]
    if parts == 1:
        return (lambda t: [t]), 1
    return (lambda t: tf.split(t, sizes, num=parts, axis=0)), parts


def _join(pieces):
    import tensorflow as tf

    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, 0)


def _cell_function(name):
    """native.<cell>(x, *states, *weights, bias, mask, *, max_parts, recurrent_mask=None,
    **config) -> (out, *final states): `call` with the forward's inputs in order."""
    spec = cell(name)
    order = ["x", *spec["states"], *spec["weights"], "bias", "mask"]

    @_plain
    def function(*args, max_parts, recurrent_mask=None, **config):
        tensors = dict(zip(order, args), recurrent_mask=recurrent_mask)
        return call(name, tensors, config, max_parts)

    function.__name__ = function.__qualname__ = name
    return function


gru, simple_rnn, lstm, mingru = (_cell_function(n) for n in ("gru", "simple_rnn", "lstm", "mingru"))
