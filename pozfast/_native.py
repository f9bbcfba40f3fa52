"""Loads the native module ``pozfast._C`` once; a missing or broken build never breaks ``import pozfast``.

The CPU kernels come in one build per instruction set and use the widest that the CPU runs; the
environment variable ``POZFAST_CPU_ISA`` (``default``, ``avx2``, ``avx512``), read at import, picks
another one (``pozfast._C.cpu_isas()`` lists them).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_ISA_ENV = "POZFAST_CPU_ISA"

_module: ModuleType | None
_error: str | None
_cpu_error: str | None = None
try:
    _module = importlib.import_module("pozfast._C")
    _error = None
except ImportError as exc:  # not built, or built for another platform
    _module = None
    _error = f"{type(exc).__name__}: {exc}"

if _module is not None and os.environ.get(_ISA_ENV):
    try:
        _module.set_cpu_isa(os.environ[_ISA_ENV])
    except ValueError as exc:
        _cpu_error = f"{_ISA_ENV}={os.environ[_ISA_ENV]}: {exc}"


def native() -> ModuleType | None:
    """The loaded ``pozfast._C`` module, or None when it could not be imported."""
    return _module


def load_error() -> str | None:
    """Why ``pozfast._C`` could not be imported, or None when it was."""
    return _error


def cpu_error() -> str | None:
    """Why the loaded module's CPU kernels must not run (a ``POZFAST_CPU_ISA`` it cannot honour), or None."""
    return _cpu_error
