"""fastrnn: fast recurrent layers for Keras.

``fastrnn.kernels`` holds the NumPy/Numba kernels and never imports TensorFlow;
``fastrnn.testing`` the numerical gradient checker. The Keras layers are
resolved lazily, so ``import fastrnn`` alone does not import TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("kernels", "testing")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
