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


# A saved .keras file names the layers by their registered names ("fastrnn>GRU"), which
# Keras finds only once fastrnn.layers has run its register_keras_serializable
# decorators. The layers are lazy (the kernels alone must not import Keras), so they
# are registered as soon as Keras is there: now if it is imported already, else right
# after its import (a one-shot import hook). Then `import fastrnn` and load_model work
# without naming a layer first.
def _register_layers():
    try:
        importlib.import_module(f"{__name__}.layers")
    except Exception as error:  # noqa: BLE001 - Keras' own import must not fail for it
        import warnings

        warnings.warn(f"fastrnn: its layers could not be registered with Keras ({error!r}); "
                      "saved models with fastrnn layers will not load", stacklevel=2)


class _AfterKerasImport:
    """A sys.meta_path finder that registers the layers once `keras` has been imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        import importlib.util
        import sys

        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; and find_spec below must not find us
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_layers()

        loader.exec_module = exec_then_register
        return spec


def _hook_keras():
    import sys

    if "keras" in sys.modules:
        _register_layers()
    elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())


_hook_keras()
