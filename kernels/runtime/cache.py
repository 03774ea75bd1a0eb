"""Numba's disk cache keyed on every source file the cached code was compiled from.

Numba keys a cached function on its own source file alone. But the code it caches
holds every @njit function it calls, compiled in: the cores hold `_microgemm`,
`_cpu_common` and `_math`, the TensorFlow ops' kernels hold `_capi` and the cells'
`run_*` wrappers. A change to one of those files (a `git pull` in a checkout, an
edit) left the callers' cached code as it was: measured here, a changed packing
loop ran in its old form until the cache files were deleted by hand, and a change
to a callee's arguments would run new callers against old code.

So the functions of fastrnn's source trees get a stamp that also covers the trees:
a hash of every .py file under `kernels/` (and, for the TensorFlow ops, under
`fastrnn/ops/` too). A change to any of them recompiles what was cached from
them, once, in the place Numba would have cached it anyway. Numba has no public
hook for this; `numba.core.caching` is used here only (tested on Numba 0.68.1),
and where it differs the standard cache is left as it is.
"""

import functools
import hashlib
import os

_KERNELS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kernels/
_trees = {_KERNELS: ()}  # tree -> the trees whose code its functions also compile in


def add_tree(path, depends=(_KERNELS,)):
    """Functions under `path` are stamped with its hash and those of `depends`."""
    _trees[os.path.abspath(path)] = tuple(os.path.abspath(p) for p in depends)


def tree_hash(root):
    """SHA-256 over the relative paths and contents of every .py file under root."""
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as source:
                    digest.update(hashlib.sha256(source.read()).digest())
    return digest.hexdigest()


_tree_hash_once = functools.lru_cache(maxsize=None)(tree_hash)


def stamp_for(py_file):
    """The extra stamp for a function defined in py_file: None outside the trees."""
    path = os.path.abspath(py_file)
    for root, depends in sorted(_trees.items(), key=lambda item: -len(item[0])):
        if path.startswith(root + os.sep):
            return tuple(_tree_hash_once(tree) for tree in (*depends, root))
    return None


def _install():
    """Put TreeStampedLocator first in Numba's locator list; False where this Numba
    has no such list (then its standard cache is used as it is)."""
    try:
        from numba.core import caching

        base = caching._CacheLocator
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # Numba < 0.61
        if not isinstance(impl._locator_classes, list):
            return False
    except (ImportError, AttributeError):
        return False

    class TreeStampedLocator(base):
        """Wraps the locator Numba would pick; its source stamp also covers the tree."""

        def __init__(self, inner, extra):
            self._inner, self._extra = inner, extra

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return (self._inner.get_source_stamp(), self._extra)

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            extra = stamp_for(py_file)
            if extra is None:
                return None
            for other in impl._locator_classes:
                if other is not cls and not getattr(other, "_fastrnn", False):
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner, extra)
            return None

    TreeStampedLocator._fastrnn = True
    if not any(getattr(c, "_fastrnn", False) for c in impl._locator_classes):
        impl._locator_classes.insert(0, TreeStampedLocator)
    return True


INSTALLED = _install()
