"""Loads the native module ``pozfast._C`` once; a missing or broken build never breaks ``import pozfast``."""

from __future__ import annotations

import importlib
from types import ModuleType

_module: ModuleType | None
_error: str | None
try:
    _module = importlib.import_module("pozfast._C")
    _error = None
except ImportError as exc:  # not built, or built for another platform
    _module = None
    _error = f"{type(exc).__name__}: {exc}"


def native() -> ModuleType | None:
    """The loaded ``pozfast._C`` module, or None when it could not be imported."""
    return _module


def load_error() -> str | None:
    """Why ``pozfast._C`` could not be imported, or None when it was."""
    return _error
