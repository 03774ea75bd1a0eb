"""What SimpleRNN and GRU share: run the fused kernel op in place of Keras' step loop.

The layers subclass Keras' own, so the constructor, weights (names, shapes,
order), config, masks, initial and stateful states, return_state and
Bidirectional all stay Keras'. Only `inner_loop`, the part that walks over time,
is replaced. Where the kernels cannot reproduce Keras exactly, the layer warns
once and runs Keras' own loop instead.
"""

import sys
import warnings

import keras

from fastrnn import _routes
from fastrnn.kernels.checks.validate import ACTIVATIONS


_KERAS_ACTIVATIONS = {}  # Keras' own functions -> their kernel names, filled at first use


def activation_name(fn):
    """Kernel name of a Keras activation function, or None if the kernels lack it."""
    if fn is None:
        return "linear"
    if not _KERAS_ACTIVATIONS:
        _KERAS_ACTIVATIONS.update((keras.activations.get(name), name) for name in ACTIVATIONS)
    try:  # Keras' own functions first, without serializing (which imports TensorFlow
        return _KERAS_ACTIVATIONS[fn]  # where it is installed); asked at every call
    except (KeyError, TypeError):  # TypeError: an unhashable callable
        pass
    try:
        name = keras.activations.serialize(fn)
    except (ValueError, TypeError):
        return None
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return name if name in ACTIVATIONS else None


_EXPORTERS = ("keras.src.export", "tensorflow.python.saved_model")


BACKENDS = ("tensorflow", "torch")  # the Keras backends fastrnn's kernels run on


def recurrences():
    """The module whose gru / lstm / simple_rnn / mingru run the kernels as
    differentiable ops of Keras' backend: fastrnn.ops (TensorFlow) or
    fastrnn.torch_ops (torch)."""
    if keras.backend.backend() == "torch":
        from fastrnn import torch_ops

        return torch_ops
    from fastrnn import ops

    return ops


def tracing_for_export():
    """True while a graph is being traced to be written out as a SavedModel.

    A tf.py_function cannot be serialized (it calls back into this Python
    process), so such graphs must use Keras' pure-TensorFlow loop. Keras'
    ExportArchive traces its endpoints before tf.saved_model.save opens its
    save context, hence the look at who is tracing.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if not tf.inside_function():
        return False
    from tensorflow.python.saved_model import save_context

    if save_context.in_save_context():
        return True
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_EXPORTERS):
            return True
        frame = frame.f_back
    return False


# Cell classes the kernels run, each with (reason, loop), filled in by the layer
# modules (register_cell): reason(cell, training) says why a call must run Keras'
# loop, or None; loop(cell, sequences, states, mask, training, go_backwards, device)
# returns (outputs [B, T, H] in processing order, [final states]).
_CELLS = {}


def register_cell(cell_cls, reason, loop):
    _CELLS[cell_cls] = (reason, loop)


def cell_entry(cell):
    """(reason, loop) of a stock cell the kernels run, or None for any other cell.

    A subclass counts as the stock cell only while its step (`call`) is the stock
    one: a cell that computes something else keeps Keras' loop."""
    for cls in type(cell).__mro__:
        if cls in _CELLS:
            return _CELLS[cls] if type(cell).call is cls.call else None
    return None


def _stacked(cell):
    return isinstance(cell, keras.layers.StackedRNNCells)


class FastRNNMixin:
    """Mixed in before a Keras RNN class whose cell (or StackedRNNCells of cells)
    is one the kernels run (register_cell).

    Adds one argument to Keras': `device`, "auto" (default), "cpu" or "cuda".
    "auto" runs the CUDA kernels when CuPy + numba-cuda find a GPU that
    TensorFlow also uses and the inputs live there, else the CPU kernels;
    "cuda" insists (a RuntimeError says what is missing); "cpu" never tries.
    """

    def __init__(self, *args, device="auto", **kwargs):
        self._device = _routes.check_device(device)
        super().__init__(*args, **kwargs)
        # XLA cannot compile the kernels' ops: as Keras' own cuDNN layers do, say so,
        # and Keras compiles the model without XLA (jit_compile="auto" on a GPU
        # machine, or jit_compile=True with a warning) instead of failing in fit.
        self.supports_jit = False

    def get_config(self):
        return {**super().get_config(), "device": self._device}

    def call(self, sequences, initial_state=None, mask=None, training=False):
        # Keras keeps integer and bool features as they are, and its cell's first
        # product (keras.ops.matmul with the kernel) promotes them to the compute
        # dtype; cast them so, once, for the kernels and for Keras' own loop alike.
        dtype = keras.backend.standardize_dtype(sequences.dtype)
        if "int" in dtype or dtype == "bool":
            sequences = keras.ops.cast(sequences, self.compute_dtype)
        elif not keras.backend.is_float_dtype(dtype):
            raise ValueError(f"{self.name}: inputs must be floating point, integer or bool "
                             f"features, got dtype {dtype} (cast them, e.g. keras.ops.cast(x, "
                             f"'float32'), or embed ids with keras.layers.Embedding first)")
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def _cells(self):
        return list(self.cell.cells) if _stacked(self.cell) else [self.cell]

    def _fallback_reason(self, training):
        """Why this call must use Keras' own loop, or None."""
        backend = keras.backend.backend()
        if backend not in BACKENDS:
            return (f"the {backend} backend (fastrnn's kernels run on the TensorFlow and "
                    "torch backends)")
        if backend == "torch":
            reason = recurrences().fallback_reason()
            if reason is not None:
                return reason
        for cell in self._cells():
            entry = cell_entry(cell)
            if entry is None:
                return (f"its cell {type(cell).__name__} is not a stock Keras cell the kernels "
                        "run (custom cells keep Keras' loop)")
            reason = entry[0](cell, training)
            if reason is not None:
                return reason
        return None

    def _keras_loop(self, sequences, initial_state, mask, training):
        # The generic exact path of keras.layers.RNN (no cuDNN attempt): Keras' own
        # class, found in the MRO (while patched, keras.layers.RNN names fastrnn's).
        keras_rnn = next(cls for cls in type(self).__mro__
                         if cls.__name__ == "RNN" and cls.__module__.startswith("keras."))
        return keras_rnn.inner_loop(self, sequences, initial_state, mask=mask,
                                    training=training)

    def _keras_inner_loop(self, sequences, initial_state, mask, training):
        # What Keras' own layer runs: its class's inner_loop (LSTM's and GRU's try
        # cuDNN on a GPU first, then fall back to the generic loop).
        keras_cls = next(cls for cls in type(self).__mro__
                         if cls.__module__.startswith("keras.") and "inner_loop" in cls.__dict__)
        return keras_cls.inner_loop(self, sequences, initial_state, mask=mask, training=training)

    def _keras_would_use_cudnn(self, mask=None):
        """Whether Keras' own layer would run this call on cuDNN (its `use_cudnn`, no
        recurrent dropout, and keras' `cudnn_ok` rules: tanh/sigmoid, bias, not
        unrolled, GRU reset_after; cudnn_ok also asks for a TensorFlow GPU). On the
        torch backend Keras' cuDNN path also takes no mask and (GRU) only
        reset_after=True; its cudnn_ok asks torch for CUDA and cuDNN."""
        is_lstm = isinstance(self, keras.layers.LSTM)
        if not (is_lstm or isinstance(self, keras.layers.GRU)):
            return False   # SimpleRNN, RNN(cell), minGRU: Keras has no cuDNN path
        if getattr(self, "use_cudnn", "auto") not in ("auto", True) or self.cell.recurrent_dropout:
            return False
        if self.cell.implementation == 1 and self.cell.dropout:
            # Keras' cuDNN attempt takes the list of per-gate input masks for one mask
            # and fails; its generic loop (or fastrnn's kernels) applies them.
            return False
        import importlib

        cell = self.cell
        if keras.backend.backend() == "torch":
            if mask is not None or not (is_lstm or cell.reset_after):
                return False
            keras_torch_rnn = importlib.import_module("keras.src.backend.torch.rnn")
            return bool(keras_torch_rnn.cudnn_ok(cell.activation, cell.recurrent_activation,
                                                 self.unroll, cell.use_bias))
        # The module (keras.src.backend.tensorflow's `rnn` attribute is a function).
        keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

        extra = {} if is_lstm else {"reset_after": cell.reset_after}
        return bool(keras_tf_rnn.cudnn_ok(cell.activation, cell.recurrent_activation,
                                          self.unroll, cell.use_bias, **extra))

    def _gpu_route(self, sequences=None, mask=None):
        """On a machine where TensorFlow has a GPU and device="auto": Keras' cuDNN
        where Keras' own layer would use it (fastrnn's CUDA kernels are slower than
        cuDNN there), else fastrnn's CUDA kernels where CuPy + numba-cuda can run
        them, else Keras' own loop (the CPU op would copy every GPU tensor to the
        host and back). Returns (route, reason), or None off a GPU or for device
        "cpu" / "cuda" (those are the user's to choose). On the torch backend "on a
        GPU" means: the inputs are CUDA tensors."""
        from fastrnn.kernels.gpu import cuda as _cuda

        if self._device != "auto":
            return None
        if keras.backend.backend() == "torch":
            if not getattr(sequences, "is_cuda", False):
                return None
        else:
            import tensorflow as tf

            if not tf.config.list_logical_devices("GPU"):
                return None
        if self._keras_would_use_cudnn(mask):
            return _routes.KERAS_CUDNN, "Keras' own layer runs cuDNN here, faster than fastrnn's CUDA kernels"
        if _cuda.gpu_available():
            return "cuda", None
        return _routes.KERAS, ("a TensorFlow GPU without CuPy + numba-cuda (pip install "
                               "'fastrnn[gpu]'): the CPU kernels would copy every tensor off the GPU")

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if tracing_for_export():
            _routes.note(self, _routes.KERAS, "traced for export (SavedModels keep Keras' loop)")
            return self._keras_loop(sequences, initial_state, mask, training)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        reason = self._fallback_reason(training)
        gpu = self._gpu_route(sequences, mask) if reason is None else None
        if gpu is not None and gpu[0] != "cuda":
            _routes.note(self, *gpu)
            if gpu[0] == _routes.KERAS_CUDNN or getattr(self, "use_cudnn", "auto") is True:
                # Keras' own class: cuDNN, or its error for use_cudnn=True where cuDNN
                # cannot run.
                return self._keras_inner_loop(sequences, initial_state, mask, training)
            # Keras' cuDNN attempt would decline here anyway (or, on implementation=1
            # input dropout, fail on the list of per-gate masks): its generic loop.
            return self._keras_loop(sequences, initial_state, mask, training)
        if reason is not None:
            _routes.note(self, _routes.KERAS, reason)
            if not getattr(self, "_fastrnn_warned", False):
                warnings.warn(f"{type(self).__name__} '{self.name}': {reason}; running Keras' "
                              "own (exact, slower) loop for this configuration.", stacklevel=2)
                self._fastrnn_warned = True
            return self._keras_loop(sequences, initial_state, mask, training)
        cells = self._cells()
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if _stacked(self.cell):
            per_cell = [list(s) if isinstance(s, (list, tuple)) else [s] for s in states]
        else:
            per_cell = [states]
        self._check_call(sequences, per_cell, mask)
        if keras.backend.backend() == "torch":
            _routes.note(self, recurrences().route_name(sequences, self._device))
        else:
            _routes.note(self, _routes.fast_route(self._device, self))
        outputs, go_backwards, cell_mask, finals = sequences, self.go_backwards, mask, []
        for cell, cell_states in zip(cells, per_cell):
            x = outputs
            if training and 0.0 < cell.dropout < 1.0:
                # The same cached mask Keras' step loop applies at every step (a list of
                # per-gate masks under implementation=1: the cell's loop applies those,
                # gate_inputs).
                dp_mask = cell.get_dropout_mask(x[:, 0, :])
                if not isinstance(dp_mask, (list, tuple)):
                    x = x * keras.ops.expand_dims(dp_mask, 1)
            outputs, final = cell_entry(cell)[1](cell, x, cell_states, cell_mask, training,
                                                 go_backwards, self._device)
            finals.append(final)
            # The next cell of a stack reads these outputs, already in processing order.
            if go_backwards and cell_mask is not None:
                cell_mask = keras.ops.flip(cell_mask, axis=1)
            go_backwards = False
        if mask is not None and self.zero_output_for_mask:
            keep = keras.ops.flip(mask, axis=1) if self.go_backwards else mask
            outputs = outputs * keras.ops.cast(keep, outputs.dtype)[:, :, None]
        if not _stacked(self.cell):
            final_states = finals[0]
        else:
            # As StackedRNNCells.call returns them: per cell a list, or a tensor where
            # the cell's state came as one; a one-cell stack gives that cell's alone.
            final_states = [f if isinstance(s, (list, tuple)) else f[0]
                            for f, s in zip(finals, states)]
            if len(final_states) == 1:
                final_states = final_states[0]
        return outputs[:, -1], outputs, final_states

    def _check_call(self, sequences, per_cell_states, mask):
        # Static checks, so that bad input raises here, in eager and graph mode,
        # rather than inside a py_function.
        dtype = keras.backend.standardize_dtype(sequences.dtype)
        if not keras.backend.is_float_dtype(dtype):
            raise ValueError(f"{self.name}: inputs must be floating point, got dtype "
                             f"{dtype} (cast integer features, or embed ids "
                             "with keras.layers.Embedding first)")
        x_shape = _static_shape(sequences)
        cells = self._cells()
        features = cells[0].kernel.shape[0]  # every cell here has kernel [I, G * H]
        if x_shape is not None and x_shape[-1] is not None and x_shape[-1] != features:
            raise ValueError(f"{self.name}: inputs have {sequences.shape[-1]} features but the "
                             f"layer was built for {features}; got input shape {sequences.shape}")
        for cell, states in zip(cells, per_cell_states):
            units = cell.units
            for state in states:
                shape = _static_shape(state)
                if shape is not None and (len(shape) != 2 or shape[-1] not in (None, units)):
                    raise ValueError(f"{self.name}: initial state must have shape [batch, "
                                     f"{units}], got shape {state.shape}")
        if mask is not None:
            m_shape = _static_shape(mask)
            if m_shape is not None and len(m_shape) != 2:
                raise ValueError(f"{self.name}: mask must have shape [batch, time], got shape "
                                 f"{mask.shape} for inputs of shape {sequences.shape}")
            for axis, name in ((0, "batch"), (1, "time")) if m_shape and x_shape else ():
                m, s = m_shape[axis], x_shape[axis]
                if m is not None and s is not None and m != s:
                    raise ValueError(f"{self.name}: mask must have shape [batch, time] matching "
                                     f"inputs {sequences.shape}; got mask shape {mask.shape} "
                                     f"({name} differs)")


def _static_shape(t):
    """t's static shape as a tuple (None for unknown dims), or None if its rank is unknown."""
    shape = t.shape
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(shape)


def gated_fallback_reason(cell, training):
    """GRU's and LSTM's: activations the kernels lack."""
    for arg, fn in (("activation", cell.activation),
                    ("recurrent_activation", cell.recurrent_activation)):
        if activation_name(fn) is None:
            return f"{arg}={fn!r} is not one the kernels implement"
    return None


def gate_inputs(cell, sequences, training):
    """(inputs, kernel) for a gated cell's kernels: the sequences and the cell's kernel,
    or, under Keras' per-gate input dropout (implementation=1: a list of G masks
    [B, I]), the inputs widened to [x * m_0 | ... | x * m_{G-1}] [B, T, G*I] against
    the block-diagonal kernel [G*I, G*H] whose block g is the kernel's gate g: the
    same products x_g W_g, and TensorFlow's gradients of the widening and of the
    blocks route dL/dx and dL/dW back."""
    kernel = cell.kernel.value
    if not (training and 0.0 < cell.dropout < 1.0):
        return sequences, kernel
    masks = cell.get_dropout_mask(sequences[:, 0, :])
    if not isinstance(masks, (list, tuple)):
        return sequences, kernel   # one mask: already applied by FastRNNMixin.inner_loop
    gates = len(masks)
    units = kernel.shape[1] // gates
    kops = keras.ops
    wide = kops.concatenate([sequences * kops.expand_dims(kops.cast(m, sequences.dtype), 1)
                             for m in masks], axis=-1)
    blocks = []
    for g in range(gates):
        block = kernel[:, g * units:(g + 1) * units]
        blocks.append(kops.pad(block, [[0, 0], [g * units, (gates - 1 - g) * units]]))
    return wide, kops.concatenate(blocks, axis=0)


def gate_recurrent_mask(cell, states, training):
    """Keras' per-gate recurrent dropout masks side by side, [B, G*H], or None."""
    if not (training and 0.0 < cell.recurrent_dropout < 1.0):
        return None
    masks = cell.get_recurrent_dropout_mask(states[0])
    if not isinstance(masks, (list, tuple)):
        # One mask: a cell switched to implementation=2 after it was built, whose
        # step (Keras' fused branch) applies no recurrent dropout.
        return None
    return keras.ops.concatenate([keras.ops.cast(m, states[0].dtype) for m in masks], axis=-1)
