"""The one op shell (ops/native/_shell.py) on every cell's description: programs that
fill exactly the arguments each core reads, every bad input a TF error naming the
op, the input and the shape it got, static shapes where the batch is unknown."""

import re

import numpy as np
import pytest
import tensorflow as tf

native = pytest.importorskip("fastrnn.ops.native", reason="the C API route cannot be set up")

from fastrnn.kernels.runtime import abi as _abi  # noqa: E402
from fastrnn.ops.native import _shell  # noqa: E402
from fastrnn.ops.native.cells import CELLS  # noqa: E402

SIZES = {"B": 3, "T": 4, "I": 2, "H": 5}
OPS = [(cell, key) for cell in CELLS for key in ("forward", "backward")]


def config_of(spec, **values):
    """The config array with every flag that makes an input checked set."""
    settings = {"reset_after": 1, "act": 0, "ract": 1, "has_mask": 1, "has_recurrent_mask": 1}
    settings.update(values)
    return np.array([settings.get(name, 0) for name in spec["config"]], np.int32)


def value(name, shape, config_values):
    known = dict(SIZES, **config_values, R=config_values.get("reset_after", 0) + 1)
    dims = _shell.static_shape(shape, known)
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    if name == "mask":
        return np.ones(dims, bool)
    return (rng.standard_normal(dims) * 0.3).astype(np.float32)


def valid_inputs(cell, key):
    """Inputs of op `key` of cell that pass every check (the backward's saved ones
    from a forward run)."""
    spec = CELLS[cell]
    config = config_of(spec)
    names = dict(zip(spec["config"], config.tolist()))
    forward = {n: value(n, shape, names) for n, shape, _ in spec["forward"]["inputs"]
               if n != "config"}
    forward["config"] = config
    gen = native.ops(cell, np.float32)
    op = getattr(gen, native.python_name(spec["forward"]["name"]))
    results = op(*[forward[n] for n, _, _ in spec["forward"]["inputs"]])
    if key == "forward":
        return forward
    values = dict(forward)
    values.update(zip([n for n, _, _ in spec["forward"]["outputs"]], results))
    for n, shape, _ in spec["backward"]["inputs"]:
        if n not in values:
            values[n] = value(n, shape, names)
    return {n: values[n] for n, _, _ in spec["backward"]["inputs"]}


def run(cell, key, inputs):
    spec = CELLS[cell]
    op = getattr(native.ops(cell, np.float32), native.python_name(spec[key]["name"]))
    return op(*[inputs[n] for n, _, _ in spec[key]["inputs"]])


@pytest.mark.parametrize("cell,key", OPS)
def test_every_call_fills_the_arguments_its_core_reads(cell, key):
    spec = CELLS[cell]
    native.ops(cell, np.float32)  # imports the kernels module: the cores are registered
    _, _, slots = _shell.compile_op(spec, spec[key])
    assert slots and all(slots[core] == _abi.ARGS[core] for core in slots)


@pytest.mark.parametrize("cell,key", OPS)
def test_every_bad_input_is_a_tf_error_naming_the_op_and_the_input(cell, key):
    spec, inputs = CELLS[cell], valid_inputs(cell, "forward")
    inputs = valid_inputs(cell, key)
    name = spec[key]["name"]
    results = run(cell, key, inputs)
    assert len(results) == len(spec[key]["outputs"])
    for n, shape, _ in spec[key]["inputs"]:
        if n == "config":
            continue
        bad = inputs[n][..., None]   # a rank too many: this input is named
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            run(cell, key, dict(inputs, **{n: bad}))
        message = error.value.message
        got = ", ".join(str(d) for d in bad.shape)
        assert f"{name}: {n} must have rank {len(shape.split(','))}" in message, message
        assert f"(got [{got}])" in message, message
        # twice the rows: this input, or one whose sizes it disagrees with, is named,
        # with the sizes bound so far
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            run(cell, key, dict(inputs, **{n: np.concatenate([inputs[n]] * 2, axis=0)}))
        message = error.value.message
        assert re.search(rf"{name}: \w+ must be \[.*\(got \[[\d, ]*\]; B=\d+, T=\d+", message), message
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{name}: config must be int32"):
        run(cell, key, dict(inputs, config=inputs["config"][:-1]))
    for entry, (lo, hi) in spec["ranges"].items():
        config = inputs["config"].copy()
        config[spec["config"].index(entry)] = hi + 1
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=re.escape(f"{name}: config {entry} must be in {lo}..{hi}")):
            run(cell, key, dict(inputs, config=config))


@pytest.mark.parametrize("cell", CELLS)
def test_an_empty_time_axis_is_a_tf_error(cell):
    inputs = valid_inputs(cell, "forward")
    short = {n: (v[:, :0] if n in ("x", "mask") else v) for n, v in inputs.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="time axis is empty"):
        run(cell, "forward", short)


def test_a_program_attr_out_of_range_is_a_tf_error():
    spec = CELLS["gru"]
    inputs = valid_inputs("gru", "forward")
    op = native.ops("gru", np.float32).fastrnn_gru_forward
    with pytest.raises(tf.errors.InternalError, match="no program for this op"):
        op(*[inputs[n] for n, _, _ in spec["forward"]["inputs"]], program=99)


@pytest.mark.parametrize("cell", CELLS)
def test_static_shapes_with_an_unknown_batch(cell):
    # The ops' shape function leaves shapes unknown; native.<cell> sets what it
    # knows (here all but the batch) on what it returns and on the gradients.
    spec = CELLS[cell]
    inputs = valid_inputs(cell, "forward")
    order = ["x", *spec["states"], *spec["weights"], "bias", "mask"]
    config = dict(zip(spec["config"], config_of(spec).tolist()))
    settings = {k: v for k, v in config.items()
                if k not in ("has_mask", "has_recurrent_mask", "packed")}
    B, T, I, H = (SIZES[k] for k in "BTIH")
    static = {}

    @tf.function(input_signature=[tf.TensorSpec([None, T, I], tf.float32)])
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            rows = [tf.tile(tf.constant(inputs[n][:1]), [tf.shape(x)[0]] + [1] * (inputs[n].ndim - 1))
                    for n in ("recurrent_mask",) if n in inputs]
            states = [tf.tile(tf.constant(inputs[n][:1]), [tf.shape(x)[0], 1]) for n in spec["states"]]
            args = [x, *states, *[inputs[n] for n in order[1 + len(states):-1]],
                    tf.ones(tf.shape(x)[:2], tf.bool)]
            results = getattr(native, cell)(*args, max_parts=2, **settings,
                                            **({"recurrent_mask": rows[0]} if rows else {}))
            loss = tf.add_n([tf.reduce_sum(r) for r in results])
        static["results"] = [r.shape.as_list() for r in results]
        static["dx"] = tape.gradient(loss, x).shape.as_list()
        return results

    results = fn(inputs["x"])
    assert static["results"] == [[None, T, H]] + [[None, H]] * len(spec["states"])
    assert static["dx"] == [None, T, I]
    assert [tuple(r.shape) for r in results] == [(B, T, H)] + [(B, H)] * len(spec["states"])
