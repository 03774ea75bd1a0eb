"""Which route a layer call takes: the native TensorFlow ops (the CPU default), the
tf.numpy_function pair (ops/_bridge.py), or the CUDA kernels through tf.py_function."""

import os
import threading
import warnings

import tensorflow as tf

from fastrnn._routes import DEVICES, check_device  # noqa: F401 - re-exported
from fastrnn.kernels.gpu import cuda as _cuda

# The CPU route of the layers: "native" (TensorFlow ops registered through the C
# API, ops/native), "numpy_function" (ops/_bridge.py's tf.numpy_function pairs),
# or "auto" (native where it can be set up, else numpy_function with one warning
# saying why). FASTRNN_ROUTE sets it for a process; fastrnn.set_route for a session.
ROUTES = ("auto", "native", "numpy_function")
_route = os.environ.get("FASTRNN_ROUTE", "auto").strip().lower() or "auto"
_native = None          # the ops.native module once set up
_native_error = None    # why it could not be, once tried
_native_lock = threading.Lock()


def set_route(route):
    """Choose the layers' CPU route for layers called from now on (see ROUTES)."""
    global _route
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    _route = route


def get_route():
    return _route


def _native_module():
    """ops.native, set up on first use; None (with one warning) where it cannot be."""
    global _native, _native_error
    if _native is not None or _native_error is not None:
        return _native
    with _native_lock:
        if _native is None and _native_error is None:
            try:
                from fastrnn.ops import native

                _native = native
            except Exception as error:  # noqa: BLE001 - any failure means: fall back
                _native_error = f"{type(error).__name__}: {error}"
                warnings.warn("fastrnn: the native TensorFlow ops cannot be set up here "
                              f"({_native_error}); the layers run their kernels through "
                              "tf.numpy_function instead (slower per call).", stacklevel=3)
    return _native


def native_route(device="cpu"):
    """The ops.native module when a layer call on `device` should use it, else None."""
    if _route == "numpy_function" or use_gpu_route(device):
        return None
    if _route not in ROUTES:
        raise ValueError(f"FASTRNN_ROUTE must be one of {ROUTES}, got {_route!r}")
    module = _native_module()
    if module is None and _route == "native":
        raise RuntimeError(f"the native route was asked for (route='native'), but {_native_error}")
    return module


def route_name(device="cpu"):
    """Which route a layer call on `device` takes: "cuda", "native op" or
    "numpy_function fallback"."""
    if use_gpu_route(device):
        return "cuda"
    return "native op" if native_route(device) is not None else "numpy_function fallback"


def use_gpu_route(device):
    """True when the layer should run through tf.py_function with the CUDA kernels.

    "cpu": never. "cuda": always, or a RuntimeError saying what is missing.
    "auto": when CuPy + numba-cuda find a GPU and TensorFlow has one too.
    """
    check_device(device)
    if device == "cpu":
        return False
    if device == "cuda":
        reason = _cuda.missing_reason()
        if reason is None and _cuda.simulator():
            reason = "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) cannot take TensorFlow tensors"
        if reason is not None:
            raise RuntimeError(f"device='cuda' was asked for, but {reason}; "
                               "use device='auto' or 'cpu' to run the CPU kernels")
        return True
    return _cuda.gpu_available() and bool(tf.config.list_logical_devices("GPU"))
