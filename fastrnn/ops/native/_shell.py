"""One op kernel for every cell: a cell's ops are programs (data), run by one cfunc.

A cell's description (native/cells.py) names each op's inputs, outputs and scratch
with their shapes in sizes (B, T, I, H, ...), and the cores the op calls with their
int64 arguments (kernels.runtime.abi). `compile_op` turns an op's description into a
program, an int64 [rows, 10] array; `compute` (the TensorFlow kernel of every op
and dtype) runs it:

1. read the inputs; bind the sizes (input dims, config entries, sums and products);
   check every input's rank and shape, and the config's ranges;
2. allocate the outputs and scratch from TensorFlow (TF_AllocateOutput/Temp);
3. copy inputs into outputs where a core updates in place (dh = d_h_last);
4. fill each core's int64 arguments straight from the tensors' addresses and dims
   and the sizes, and call the core through its table slot; on an empty batch the
   outputs are zeros and no core runs.

A failure is a TensorFlow error naming the op, the input and its shape; nothing
in `compute` raises. The op's `program` attr (its index in PROGRAMS) is read once
per kernel instance by `create`, which returns the program's address as the
kernel's state. The programs live in this process (kept in `_programs`); a program
is the same for float32 and float64 (the core's slot and the item size are read
from x's dtype), so the two cfuncs below are compiled once for every cell.
"""

import re

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.runtime import abi as _abi
from fastrnn.kernels.runtime.abi import address_to_pointer

from .. import _capi
from .._capi import (INTERNAL, INVALID_ARGUMENT, KERNEL_SIGNATURE, MAX_DIMS, TF_BOOL, TF_DOUBLE,
                     TF_FLOAT, TF_INT64, TF_TensorData, TF_TensorType, allocate, blas_enter,
                     blas_leave, delete_tensors, get_input, scratch, zero_tensor)

# Row kinds (column 0) and what the other columns hold.
HEAD = 0    # rows, inputs, outputs, temps, skip size, text address, messages' row, text length
RANK = 1    # array, rank, message
BIND = 2    # size, how (below), a, b, c
SHAPE = 3   # array, rank, message, when, d0, d1, d2, d3 (sizes; -1 any)
RANGE = 4   # size, lo, hi, message
OUTPUT = 5  # array, dtype (0 the op's T, 1 bool, 2 int64), rank, d0, d1, d2
TEMP = 6    # as OUTPUT
COPY = 7    # from array, to array
CALL = 8    # core, when, slots
ITEM = 9    # how (below), a, b, c, d, e: one or four int64 arguments of the CALL above
MESSAGE = 10  # offset, length: message k is row k of these, after the steps
LEGEND = 11   # letter, size: the sizes a shape error lists ("B=32, T=15, ...")
# Messages 0-2 of every program (INTERNAL from 1 on; the op's own, INVALID_ARGUMENT).
READ, ALLOCATE, CORE = range(3)
# BIND how: v[size] = dims[a, b] | config[b] (config array a) | v[a] * b + c |
# v[a] * v[b] | v[b] if v[a] else v[c] | max(1, min(v[a], c // max(1, v[b] * itemsize))) | a
DIM, CONFIG, LINEAR, PRODUCT, SELECT, PER_BLOCK, CONSTANT = range(7)
# ITEM how: a | v[a] | address of array a (array c unless v[b], b >= 0) | that address
# and the array's three dims | address and the dims v[c], v[d], v[e]
I_CONSTANT, I_SIZE, I_ADDRESS, I_VIEW, I_SHAPED = range(5)
# Arrays: inputs 0.., outputs OUT.., scratch TMP..
MAX_ARRAYS, OUT, TMP = 48, 16, 32
MAX_SIZES, MAX_SLOTS, TEXT = 48, 96, 256
COLUMNS = 10
# Programs, by the `program` attr of their op; the order never changes (graphs hold it).
PROGRAMS = ("FastrnnGRUForward", "FastrnnGRUBackward", "FastrnnLSTMForward",
            "FastrnnLSTMBackward", "FastrnnSimpleRNNForward", "FastrnnSimpleRNNBackward",
            "FastrnnMinGRUForward", "FastrnnMinGRUBackward")
_TABLE = "fastrnn_program_table"
_table = _abi.shared_table(_TABLE, len(PROGRAMS))
# op name -> (program, text), for the process: kernels hold their addresses as their
# state, so they outlive a reload of this module.
_programs = _capi._KEEP.__dict__.setdefault("programs", {})

_ATTR = np.frombuffer(b"program\0", np.uint8).copy()
_NO_PROGRAM = np.frombuffer(b"fastrnn op kernel: no program for this op (its 'program' attr is "
                            b"unknown to this fastrnn)\0", np.uint8).copy()
_GOT = np.frombuffer(b" (got [", np.uint8).copy()


@intrinsic
def _program_address(typingctx, index):
    """fastrnn_program_table[index] (0 where no program is set)."""
    def codegen(context, builder, signature, args):
        table = builder.module.globals.get(_TABLE)
        if table is None:
            table = cgutils.add_global_variable(
                builder.module, ir.ArrayType(ir.IntType(64), len(PROGRAMS)), _TABLE)
            table.linkage = "external"
        entry = builder.gep(table, [ir.Constant(ir.IntType(32), 0), args[0]])
        return builder.load_atomic(entry, "acquire", 8)

    return types.int64(index), codegen


@intrinsic
def _address(typingctx, pointer):
    """A void* as an integer address."""
    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.int64(pointer), codegen


@cfunc(types.intp(types.intp), cache=True)
def create(construction):
    """The kernel's state: its program's address (0: compute then fails)."""
    status = _capi.TF_NewStatus()
    value = np.zeros(1, np.int64)
    value[0] = -1
    _capi.TF_OpKernelConstruction_GetAttrInt64(construction, _ATTR.ctypes.data,
                                               value.ctypes.data, status)
    ok = _capi.TF_GetCode(status) == 0
    _capi.TF_DeleteStatus(status)
    if not ok or value[0] < 0 or value[0] >= len(PROGRAMS):
        return 0
    return _program_address(value[0])


@njit(cache=True, nogil=True)
def _append(buffer, n, source, count):
    for i in range(count):
        if source[i] == 0 or n >= TEXT - 24:
            break
        buffer[n] = source[i]
        n += 1
    return n


@njit(cache=True, nogil=True)
def _append_int(buffer, n, value):
    digits = np.zeros(20, np.uint8)
    k = 0
    value = max(value, 0)
    while True:
        digits[k] = 48 + value % 10
        value //= 10
        k += 1
        if value == 0 or k == 20:
            break
    while k > 0 and n < TEXT - 4:
        k -= 1
        buffer[n] = digits[k]
        n += 1
    return n


@njit(cache=True, nogil=True)
def _fail(ctx, status, p, text, message, array, at, dims, ranks, v):
    """Report message `message` of the program (an error of `array`'s shape when
    array >= 0: its dims and the sizes bound so far appended)."""
    buffer = np.zeros(TEXT, np.uint8)
    offset, length = p[p[0, 7] + message, 1], p[p[0, 7] + message, 2]
    n = _append(buffer, 0, text[offset:offset + length], length)
    if array >= 0:
        n = _append(buffer, n, _GOT, _GOT.shape[0])
        for d in range(max(ranks[array], 0)):
            if d:
                buffer[n], buffer[n + 1] = 44, 32
                n += 2
            n = _append_int(buffer, n, dims[array, d])
        buffer[n], buffer[n + 1] = 93, 59   # "];"
        n += 2
        for r in range(at):   # the sizes bound before the failing step
            if p[r, 0] == LEGEND and n < TEXT - 30:
                buffer[n], buffer[n + 1], buffer[n + 2] = 32, p[r, 1], 61   # " B="
                n = _append_int(buffer, n + 3, v[p[r, 2]])
                buffer[n] = 44   # ","
                n += 1
        buffer[n - 1] = 41   # ")"
    code = INTERNAL if message == ALLOCATE or message == CORE else INVALID_ARGUMENT
    _capi.TF_SetStatus(status, code, buffer.ctypes.data)
    _capi.TF_OpKernelContext_Failure(ctx, status)


@njit(cache=True, nogil=True)
def _allocate(ctx, status, p, r, k, code, itemsize, dims, ranks):
    rank = p[r, 3]
    shape = np.zeros(MAX_DIMS, np.int64)
    size = itemsize if p[r, 2] == 0 else (1 if p[r, 2] == 1 else 8)
    tf_code = code if p[r, 2] == 0 else (TF_BOOL if p[r, 2] == 1 else TF_INT64)
    for d in range(rank):
        shape[d] = dims[k, d]
    if p[r, 0] == OUTPUT:
        return allocate(ctx, k - OUT, tf_code, size, shape, rank, status), size
    return scratch(ctx, tf_code, shape, rank, status), size


@njit(cache=True, nogil=True)
def _run(ctx, status, p, handles, dims, ranks, v):
    """Steps 1-4 of the program (see the module's docstring). Returns (message,
    array, row): message -1 when it ran; else the failure, for _fail."""
    n_inputs, skip = p[0, 2], p[0, 5]
    if _capi.TF_NumInputs(ctx) != n_inputs:
        return READ, -1, 0
    for i in range(n_inputs):
        handles[i], ranks[i] = get_input(ctx, i, status, dims[i])
        if ranks[i] < 0:
            return READ, -1, 0
    code = TF_TensorType(handles[0])
    itemsize = 4 if code == TF_FLOAT else 8
    if code != TF_FLOAT and code != TF_DOUBLE:
        return READ, -1, 0
    skipped = False
    nbytes = np.zeros(MAX_ARRAYS, np.int64)
    args = np.zeros(MAX_SLOTS + 1, np.int64)
    for r in range(1, p.shape[0]):
        kind, a, b, c = p[r, 0], p[r, 1], p[r, 2], p[r, 3]
        if kind == MESSAGE:
            break
        if kind == LEGEND:
            continue
        if kind == RANK and ranks[a] != b:
            return c, a, r
        if kind == BIND:
            how, x, y, z = b, c, p[r, 4], p[r, 5]
            if how == DIM:
                v[a] = dims[x, y]
            elif how == CONFIG:
                v[a] = carray(TF_TensorData(handles[x]), dims[x, 0], np.int32)[y]
            elif how == LINEAR:
                v[a] = v[x] * y + z
            elif how == PRODUCT:
                v[a] = v[x] * v[y]
            elif how == SELECT:
                v[a] = v[y] if v[x] != 0 else v[z]
            elif how == PER_BLOCK:
                v[a] = max(1, min(v[x], z // max(1, v[y] * itemsize)))
            else:
                v[a] = x
        if kind == SHAPE and (p[r, 4] < 0 or v[p[r, 4]] != 0):
            if ranks[a] != b:
                return c, a, r
            for d in range(b):
                if p[r, 5 + d] >= 0 and dims[a, d] != v[p[r, 5 + d]]:
                    return c, a, r
        if kind == RANGE and not (b <= v[a] <= c):
            return p[r, 4], -1, r
        if kind == OUTPUT or kind == TEMP:
            ranks[a] = p[r, 3]
            for d in range(p[r, 3]):
                dims[a, d] = v[p[r, 4 + d]]
            handles[a], size = _allocate(ctx, status, p, r, a, code, itemsize, dims, ranks)
            if handles[a] == 0:
                return ALLOCATE, -1, r
            nbytes[a] = size
            for d in range(p[r, 3]):
                nbytes[a] *= dims[a, d]
        if (kind == COPY or kind == CALL) and not skipped and v[skip] == 0:
            skipped = True  # an empty batch: zero outputs, no core runs
            for k in range(OUT, TMP):
                if handles[k] != 0:
                    zero_tensor(handles[k], nbytes[k])
        if skipped:
            continue
        if kind == COPY:
            src = carray(TF_TensorData(handles[a]), nbytes[b], np.uint8)
            dst = carray(TF_TensorData(handles[b]), nbytes[b], np.uint8)
            for i in range(nbytes[b]):
                dst[i] = src[i]
        if kind == CALL and (b < 0 or v[b] != 0):
            n = 0
            for q in range(r + 1, r + 1 + c):
                how, x, y, z = p[q, 1], p[q, 2], p[q, 3], p[q, 4]
                if how == I_CONSTANT or how == I_SIZE:
                    args[n] = x if how == I_CONSTANT else v[x]
                    n += 1
                    continue
                k = x if y < 0 or v[y] != 0 else z
                args[n] = _address(TF_TensorData(handles[k]))
                if how == I_VIEW:
                    for d in range(3):
                        args[n + 1 + d] = dims[k, d] if d < ranks[k] else 0
                elif how == I_SHAPED:
                    for d in range(3):
                        args[n + 1 + d] = v[p[q, 5 + d]] if p[q, 5 + d] >= 0 else 0
                n += 1 if how == I_ADDRESS else 4
            args[n] = 0  # the core's done flag (kernels.runtime.abi)
            if not _abi.call_slot(2 * a + (itemsize == 8), args.ctypes.data) or args[n] == 0:
                return CORE, -1, r
    return -1, -1, 0


@cfunc(KERNEL_SIGNATURE, cache=True)
def compute(state, ctx):
    """The kernel of every fastrnn op: runs the program at `state` (see above)."""
    blas_enter()
    status = _capi.TF_NewStatus()
    handles = np.zeros(MAX_ARRAYS, np.intp)
    if state == 0:
        _capi.TF_SetStatus(status, INTERNAL, _NO_PROGRAM.ctypes.data)
        _capi.TF_OpKernelContext_Failure(ctx, status)
    else:
        head = carray(address_to_pointer(state), COLUMNS, np.int64)
        p = carray(address_to_pointer(state), (head[1], COLUMNS), np.int64)
        text = carray(address_to_pointer(p[0, 6]), p[0, 8], np.uint8)
        dims = np.zeros((MAX_ARRAYS, MAX_DIMS), np.int64)
        ranks = np.zeros(MAX_ARRAYS, np.int64)
        v = np.zeros(MAX_SIZES, np.int64)
        message, array, at = _run(ctx, status, p, handles, dims, ranks, v)
        if message >= 0:
            _fail(ctx, status, p, text, message, array, at, dims, ranks, v)
    delete_tensors(handles)
    _capi.TF_DeleteStatus(status)
    blas_leave()


@cfunc(KERNEL_SIGNATURE, cache=True)
def unknown_shapes(ictx, status):
    """Every op's shape function: outputs of unknown shape (the Python side sets
    the static shapes it knows: `static_shape`)."""
    _capi.TF_ShapeInferenceContextSetUnknownShape(ictx, status)


# ----------------------------------------------------------- the Python side --

# A size term: "3", "3H", "T+1", "B?has_mask" (B when has_mask, else 0), "B?!flag".
_TERM = re.compile(r"^(?:(\d+)|(\d*)([A-Za-z_]\w*)([+-]\d+)?)(?:\?(!?\w+))?$")
BIG = 1 << 62


def input_type(name):
    """An op input's TensorFlow type, by its name."""
    return {"mask": "bool", "config": "int32"}.get(name, "T")


class _Compiler:
    """Builds one op's program from its description (native/cells.py)."""

    def __init__(self, cell, op):
        self.cell, self.op, self.rows, self.sizes, self.texts, self.slots = cell, op, [], {}, [], {}
        self.arrays = {}
        for base, key in ((0, "inputs"), (OUT, "outputs"), (TMP, "scratch")):
            for k, entry in enumerate(op.get(key, ())):
                self.arrays[entry[0]] = base + k

    def row(self, *values):
        self.rows.append([int(x) for x in values] + [0] * (COLUMNS - len(values)))

    def message(self, text):
        self.texts.append(f"{self.op['name']}: {text}")
        return len(self.texts) - 1

    def bind(self, key, how, a=0, b=0, c=0):
        index = len(self.sizes)
        if index >= MAX_SIZES:
            raise ValueError(f"{self.op['name']}: more than {MAX_SIZES} sizes")
        self.sizes[key] = index
        self.row(BIND, index, how, a, b, c)
        return index

    def size(self, term):
        """The index of a size term's value (bound on first use)."""
        term = str(term).replace(" ", "")
        if term in self.sizes:
            return self.sizes[term]
        if term.startswith("!"):
            return self.bind(term, LINEAR, self.size(term[1:]), -1, 1)
        match = _TERM.match(term)
        if match is None:
            raise ValueError(f"{self.op['name']}: cannot read size {term!r}")
        literal, mul, name, add, cond = match.groups()
        if cond is not None:
            flag, base = self.size(cond), self.size(term[:term.index("?")])
            return self.bind(term, SELECT, flag, base, self.size(0))
        if literal is not None:
            return self.bind(term, CONSTANT, int(literal))
        if name not in self.sizes:
            raise ValueError(f"{self.op['name']}: size {name!r} is not defined")
        return self.bind(term, LINEAR, self.sizes[name], int(mul or 1), int(add or 0))

    def define(self, name, spec):
        """A size of the cell: "x.0" (a dim), "a*b",
        "block(n, each, bytes)" (kernels' per-block count) or a term."""
        spec = spec.replace(" ", "")
        if re.match(r"^\w+\.\d$", spec):
            array, dim = spec.split(".")
            self.bind(name, DIM, self.arrays[array], int(dim))
        elif spec.startswith("block("):
            n, each, block = spec[6:-1].split(",")
            self.bind(name, PER_BLOCK, self.size(n), self.size(each), int(block))
        elif "*" in spec:
            a, b = spec.split("*")
            self.bind(name, PRODUCT, self.size(a), self.size(b))
        else:
            self.sizes[name] = self.size(spec)

    def dims(self, shape):
        return [self.size(term) for term in shape.split(",")]

    def compile(self):
        op, cell = self.op, self.cell
        self.row(HEAD)
        for text in ("could not read an input (rank above 4?)",
                     "could not allocate an output or scratch tensor",
                     "a core failed (out of memory?) or was not bound (fastrnn.ops.native.ops "
                     "binds the cores of the variant it runs)"):
            self.message(text)
        for name, shape, _ in op["inputs"]:
            rank = len(shape.split(","))
            self.row(RANK, self.arrays[name], rank,
                     self.message(f"{name} must have rank {rank} [{shape}]"))
        n_config = len(cell["config"])
        self.row(SHAPE, self.arrays["config"], 1, self.message(
            f"config must be int32 [{n_config}] ({', '.join(cell['config'])})"), -1,
            self.size(n_config), -1, -1, -1)
        for k, name in enumerate(cell["config"]):
            self.bind(name, CONFIG, self.arrays["config"], k)
        for name, spec in {**op.get("sizes", {}), **cell["sizes"]}.items():
            self.define(name, spec)
        for letter in "BTIH":
            self.row(LEGEND, ord(letter), self.size(letter))
        for name, (lo, hi) in cell["ranges"].items():
            self.row(RANGE, self.size(name), lo, hi, self.message(
                f"config {name} must be in {lo}..{hi}"))
        for name, shape, when in op["inputs"]:
            if name != "config":
                dims = self.dims(shape) + [-1] * (4 - len(shape.split(",")))
                cond = self.size(when) if when else -1
                self.row(SHAPE, self.arrays[name], len(shape.split(",")), self.message(
                    f"{name} must be [{shape}]" + (f" when {when}" if when else "")
                    + f", where {cell['legend']}"), cond, *dims)
        for name, (lo, text) in cell["least"].items():
            self.row(RANGE, self.size(name), lo, BIG, self.message(text))
        for kind, key in ((OUTPUT, "outputs"), (TEMP, "scratch")):
            for name, shape, dtype in op.get(key, ()):
                dims = self.dims(shape)
                self.row(kind, self.arrays[name], ("T", "bool", "int64").index(dtype), len(dims),
                         *dims)
        for source, target in op.get("copies", ()):
            self.row(COPY, self.arrays[source], self.arrays[target])
        for core, when, items in op["calls"]:
            self.call(core, when, items.split())
        self.rows[0] = [HEAD, 0, len(op["inputs"]), len(op["outputs"]),
                        len(op.get("scratch", ())), self.size("B"), 0, len(self.rows), 0, 0]
        encoded = [t.encode()[:TEXT - 64] for t in self.texts]
        at = 0
        for t in encoded:   # after the steps: _run stops at the first
            self.row(MESSAGE, at, len(t))
            at += len(t)
        program = np.array(self.rows, np.int64)
        text = np.frombuffer(b"".join(encoded) + b"\0", np.uint8).copy()
        program[0, 1], program[0, 6], program[0, 8] = len(program), text.ctypes.data, len(text)
        return program, text

    def item(self, item):
        """(row values, slots) of one argument of a core."""
        if item.startswith("@"):   # @name, @name|cond:other, @name[d0,d1,d2]
            name, _, shape = item[1:].partition("[")
            name, _, alt = name.partition("|")
            cond, _, other = alt.partition(":")
            where = [self.arrays[name], self.size(cond) if cond else -1,
                     self.arrays[other] if other else 0]
            if shape:
                dims = self.dims(shape.rstrip("]"))
                return [I_SHAPED, *where, *(dims + [-1] * (3 - len(dims)))], 4
            return [I_VIEW, *where], 4
        if item in self.arrays:
            return [I_ADDRESS, self.arrays[item], -1, 0], 1
        if re.match(r"^-?\d+$", item):
            return [I_CONSTANT, int(item)], 1
        return [I_SIZE, self.size(item)], 1

    def call(self, core, when, items):
        cond = self.size(when) if when else -1
        resolved = [self.item(item) for item in items]   # binds sizes before the CALL row
        slots = sum(n for _, n in resolved)
        if _abi.ARGS.get(core, slots) != slots:
            raise ValueError(f"{self.op['name']}: {core} reads {_abi.ARGS[core]} arguments, "
                             f"the description gives {slots}")
        if slots > MAX_SLOTS:
            raise ValueError(f"{self.op['name']}: {core} takes more than {MAX_SLOTS} slots")
        self.row(CALL, _abi.CORES.index(core), cond, len(resolved))
        for values, _ in resolved:
            self.row(ITEM, *values)
        self.slots[core] = slots


def compile_op(cell, op):
    """(program, text, slots) of op `op` of `cell` (descriptions: native/cells.py);
    slots: core name -> the int64 arguments its CALL fills (the tests check them
    against the cores)."""
    compiler = _Compiler(cell, op)
    program, text = compiler.compile()
    return program, text, compiler.slots


def install(cell, op):
    """Compile op's program and put it in the table, once per process: the op's
    kernels (`compute`) run it from then on. Returns its `program` attr."""
    name = op["name"]
    if name not in _programs:
        program, text, _ = compile_op(cell, op)
        _programs[name] = (program, text)
        _table[PROGRAMS.index(name)] = program.ctypes.data
    return PROGRAMS.index(name)


def static_shape(shape, known):
    """A shape's static dims from the sizes in `known` (name -> int, or None where
    not known): what the op will return, for set_shape."""
    return [_evaluate(term, known) for term in shape.split(",")]


def _evaluate(term, known):
    literal, mul, name, add, cond = _TERM.match(term.replace(" ", "")).groups()
    if cond is not None:
        flag = known.get(cond.lstrip("!"))
        if flag is None:
            return None
        if bool(flag) == cond.startswith("!"):
            return 0
        return _evaluate(term[:term.index("?")], known)
    if literal is not None:
        return int(literal)
    value = known.get(name)
    return None if value is None else value * int(mul or 1) + int(add or 0)
