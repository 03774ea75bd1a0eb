"""Which route each fastrnn layer ran on, for `python -m fastrnn --report`.

The layers call `note` when they trace a call (not per step): once with the
fast route's name ("native op", "numpy_function fallback", "cuda"), or with
route "keras" and the reason when they run Keras' own loop. `report()` turns
what was noted into the text the report prints. Imports nothing heavy.
"""

import threading

DEVICES = ("auto", "cpu", "cuda")  # a layer's `device`
KERAS = "keras"
KERAS_CUDNN = "Keras' cuDNN"   # on a GPU, where Keras' own layer runs cuDNN

_lock = threading.Lock()
_seen = set()   # (id(layer), layer name, route, reason)
_notes = []     # (layer name, class name, route, reason) in the order first seen


def note(layer, route, reason=None):
    """Record that `layer` ran on `route` (once per layer and route).

    Args:
        layer: the Keras layer being called.
        route: "native op", "numpy_function fallback", "cuda", or "keras" for
            Keras' own loop (then `reason` says why).
        reason: why Keras' loop ran, or None.
    """
    name = getattr(layer, "name", None) or "?"
    key = (id(layer), name, route, reason)
    if key in _seen:
        return
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
        _notes.append((name, type(layer).__name__, route, reason))


def check_device(device):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def notes():
    """What was noted: a list of (layer name, class name, route, reason)."""
    with _lock:
        return list(_notes)


def clear():
    """Forget what was noted (tests)."""
    with _lock:
        _seen.clear()
        _notes.clear()


def describe(route, reason=None):
    """The words a report uses for a route."""
    if route == KERAS:
        return "Keras' own loop" + (f": {reason}" if reason else "")
    if reason:
        return f"{route}: {reason}"
    return route


def report():
    """Which recurrent layers ran on which route, as text (one line a layer and route)."""
    rows = notes()
    if not rows:
        return ("fastrnn: no fastrnn layer ran in this process. Layers built before "
                "fastrnn.patch() (or python -m fastrnn) stay Keras' own.")
    width = max(len(f"{name} ({cls})") for name, cls, _, _ in rows)
    lines = [f"fastrnn: {len(rows)} recurrent layer route(s) this process ran:"]
    for name, cls, route, reason in rows:
        lines.append(f"  {f'{name} ({cls})':<{width}}  {describe(route, reason)}")
    return "\n".join(lines)


def fast_route(device, layer=None):
    """The name of the route fastrnn's own ops take for `device` (and `layer`'s cell)."""
    from fastrnn.ops import recurrence

    # recurrence.route_name is the lead's (native op / numpy_function fallback / cuda);
    # before it exists every fast call goes through tf.numpy_function.
    route_name = getattr(recurrence, "route_name", None)
    if route_name is None:
        return "numpy_function fallback"
    name = route_name(device)
    if name == "native op" and layer is not None:
        # route_name does not know the cell: native ops exist cell by cell, and a
        # cell without its op (recurrence calls native.<cell>) runs numpy_function.
        op = next((_OPS[c.__name__] for c in type(layer).__mro__
                   if c.__module__.startswith("fastrnn.layers") and c.__name__ in _OPS), None)
        native = recurrence.native_route(device)
        if op is not None and native is not None and not hasattr(native, op):
            return "numpy_function fallback"
    return name


# The ops function of each fastrnn layer class (fastrnn.ops.<name>, ops.native.<name>).
_OPS = {"GRU": "gru", "LSTM": "lstm", "SimpleRNN": "simple_rnn", "MinGRU": "mingru"}
