"""Checks of the values users hand the library (numbers, texts), each failing with one `OpenUniError` line that
names the setting. NumPy and other integer types count as integers, booleans do not; a real number must be finite.
"""

from __future__ import annotations

import math
import numbers

from .errors import OpenUniError


def integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as a plain int within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OpenUniError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise OpenUniError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise OpenUniError(f"{name} must be at most {high}, got {value}")
    return value


def real(value, name: str) -> float:
    """`value` as a finite float (NaN would silently turn guidance off, inf gives black images)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OpenUniError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise OpenUniError(f"{name} must be a finite number, got {value}")
    return float(value)


def text_list(value, name: str) -> list[str]:
    """One text or a list/tuple of texts -> a list of texts (a dict would otherwise give its keys)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise OpenUniError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise OpenUniError(f"{name} must be a string or a list of strings; it holds a {type(item).__name__}: "
                               f"{item!r}")
    return list(value)
