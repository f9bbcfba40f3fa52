"""Argument checks at the public boundary: each error names the argument, what was expected and what came in."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    """A Python or numpy integer (bool, float and str are refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def positive_int(value: Any, name: str) -> int:
    return integer(value, name, minimum=1)


def optional_positive_int(value: Any, name: str) -> int | None:
    return None if value is None else positive_int(value, name)


def real(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
         high_open: bool = False) -> float:
    """A finite real number (bool and str refused) within ``[low, high]`` (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return value


def names(value: Any, name: str) -> list[str]:
    """A list of strings; a bare string is refused (it would be read as a list of letters)."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of names, got the string {value!r}; write [{value!r}]")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of names, got {type(value).__name__}") from None
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must hold strings, got {bad[:3]!r}")
    return items


def instance(value: Any, cls: type, name: str, what: str) -> Any:
    """``value`` if it is a ``cls``; ``what`` says what was expected (e.g. ``"a pozfast.APoZReport"``)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def optional_function(value: Any, name: str, what: str) -> Callable | None:
    """None or a callable; ``what`` is its signature in words (e.g. ``"batch -> model input"``)."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function {what}, got {type(value).__name__} {value!r}")
    return value


def batch_iterable(value: Any, name: str, *, reusable: bool = False) -> Iterable:
    """An iterable of batches; ``reusable``: one that can be iterated again, not an iterator or generator
    (a second pass over those silently sees no batches)."""
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of batches (a DataLoader or a list), got "
                        f"{type(value).__name__}")
    if reusable and isinstance(value, Iterator):
        raise TypeError(f"{name} must be iterable more than once (a DataLoader or a list), got the "
                        f"{type(value).__name__}, which the first pass would use up")
    return value


def device(value: Any, name: str = "device") -> torch.device:
    """A ``torch.device`` or its name, of a kind this machine has (``"cuda:7"`` on a 2-GPU machine is refused),
    as tensors made there report it: ``"cuda"`` is the current CUDA device with its index, ``"cpu:0"`` is
    ``cpu``."""
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, numbers.Integral)):
        raise TypeError(f"{name} must be a torch device such as 'cpu' or 'cuda:0', got {type(value).__name__}")
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda:0', got {value!r}") from None
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu, torch.mps...
    available = getattr(backend, "is_available", lambda: True)()
    count = getattr(backend, "device_count", None)
    if not available or (dev.index is not None and count is not None and dev.index >= count()):
        raise ValueError(f"{name} {str(dev)!r} is not available on this machine "
                         f"({count() if available and count else 0} {dev.type} devices)")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def folder_path(value: str | os.PathLike, name: str) -> Path:
    """A folder path that is a folder or does not exist yet (it is created when written)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} {path} is not a folder; give a folder path")
    return path
