"""The cells, described as data: what native/_shell.py builds their TensorFlow ops from.

A cell: its `config` (int32 settings, in order; each a size too), `ranges` of the
config, `sizes` (a dim "array.d", a config entry, a term such as "3H" or "T+1",
"a*b", "block(n, each, bytes)"), the sizes that must be `least` some value, the
`states`, `weights` and what the forward `returns` (the rest of its outputs are
saved for the backward), the kernels `module` that registers its cores and the
`cores` each variant needs. An op: `inputs` (name, shape, when: checked only when
that size is nonzero), `outputs` and `scratch` (name, shape, dtype), `copies` (an
input into an output before the cores run) and `calls`: (core, when, arguments),
the arguments in the core's order (kernels.runtime.abi): an array's address (`name`), its
address and dims (`@name`, `@name[d0,d1]`, `@name|cond:other` for `other` unless
cond), a size or an integer. Inputs and outputs whose first dim is B split with
the batch. The backward's `dX` outputs are the gradients of the forward's inputs X.
"""

from fastrnn.kernels.fastmath.common import BLOCK_BYTES
from fastrnn.kernels.checks.validate import ACTIVATIONS
from fastrnn.kernels.mingru.cpu import BLOCK_BYTES as MINGRU_BLOCK_BYTES

_FLAG, _ACT = (0, 1), (0, max(ACTIVATIONS.values()))   # config ranges: a flag, an activation code
_COMMON = {"T": (1, "the time axis is empty: inputs need at least one step"),
           "H": (1, "units must be at least 1")}
_FEATURES = {"I": (1, "x must have at least one feature"), **_COMMON}
_LEGEND = "B = batch, T = time, I = features, H = units"
_SCRATCH = [("x_tm", "T,B,I", "T"), ("mask_tm", "T,B", "bool"), ("first", "B", "int64")]
_PREPARE = ("prepare", "", "x mask x_tm mask_tm first B T I has_mask go_backwards")


def _rnn_inputs(width, bias, states=("h0",)):
    return ([("x", "B,T,I", ""), *[(s, "B,H", "") for s in states], ("kernel", f"I,{width}", ""),
             ("recurrent_kernel", f"H,{width}", ""), ("bias", bias, ""),
             ("mask", "B,T", "has_mask"), ("recurrent_mask", f"B,{width}", "has_recurrent_mask"),
             ("config", "C", "")])


def _backward_inputs(width, saved, d_states=("d_h_last",)):
    return ([("x", "B,T,I", ""), ("kernel", f"I,{width}", ""),
             ("recurrent_kernel", f"H,{width}", ""), ("mask", "B,T", "has_mask"),
             ("recurrent_mask", f"B,{width}", "has_recurrent_mask"), ("config", "C", ""),
             *saved, ("d_out", "B,T,H", ""), *[(d, "B,H", "") for d in d_states]])


def _gradients(width, bias, states=("dh0",)):
    return ([("dx", "B,T,I", "T"), *[(d, "B,H", "T") for d in states],
             ("d_kernel", f"I,{width}", "T"), ("d_recurrent_kernel", f"H,{width}", "T"),
             ("d_bias", bias, "T")])


_GRU_SAVED = [("gates", "T,B,3H", ""), ("extra", "T,B,H", ""), ("states", "T+1,B,H", "")]
_GRU_MASK = "recurrent_mask B?has_recurrent_mask 3H?has_recurrent_mask"
GRU = {
    "name": "gru",
    "config": ("reset_after", "go_backwards", "act", "ract", "has_mask", "packed",
               "has_recurrent_mask"),
    "ranges": {"reset_after": _FLAG, "go_backwards": _FLAG, "act": _ACT, "ract": _ACT,
               "has_mask": _FLAG, "packed": _FLAG, "has_recurrent_mask": _FLAG},
    "sizes": {"B": "x.0", "T": "x.1", "I": "x.2", "H": "recurrent_kernel.0",
              "R": "reset_after+1"},
    "least": _COMMON, "legend": _LEGEND + ", R = 2 with reset_after, else 1",
    "states": ("h0",), "weights": ("kernel", "recurrent_kernel"), "returns": ("out", "h_last"),
    "module": "fastrnn.kernels.gru.cpu", "variant": "reset_after",
    "cores": {1: ("gru_backward", "gru_forward", "prepare"),
              0: ("gru_backward_reset_before", "gru_forward_reset_before", "prepare")},
    "forward": {
        "name": "FastrnnGRUForward", "inputs": _rnn_inputs("3H", "R,3H"),
        "outputs": [("out", "B,T,H", "T"), ("h_last", "B,H", "T"), ("gates", "T,B,3H", "T"),
                    ("extra", "T,B,H", "T"), ("states", "T+1,B,H", "T")],
        "scratch": _SCRATCH,
        "calls": [(core, when, "x h0 kernel recurrent_kernel bias mask out h_last x_tm gates "
                   "extra states mask_tm first B T I H R has_mask reset_after go_backwards act "
                   "ract packed " + _GRU_MASK)
                  for core, when in (("gru_forward", "reset_after"),
                                     ("gru_forward_reset_before", "!reset_after"))]},
    "backward": {
        "name": "FastrnnGRUBackward", "inputs": _backward_inputs("3H", _GRU_SAVED),
        "outputs": _gradients("3H", "R,3H"), "scratch": _SCRATCH,
        "copies": [("d_h_last", "dh0")],
        "calls": [_PREPARE] + [
            (core, when, "x_tm gates extra states mask_tm first kernel recurrent_kernel d_out "
             "dh0 dx d_kernel d_recurrent_kernel d_bias B T I H R reset_after go_backwards act "
             "ract packed " + _GRU_MASK)
            for core, when in (("gru_backward", "reset_after"),
                               ("gru_backward_reset_before", "!reset_after"))]},
}

_LSTM_SAVED = [("gates", "T,B,4H", ""), ("h_states", "T+1,B,H", ""),
               ("c_states", "T+1,B,H", ""), ("tanh_c", "T,B,H", "")]
_MASKS = "@mask[B?has_mask,T?has_mask] "
LSTM = {
    "name": "lstm",
    "config": ("go_backwards", "act", "ract", "has_mask", "packed", "has_recurrent_mask"),
    "ranges": {"go_backwards": _FLAG, "act": _ACT, "ract": _ACT, "has_mask": _FLAG,
               "packed": _FLAG, "has_recurrent_mask": _FLAG},
    "sizes": {"B": "x.0", "T": "x.1", "I": "x.2", "H": "recurrent_kernel.0", "E": "B*4H",
              "S": f"block(T, E, {BLOCK_BYTES})"},   # kernels.fastmath.common.steps_per_block
    "least": _FEATURES, "legend": _LEGEND,
    "states": ("h0", "c0"), "weights": ("kernel", "recurrent_kernel"),
    "returns": ("out", "h_last", "c_last"),
    "module": "fastrnn.kernels.lstm.cpu", "cores": {None: ("lstm_backward", "lstm_forward",
                                                          "prepare")},
    "forward": {
        "name": "FastrnnLSTMForward", "inputs": _rnn_inputs("4H", "4H", ("h0", "c0")),
        "outputs": [("out", "B,T,H", "T"), ("h_last", "B,H", "T"), ("c_last", "B,H", "T"),
                    ("gates", "T,B,4H", "T"), ("h_states", "T+1,B,H", "T"),
                    ("c_states", "T+1,B,H", "T"), ("tanh_c", "T,B,H", "T")],
        "scratch": _SCRATCH,
        "calls": [("lstm_forward", "", "@x @h0 @c0 @kernel @recurrent_kernel @bias " + _MASKS
                   + "@out @h_last @c_last @x_tm @gates @h_states @c_states @tanh_c @mask_tm "
                   "@first @recurrent_mask[B?has_recurrent_mask,4H?has_recurrent_mask] has_mask "
                   "go_backwards act ract packed")]},
    "backward": {
        "name": "FastrnnLSTMBackward",
        "inputs": _backward_inputs("4H", _LSTM_SAVED, ("d_h_last", "d_c_last")),
        "outputs": _gradients("4H", "4H", ("dh0", "dc0")),
        "scratch": _SCRATCH + [("dz", "S,B,4H", "T"), ("dx_tm", "T,B,I", "T")],
        "copies": [("d_h_last", "dh0"), ("d_c_last", "dc0")],
        "calls": [_PREPARE, (
            "lstm_backward", "", "@x_tm @gates @h_states @c_states @tanh_c @mask_tm @first "
            "@kernel @recurrent_kernel @d_out @dh0 @dc0 @dx @d_kernel @d_recurrent_kernel "
            "@d_bias @dz @dx_tm @recurrent_mask[B?has_recurrent_mask,4H?has_recurrent_mask] "
            "go_backwards act ract packed")]},
}

SIMPLE_RNN = {
    "name": "simple_rnn",
    "config": ("go_backwards", "act", "has_mask", "has_recurrent_mask", "packed"),
    "ranges": {"go_backwards": _FLAG, "act": _ACT, "has_mask": _FLAG,
               "has_recurrent_mask": _FLAG, "packed": _FLAG},
    "sizes": {"B": "x.0", "T": "x.1", "I": "x.2", "H": "recurrent_kernel.0"},
    "least": _FEATURES, "legend": _LEGEND,
    "states": ("h0",), "weights": ("kernel", "recurrent_kernel"), "returns": ("out", "h_last"),
    "module": "fastrnn.kernels.simple_rnn.cpu",
    "cores": {None: ("simple_rnn_backward", "simple_rnn_forward", "prepare")},
    "forward": {
        "name": "FastrnnSimpleRNNForward", "inputs": _rnn_inputs("H", "H"),
        "outputs": [("out", "B,T,H", "T"), ("h_last", "B,H", "T"), ("states", "T+1,B,H", "T")],
        "scratch": _SCRATCH,
        "calls": [("simple_rnn_forward", "", "@x @h0 @kernel @recurrent_kernel @bias " + _MASKS
                   + "@recurrent_mask[B?has_recurrent_mask,H?has_recurrent_mask] @out @h_last "
                   "@x_tm @states @mask_tm @first has_mask go_backwards act packed")]},
    "backward": {
        "name": "FastrnnSimpleRNNBackward",
        "inputs": _backward_inputs("H", [("states", "T+1,B,H", "")]),
        "outputs": _gradients("H", "H"), "scratch": _SCRATCH, "copies": [("d_h_last", "dh0")],
        "calls": [_PREPARE, (
            "simple_rnn_backward", "", "@x_tm @states @mask_tm @first @kernel @recurrent_kernel "
            "@recurrent_mask[B?has_recurrent_mask,H?has_recurrent_mask] @d_out @dh0 @dx "
            "@d_kernel @d_recurrent_kernel @d_bias go_backwards act packed")]},
}

_MINGRU_SCRATCH = [("x_p", "B?go_backwards,T?go_backwards,I?go_backwards", "T"),
                   ("mask_bt", "B,T", "bool"), ("first", "B", "int64")]
MINGRU = {
    "name": "mingru",
    "config": ("go_backwards", "has_mask"),
    "ranges": {"go_backwards": _FLAG, "has_mask": _FLAG},
    "sizes": {"B": "x.0", "T": "x.1", "I": "x.2", "E": "T*2H",
              "rows": f"block(B, E, {MINGRU_BLOCK_BYTES})"},   # mingru.cpu.rows_per_block
    "least": _FEATURES, "legend": _LEGEND,
    "states": ("h0",), "weights": ("kernel",), "returns": ("out", "h_last"),
    "module": "fastrnn.kernels.mingru.cpu",
    "cores": {None: ("mingru_backward", "mingru_forward", "mingru_prepare")},
    "forward": {
        "name": "FastrnnMinGRUForward", "sizes": {"H": "h0.1"},
        "inputs": [("x", "B,T,I", ""), ("h0", "B,H", ""), ("kernel", "I,2H", ""),
                   ("bias", "2H", ""), ("mask", "B,T", "has_mask"), ("config", "C", "")],
        "outputs": [("out", "B,T,H", "T"), ("h_last", "B,H", "T"), ("gates", "B,T,2H", "T")],
        "scratch": _MINGRU_SCRATCH,
        "calls": [("mingru_forward", "", "@x @h0 @kernel @bias " + _MASKS + "@x_p @gates @out "
                   "@h_last @mask_bt @first has_mask go_backwards rows")]},
    "backward": {
        "name": "FastrnnMinGRUBackward", "sizes": {"H": "d_h_last.1"},
        "inputs": [("x", "B,T,I", ""), ("kernel", "I,2H", ""), ("mask", "B,T", "has_mask"),
                   ("config", "C", ""), ("gates", "B,T,2H", ""), ("d_out", "B,T,H", ""),
                   ("d_h_last", "B,H", "")],
        "outputs": [("dx", "B,T,I", "T"), ("dh0", "B,H", "T"), ("d_kernel", "I,2H", "T"),
                    ("d_bias", "2H", "T")],
        "scratch": _MINGRU_SCRATCH + [("d_pre", "rows,T,2H", "T")],
        "copies": [("d_h_last", "dh0")],
        "calls": [("mingru_prepare", "", "@x " + _MASKS + "@x_p @mask_bt @first has_mask "
                   "go_backwards"),
                  ("mingru_backward", "", "@x_p|go_backwards:x @gates @mask_bt @first @kernel "
                   "@d_out @dh0 @d_pre @dx @d_kernel @d_bias go_backwards rows")]},
}

CELLS = {cell["name"]: cell for cell in (GRU, LSTM, SIMPLE_RNN, MINGRU)}
