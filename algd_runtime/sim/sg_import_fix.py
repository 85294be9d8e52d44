"""Make safety-gymnasium 1.0.0 importable on Python >= 3.11.

Its asset dataclasses use ``COLOR[...]`` numpy arrays as field defaults. Python 3.11's
dataclasses reject any default whose class has ``__hash__ = None`` (ndarray does), so the
import dies with "mutable default <class 'numpy.ndarray'> for field color is not allowed".
We never touch site-packages: a ``sys.meta_path`` finder wraps the loader of
``safety_gymnasium.assets.color`` and, right after that module runs, swaps every array in
``COLOR`` for a view of an ndarray subclass with an identity hash. Values, dtype and shape
are unchanged; the arrays stay shared between instances exactly as on Python 3.10.
"""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np

TARGET = "safety_gymnasium.assets.color"


class HashableArray(np.ndarray):
    """An ndarray that dataclasses accept as a default (identity hash, like object)."""

    __hash__ = object.__hash__


def needed() -> bool:
    """True on interpreters whose dataclasses reject unhashable defaults."""
    return sys.version_info >= (3, 11)


def patch_colors(module) -> None:
    """Replace each array in ``module.COLOR`` by a hashable view (idempotent)."""
    colors = getattr(module, "COLOR", None)
    if not isinstance(colors, dict):
        return
    for key, value in colors.items():
        if isinstance(value, np.ndarray) and not isinstance(value, HashableArray):
            colors[key] = value.view(HashableArray)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches COLOR before anyone can use it."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        patch_colors(module)

    def __getattr__(self, name):
        # get_source, get_filename, ... : tracebacks and inspect keep working.
        return getattr(self._inner, name)


class _ColorFixFinder(importlib.abc.MetaPathFinder):
    """Finds the color module with the other finders and wraps its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def installed() -> bool:
    return any(isinstance(f, _ColorFixFinder) for f in sys.meta_path)


def install() -> None:
    """Install the fix; safe to call any number of times, a no-op where not needed."""
    if not needed():
        return
    module = sys.modules.get(TARGET)
    if module is not None:
        # Already imported (e.g. a failed earlier import left it behind): patch in place
        # so that a retry of ``import safety_gymnasium`` succeeds.
        patch_colors(module)
        return
    if not installed():
        sys.meta_path.insert(0, _ColorFixFinder())
