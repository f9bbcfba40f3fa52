"""Argument checks at the public boundary: each error names the argument, what was expected and what came in."""

from __future__ import annotations

import math
import numbers
from typing import Any


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
