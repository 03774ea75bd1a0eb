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
import tensorflow as tf

from fastrnn import _routes
from fastrnn.kernels._validate import ACTIVATIONS


def activation_name(fn):
    """Kernel name of a Keras activation function, or None if the kernels lack it."""
    if fn is None:
        return "linear"
    try:
        name = keras.activations.serialize(fn)
    except (ValueError, TypeError):
        return None
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return name if name in ACTIVATIONS else None


_EXPORTERS = ("keras.src.export", "tensorflow.python.saved_model")


def tracing_for_export():
    """True while a graph is being traced to be written out as a SavedModel.

    A tf.py_function cannot be serialized (it calls back into this Python
    process), so such graphs must use Keras' pure-TensorFlow loop. Keras'
    ExportArchive traces its endpoints before tf.saved_model.save opens its
    save context, hence the look at who is tracing.
    """
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


class FastRNNMixin:
    """Mixed in before the Keras RNN class; subclasses define `_fast_loop`.

    Adds one argument to Keras': `device`, "auto" (default), "cpu" or "cuda".
    "auto" runs the CUDA kernels when CuPy + numba-cuda find a GPU that
    TensorFlow also uses and the inputs live there, else the CPU kernels;
    "cuda" insists (a RuntimeError says what is missing); "cpu" never tries.
    """

    def __init__(self, *args, device="auto", **kwargs):
        from fastrnn.ops.recurrence import check_device

        self._device = check_device(device)
        super().__init__(*args, **kwargs)
        # XLA cannot compile the kernels' ops: as Keras' own cuDNN layers do, say so,
        # and Keras compiles the model without XLA (jit_compile="auto" on a GPU
        # machine, or jit_compile=True with a warning) instead of failing in fit.
        self.supports_jit = False

    def get_config(self):
        return {**super().get_config(), "device": self._device}

    def call(self, sequences, initial_state=None, mask=None, training=False):
        # Keras keeps integer features as they are and its cell's first product
        # (keras.ops.matmul with the kernel) promotes them to the compute dtype;
        # cast them so, once, for the kernels and for Keras' own loop alike.
        dtype = keras.backend.standardize_dtype(sequences.dtype)
        if "int" in dtype:
            sequences = keras.ops.cast(sequences, self.compute_dtype)
        elif not keras.backend.is_float_dtype(dtype):
            raise ValueError(f"{self.name}: inputs must be floating point or integer features, "
                             f"got dtype {dtype} (cast them, e.g. keras.ops.cast(x, "
                             f"'float32'), or embed ids with keras.layers.Embedding first)")
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def _fallback_reason(self, training):
        """Why this call must use Keras' own loop, or None."""
        raise NotImplementedError

    def _fast_loop(self, sequences, states, mask, training=False):
        """Returns (outputs [B, T, H] in processing order, [final states])."""
        raise NotImplementedError

    def _gated_fallback_reason(self, training):
        """GRU's and LSTM's: activations the kernels lack, or implementation=1 dropout."""
        cell = self.cell
        for arg, fn in (("activation", cell.activation),
                         ("recurrent_activation", cell.recurrent_activation)):
            if activation_name(fn) is None:
                return f"{arg}={fn!r} is not one the kernels implement"
        if cell.implementation == 1 and training and (cell.dropout or cell.recurrent_dropout):
            return "implementation=1 with dropout applies per-gate masks the kernels do not"
        return None

    def _keras_loop(self, sequences, initial_state, mask, training):
        # The generic exact path of keras.layers.RNN (no cuDNN attempt).
        return keras.layers.RNN.inner_loop(self, sequences, initial_state, mask=mask,
                                           training=training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if tracing_for_export():
            _routes.note(self, _routes.KERAS, "traced for export (SavedModels keep Keras' loop)")
            return self._keras_loop(sequences, initial_state, mask, training)
        reason = self._fallback_reason(training)
        if reason is not None:
            _routes.note(self, _routes.KERAS, reason)
            if not getattr(self, "_fastrnn_warned", False):
                warnings.warn(f"{type(self).__name__} '{self.name}': {reason}; running Keras' "
                              "own (exact, slower) loop for this configuration.", stacklevel=2)
                self._fastrnn_warned = True
            return self._keras_loop(sequences, initial_state, mask, training)
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        self._check_call(sequences, states, mask)
        if training and 0.0 < self.cell.dropout < 1.0:
            # The same cached mask Keras' step loop applies at every step.
            dp_mask = self.cell.get_dropout_mask(sequences[:, 0, :])
            sequences = sequences * tf.expand_dims(dp_mask, 1)
        _routes.note(self, _routes.fast_route(self._device, self))
        outputs, final_states = self._fast_loop(sequences, states, mask, training)
        if mask is not None and self.zero_output_for_mask:
            keep = tf.reverse(mask, [1]) if self.go_backwards else mask
            outputs = outputs * tf.cast(keep, outputs.dtype)[:, :, None]
        return outputs[:, -1], outputs, final_states

    def _check_call(self, sequences, states, mask):
        # Static checks, so that bad input raises here, in eager and graph mode,
        # rather than inside a py_function.
        if not sequences.dtype.is_floating:
            raise ValueError(f"{self.name}: inputs must be floating point, got dtype "
                             f"{sequences.dtype.name} (cast integer features, or embed ids "
                             "with keras.layers.Embedding first)")
        features = self.cell.kernel.shape[0]  # every cell here has kernel [I, G * H]
        if sequences.shape[-1] is not None and sequences.shape[-1] != features:
            raise ValueError(f"{self.name}: inputs have {sequences.shape[-1]} features but the "
                             f"layer was built for {features}; got input shape {sequences.shape}")
        units = self.cell.units
        for state in states:
            if state.shape.rank is not None and (state.shape.rank != 2
                                                 or state.shape[-1] not in (None, units)):
                raise ValueError(f"{self.name}: initial state must have shape [batch, {units}], "
                                 f"got shape {state.shape}")
        if mask is not None:
            if mask.shape.rank is not None and mask.shape.rank != 2:
                raise ValueError(f"{self.name}: mask must have shape [batch, time], got shape "
                                 f"{mask.shape} for inputs of shape {sequences.shape}")
            for axis, name in ((0, "batch"), (1, "time")):
                m, s = mask.shape[axis], sequences.shape[axis]
                if m is not None and s is not None and m != s:
                    raise ValueError(f"{self.name}: mask must have shape [batch, time] matching "
                                     f"inputs {sequences.shape}; got mask shape {mask.shape} "
                                     f"({name} differs)")
