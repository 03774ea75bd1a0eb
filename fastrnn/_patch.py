"""Make Keras' own names give fastrnn's layers: `fastrnn.patch()`, `unpatch()`, `patched()`.

While a cell is patched, every public name of Keras' class (keras.layers.GRU,
tf.keras.layers.GRU, keras.src.layers.GRU, the class in its defining module, and
the registered name "keras.layers.GRU" that model files are loaded through)
gives fastrnn's subclass. Which module attributes hold the class is found by
scanning the loaded modules of the keras and tensorflow.keras namespaces for
attributes that *are* Keras' class; unpatch puts back exactly those, plus any
such attribute a keras module imported during the patch picked up.

Keras modules under keras.src that merely import the class for their own
logic are left alone (e.g. keras.src.layers.rnn.bidirectional uses
isinstance(layer, LSTM) to pick its fused path): only packages (API
namespaces) and the module that defines the class are public ways of naming it.

While patched, a fastrnn layer with the default device="auto" serializes as
Keras' own class with Keras' config (no `device`), so a model saved under the
patch (.keras or .h5) loads with plain Keras: the patch wraps Keras' two
serializers, serialization_lib.serialize_with_public_class (.keras, get_config,
Bidirectional's copies) and the legacy serialize_keras_object (.h5), the same
way (module attributes, put back on unpatch). A layer given an explicit device
keeps fastrnn's registered name and its `device`: loading it needs fastrnn
imported.

The patch is process-wide (module attributes are shared by all threads), like
scikit-learn-intelex's patch_sklearn. Layers that already exist keep their class.
"""

import contextlib
import sys
import threading
import warnings

# "rnn": keras.layers.RNN, whose stock cells (LSTMCell, GRUCell, SimpleRNNCell, and
# StackedRNNCells of them) then run the kernels; other cells keep its loop.
CELLS = ("simple_rnn", "gru", "lstm", "rnn")
_CLASS_NAMES = {"simple_rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}
_ALIASES = {**{c: c for c in CELLS}, "simplernn": "simple_rnn"}

_lock = threading.RLock()
_explicit = set()   # cells turned on by patch()
_holds = {}         # cell -> number of open patched() blocks
_applied = {}       # cell -> _Applied
_hidden = {}        # fastrnn class -> Keras class, for serialization


class _Applied:
    """What patching one cell changed, so that unpatch puts exactly that back."""

    def __init__(self, keras_cls, fast_cls):
        self.keras_cls = keras_cls
        self.fast_cls = fast_cls
        self.attributes = []        # (module, attribute name)
        self.registered_names = []  # keys of keras' api_export registry


def check_cells(cells, function):
    """The cell names (canonical) of a `cells` argument; None means all."""
    if cells is None:
        return list(CELLS)
    if isinstance(cells, str):
        cells = [cells]
    try:
        items = list(cells)
    except TypeError:
        raise TypeError(f"{function}(cells=...) takes a list of cell names or None, got "
                        f"{cells!r} of type {type(cells).__name__}") from None
    allowed = ", ".join(repr(c) for c in CELLS)
    result = []
    for item in items:
        key = item.lower() if isinstance(item, str) else None
        if key not in _ALIASES:
            raise ValueError(f"{function}(cells=...): got {item!r} in {cells!r}; allowed cell "
                             f"names are {allowed} (or the class names SimpleRNN, GRU, LSTM)")
        if _ALIASES[key] not in result:
            result.append(_ALIASES[key])
    return result


def _classes(cell):
    """(Keras' class, fastrnn's class) for a cell name."""
    import fastrnn.layers

    fast_cls = getattr(fastrnn.layers, _CLASS_NAMES[cell])
    # fastrnn's layers subclass Keras' own: the base is Keras' class even while
    # keras.layers.<Name> itself names fastrnn's.
    keras_cls = next(base for base in fast_cls.__mro__[1:]
                     if base.__module__.startswith("keras.")
                     and base.__name__ == _CLASS_NAMES[cell])
    return keras_cls, fast_cls


def _keras_modules(defining_module):
    """Loaded modules that name a Keras object publicly (deduplicated).

    Those of the keras and tensorflow.keras namespaces, less the modules under
    keras.src that are not packages: those import the object for their own
    logic. The module that defines it stays in, so that keras modules imported
    later (tf.keras's, on first use) pick up what the patch put there.
    """
    seen = set()
    for name, module in _namespace_modules():
        if id(module) in seen:
            continue
        if (name.startswith("keras.src.") and not hasattr(module, "__path__")
                and name != defining_module):
            continue
        seen.add(id(module))
        yield module


_scan = None  # the keras-namespace modules, listed once per _apply


def _namespace_modules():
    if _scan is not None:
        return _scan
    return [(name, module) for name, module in list(sys.modules.items())
            if module is not None
            and (name == "keras" or name.startswith(("keras.", "tensorflow.keras")))]


def _module_attributes(module, value):
    try:
        items = list(vars(module).items())
    except TypeError:
        return []
    return [attr for attr, v in items if v is value]


def _replace(old, new, defining_module):
    """Point every public module attribute that is `old` at `new`; returns them."""
    replaced = []
    for module in _keras_modules(defining_module):
        for attr in _module_attributes(module, old):
            setattr(module, attr, new)
            replaced.append((module, attr))
    return replaced


def _put_back(replaced, old, new, defining_module):
    """Undo _replace, and point at `old` what keras modules imported since took of `new`."""
    for module, attr in replaced:
        if getattr(module, attr, None) is new:
            setattr(module, attr, old)
    for module in _keras_modules(defining_module):
        for attr in _module_attributes(module, new):
            setattr(module, attr, old)


def _install(cell):
    from keras.src import api_export

    keras_cls, fast_cls = _classes(cell)
    applied = _Applied(keras_cls, fast_cls)
    applied.attributes = _replace(keras_cls, fast_cls, keras_cls.__module__)
    registry = api_export.REGISTERED_NAMES_TO_OBJS
    for name, obj in list(registry.items()):
        if obj is keras_cls:
            registry[name] = fast_cls
            applied.registered_names.append(name)
    _hidden[fast_cls] = keras_cls
    _applied[cell] = applied


def _uninstall(cell):
    from keras.src import api_export

    applied = _applied.pop(cell)
    keras_cls, fast_cls = applied.keras_cls, applied.fast_cls
    _hidden.pop(fast_cls, None)
    _put_back(applied.attributes, keras_cls, fast_cls, keras_cls.__module__)
    registry = api_export.REGISTERED_NAMES_TO_OBJS
    for name in applied.registered_names:
        if registry.get(name) is fast_cls:
            registry[name] = keras_cls


def _as_keras(layer, config):
    """Keras' class for a fastrnn layer whose config is to look like Keras', else None.

    While its cell is patched, a layer with the default device serializes as
    Keras' class with Keras' config: `device` dropped, so plain Keras loads it.
    """
    keras_cls = _hidden.get(layer)
    if (keras_cls is not None and isinstance(config, dict)
            and config.get("device", "auto") == "auto"):
        config.pop("device", None)
        return keras_cls
    return None


def _serialize_with_public_class(cls, inner_config=None):
    """keras.src.saving.serialization_lib's, for .keras files and get_config."""
    if isinstance(inner_config, dict):
        inner_config = dict(inner_config)
        cls = _as_keras(cls, inner_config) or cls
    return _serializers["serialize_with_public_class"][0](cls, inner_config)


def _legacy_serialize_keras_object(instance):
    """keras.src.legacy.saving.serialization's, for .h5 files."""
    config = _serializers["serialize_keras_object"][0](instance)
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        keras_cls = _as_keras(type(instance), config["config"])
        if keras_cls is not None:
            config["class_name"] = keras_cls.__name__
    return config


_SERIALIZERS = (
    ("keras.src.saving.serialization_lib", "serialize_with_public_class",
     _serialize_with_public_class),
    ("keras.src.legacy.saving.serialization", "serialize_keras_object",
     _legacy_serialize_keras_object),
)
_serializers = {}   # function name -> (Keras' function, replaced attributes)


def _set_serializers(on):
    import importlib

    for module_name, attr, replacement in _SERIALIZERS:
        if on and attr not in _serializers:
            original = getattr(importlib.import_module(module_name), attr)
            _serializers[attr] = (original, _replace(original, replacement, module_name))
        elif not on and attr in _serializers:
            original, replaced = _serializers.pop(attr)
            _put_back(replaced, original, replacement, module_name)


def _apply():
    """Bring the patch in line with _explicit and _holds (call with _lock held)."""
    global _scan
    want = {c for c in CELLS if c in _explicit or _holds.get(c, 0) > 0}
    if want == set(_applied):
        return
    if want - set(_applied):
        import fastrnn.layers  # noqa: F401 - imports keras before the modules are listed
    _scan = None
    _scan = _namespace_modules()
    try:
        if want - set(_applied):
            _set_serializers(True)
        for cell in CELLS:
            if cell in want and cell not in _applied:
                _install(cell)
            elif cell not in want and cell in _applied:
                _uninstall(cell)
        if not _applied:
            _set_serializers(False)
    finally:
        _scan = None


def patched_cells():
    """The cells patched now, e.g. ["gru", "lstm"]."""
    with _lock:
        return [c for c in CELLS if c in _applied]


def patch(cells=None):
    """Make Keras' SimpleRNN, GRU, LSTM and RNN give fastrnn's layers, process-wide.

    After `fastrnn.patch()`, `keras.layers.GRU(...)`, `tf.keras.layers.GRU(...)`,
    `from tensorflow.keras.layers import GRU` and model files naming "GRU" all
    give `fastrnn.GRU`, which subclasses Keras' class (isinstance checks hold).
    Layers already built keep their class. Patching again is harmless.

    Args:
        cells: which to patch, a list of "simple_rnn", "gru", "lstm", "rnn"
            (class names also accepted; "rnn" is keras.layers.RNN, whose stock
            cells then run the kernels); None (default) patches all four.

    Example:
        >>> import fastrnn; fastrnn.patch()
        >>> import keras
        >>> keras.layers.GRU is fastrnn.GRU
        True
    """
    chosen = check_cells(cells, "patch")
    with _lock:
        _explicit.update(chosen)
        _apply()


def unpatch(cells=None):
    """Give Keras back its own classes (all, or the listed `cells`).

    Every module attribute and registry entry the patch changed gets Keras'
    class back. Unpatching what is not patched does nothing. A cell that an
    open `patched()` block (in any thread) still holds stays patched until the
    last such block exits; a warning says so.
    """
    chosen = check_cells(cells, "unpatch")
    with _lock:
        _explicit.difference_update(chosen)
        _apply()
        held = [_CLASS_NAMES[c] for c in chosen if c in _applied]
    if held:
        warnings.warn(f"fastrnn.unpatch(): {', '.join(held)} stay(s) patched while a "
                      "fastrnn.patched() block is open; Keras' class comes back when the "
                      "last one exits", stacklevel=2)


@contextlib.contextmanager
def patched(cells=None):
    """Patch inside a `with` block (or as a decorator), restoring what was before.

    Blocks nest and may overlap across threads: a cell stays patched until the
    last block holding it exits (or forever, if `patch()` turned it on).
    The patch is process-wide, so other threads see it while a block is open.

    Example:
        >>> import fastrnn, keras
        >>> with fastrnn.patched(cells=["gru"]):
        ...     layer = keras.layers.GRU(8)
        >>> type(layer) is fastrnn.GRU, keras.layers.GRU is fastrnn.GRU
        (True, False)
    """
    chosen = check_cells(cells, "patched")
    with _lock:
        for cell in chosen:
            _holds[cell] = _holds.get(cell, 0) + 1
        _apply()
    try:
        yield
    finally:
        with _lock:
            for cell in chosen:
                _holds[cell] -= 1
            _apply()
