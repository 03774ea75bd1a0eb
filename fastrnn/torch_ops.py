"""The layers' recurrences on Keras' torch backend: the kernels as torch.autograd.Functions.

The same four functions as fastrnn.ops (TensorFlow), with the same arguments, on
torch tensors. A CPU tensor reaches the Numba kernels as a NumPy view of its memory
(no copy; a non-contiguous one is made contiguous first), and the kernels' outputs
come back as tensors over their arrays (no copy either). A CUDA tensor reaches the
CUDA kernels as a CuPy view (DLPack), launched on torch's current stream. What the
forward saves (the kernels' `saved` object) stays on the autograd graph's context
until the backward; the backward runs once (`once_differentiable`: no
double-backward, as Keras' own loop would give it).

Half precision is computed in float32, as on the TensorFlow route. TorchScript
tracing keeps Keras' loop (the layers' fallback reason); torch.compile sees each
call as one opaque function (`torch.compiler.disable`: a graph break around it).
"""

import contextlib
import functools
import os

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fastrnn import kernels
from fastrnn.kernels.batch import openmp as _openmp
from fastrnn.kernels.batch import parts as _parts
from fastrnn.kernels.checks import validate as _validate
from fastrnn.kernels.gpu import cuda as _cuda

_HALF = (torch.float16, torch.bfloat16)


def fallback_reason():
    """Why a call must take Keras' own loop on this backend now, or None."""
    if torch.jit.is_tracing():
        return "traced by torch.jit (Keras' loop is traceable; the kernels are not)"
    return None


def _use_gpu(x, device):
    """Whether a call on x with the layer's `device` runs the CUDA kernels."""
    if device == "cpu":
        return False
    if device == "cuda" or x.is_cuda:
        reason = _cuda.missing_reason()
        if reason is None and _cuda.simulator():
            reason = "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) cannot take torch tensors"
        if reason is not None:
            if device == "cuda":
                raise RuntimeError(f"device='cuda' was asked for, but {reason}; use "
                                   "device='auto' or 'cpu' to run the CPU kernels")
            return False  # device="auto" on a CUDA tensor: the layer sent it to Keras already
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device")
        return True
    return False


@functools.cache
def _torch_team():
    """torch's OpenMP runtime as a kernels.batch.parts.team runner, or None (another
    parallel backend, or no OpenMP library found)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    path = _openmp.loaded(prefer=os.path.dirname(torch.__file__))
    return None if path is None else _openmp.runner(path)


def route_name(x, device):
    """The route's name for `python -m fastrnn --report`."""
    return "torch cuda" if _use_gpu(x, device) else "torch kernels (cpu)"


class _Arrays:
    """Tensors to the kernels' arrays and back, on the CPU or on one CUDA device."""

    def __init__(self, gpu, device):
        self.gpu, self.device = gpu, device

    def to_array(self, t):
        if t is None:
            return None
        t = t.detach()
        if self.gpu:
            import cupy

            if not t.is_cuda:
                t = t.to(self.device)
            if t.dtype == torch.bool:
                t = t.to(torch.uint8)  # DLPack bool support varies; the kernels read 0/1
                return cupy.from_dlpack(t.contiguous()).astype(bool)
            return cupy.from_dlpack(t.contiguous())
        if t.is_cuda:
            t = t.cpu()
        # A strided tensor (a gradient torch expanded from a sum, a slice) is made
        # contiguous by NumPy, on this thread: a torch copy of that size would run on
        # torch's OpenMP threads, which then spin for milliseconds after it, on the
        # cores the kernels are about to use.
        return np.ascontiguousarray(t.numpy())

    def to_tensor(self, a):
        """An output back on the inputs' device (a no-op on the CPU)."""
        if a is None:
            return None
        if self.gpu:
            return torch.from_dlpack(a)
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device)

    def stream(self):
        """A context in which the kernels launch on torch's current stream, or on the
        CPU split their batch over torch's OpenMP threads (kernels.batch.openmp: its
        workers would spin beside threads of another team)."""
        if not self.gpu:
            runner = _torch_team()
            if runner is None:
                return contextlib.nullcontext()
            return _parts.team(runner, torch.get_num_threads())
        import cupy

        stack = contextlib.ExitStack()
        stream = torch.cuda.current_stream(self.device)
        stack.enter_context(cupy.cuda.Device(self.device.index or 0))
        stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream))
        return stack


class _Kernels(torch.autograd.Function):
    """One layer call: forward(call, x, *states, *weights, mask, recurrent_mask).

    `call.forward(x, *states, *weights, mask, recurrent_mask)` returns the kernels'
    (out, *final states, saved); `call.backward(saved, d_out, *d_finals)` their
    (dx, *d_states, *d_weights), None for an absent weight."""

    @staticmethod
    def forward(ctx, call, *tensors):
        arrays = [call.arrays.to_array(t) for t in tensors]
        with call.arrays.stream():
            *results, saved = call.forward(*arrays)
        ctx.call, ctx.kernel_saved = call, saved
        return tuple(call.arrays.to_tensor(r) for r in results)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        call, saved = ctx.call, ctx.kernel_saved
        ctx.kernel_saved = None  # the graph is freed after its backward
        if saved is None:
            raise RuntimeError("fastrnn: the backward of a layer call ran twice; its saved "
                               "arrays are freed after the first (retain_graph=True is not "
                               "supported by the kernels)")
        arrays = [call.arrays.to_array(g) for g in grads]
        with call.arrays.stream():
            results = call.backward(saved, *arrays)
        out = [None]  # `call`
        out += [call.arrays.to_tensor(r) if r is not None else None for r in results]
        out += [None, None]  # mask, recurrent_mask
        return tuple(out)


class _Call:
    def __init__(self, forward, backward, arrays):
        self.forward, self.backward, self.arrays = forward, backward, arrays


@torch.compiler.disable
def _run(forward, backward, x, states, weights, mask, recurrent_mask, device):
    """(out, *final states) in x's dtype, differentiable in x, states and weights."""
    dtype = torch.float32 if x.dtype in _HALF else x.dtype
    gpu = _use_gpu(x, device)
    arrays = _Arrays(gpu, x.device if not gpu or x.is_cuda else torch.device("cuda"))

    def cast(t):
        return None if t is None else t.to(dtype)

    tensors = ([cast(x)] + [cast(s) for s in states] + [cast(w) for w in weights]
               + [None if mask is None else mask.to(torch.bool), cast(recurrent_mask)])
    results = _Kernels.apply(_Call(forward, backward, arrays), *tensors)
    return tuple(r.to(x.dtype) for r in results)


def gru(x, h0, kernel, recurrent_kernel, bias, mask=None, *, reset_after=True,
        go_backwards=False, activation="tanh", recurrent_activation="sigmoid",
        recurrent_mask=None, device="cpu"):
    """GRU over a sequence as a differentiable torch function. Returns (outputs, h_last).

    recurrent_mask [B, 3H]: Keras' per-gate recurrent dropout masks (z | r | h)."""
    _validate.activation_code(activation)
    _validate.activation_code(recurrent_activation, "recurrent_activation")

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.gru_forward(x, h0, kernel, recurrent_kernel, bias, mask=mask,
                                   reset_after=bool(reset_after), go_backwards=bool(go_backwards),
                                   activation=activation,
                                   recurrent_activation=recurrent_activation,
                                   recurrent_mask=recurrent_mask)

    return _run(forward, kernels.gru_backward, x, [h0], [kernel, recurrent_kernel, bias], mask,
                recurrent_mask, device)


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, mask=None, *, activation="tanh",
               go_backwards=False, recurrent_mask=None, device="cpu"):
    """SimpleRNN over a sequence as a differentiable torch function. Returns (outputs,
    h_last). recurrent_mask [B, H]: Keras' recurrent dropout mask."""
    _validate.activation_code(activation)

    def forward(x, h0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.simple_rnn_forward(x, h0, kernel, recurrent_kernel, bias,
                                          activation=activation, mask=mask,
                                          go_backwards=bool(go_backwards),
                                          recurrent_mask=recurrent_mask)

    return _run(forward, kernels.simple_rnn_backward, x, [h0], [kernel, recurrent_kernel, bias],
                mask, recurrent_mask, device)


def mingru(x, h0, kernel, bias, mask=None, *, go_backwards=False, device="cpu"):
    """minGRU over a sequence as a differentiable torch function. Returns (outputs, h_last)."""

    def forward(x, h0, kernel, bias, mask, recurrent_mask):
        return kernels.mingru_forward(x, h0, kernel, bias, mask=mask,
                                      go_backwards=bool(go_backwards))

    return _run(forward, kernels.mingru_backward, x, [h0], [kernel, bias], mask, None, device)


def lstm(x, h0, c0, kernel, recurrent_kernel, bias, mask=None, *, go_backwards=False,
         activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None, device="cpu"):
    """LSTM over a sequence as a differentiable torch function. Returns (outputs, h_last,
    c_last). recurrent_mask [B, 4H]: Keras' per-gate recurrent dropout masks (i | f | c | o)."""
    _validate.activation_code(activation)
    _validate.activation_code(recurrent_activation, "recurrent_activation")

    def forward(x, h0, c0, kernel, recurrent_kernel, bias, mask, recurrent_mask):
        return kernels.lstm_forward(x, h0, c0, kernel, recurrent_kernel, bias, mask=mask,
                                    go_backwards=bool(go_backwards), activation=activation,
                                    recurrent_activation=recurrent_activation,
                                    recurrent_mask=recurrent_mask)

    return _run(forward, kernels.lstm_backward, x, [h0, c0], [kernel, recurrent_kernel, bias],
                mask, recurrent_mask, device)
