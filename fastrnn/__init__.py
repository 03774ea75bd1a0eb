"""fastrnn: fast recurrent layers for Keras.

``fastrnn.kernels`` holds the NumPy/Numba kernels and never imports TensorFlow;
``fastrnn.testing`` the numerical gradient checker. The Keras layers are
resolved lazily, so ``import fastrnn`` alone does not import TensorFlow.

``fastrnn.patch()`` / ``unpatch()`` / ``patched()`` make Keras' own SimpleRNN,
GRU, LSTM and RNN names give fastrnn's layers (``python -m fastrnn script.py`` runs
a script that way).
"""

import importlib
import os

__version__ = "0.1.0"

# Installed, `fastrnn.kernels` is the top-level `kernels/` folder mapped by
# pyproject's package-dir. Imported straight from a source checkout (the repo
# root on sys.path, as `python -m pytest` or `python -m bench` do), this finds it.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isfile(os.path.join(__path__[0], "kernels", "__init__.py")) and os.path.isfile(
        os.path.join(_checkout, "kernels", "__init__.py")):
    __path__.append(_checkout)

_SUBMODULES = ("kernels", "testing", "ops", "layers")
_LAYERS = ("GRU", "LSTM", "MinGRU", "MinGRUCell", "RNN", "SimpleRNN")
_PATCH = ("patch", "unpatch", "patched")
_SETTINGS = ("warmup", "set_route", "get_route")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAYERS:
        return getattr(importlib.import_module(f"{__name__}.layers"), name)
    if name in _PATCH:
        return getattr(importlib.import_module(f"{__name__}._patch"), name)
    if name in _SETTINGS:
        return getattr(importlib.import_module(f"{__name__}._settings"), name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_LAYERS) + list(_PATCH)
                  + list(_SETTINGS))
