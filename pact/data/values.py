"""Typed values read from data files: booleans that mean what they say.

A CSV cell is a string and ``bool("false")`` is ``True``; :func:`parse_bool`
accepts only real booleans, the integers 0/1, and the strings
``true``/``false``/``0``/``1`` (any case, surrounding spaces ignored), and
raises :class:`~pact.data.sources.PromptSourceError` naming where the value
came from for anything else (``"yes"``, ``2``, ``None``, ``0.5``).
"""
from __future__ import annotations

from typing import Any

from .sources import PromptSourceError

__all__ = ["parse_bool"]

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def parse_bool(value: Any, where: str) -> bool:
    """``value`` as a bool (see the module doc); ``where`` names the file, row and column in the error."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # numpy.bool_ / int64 from pandas
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise PromptSourceError(f"{where}: {value!r} is not a boolean; use true/false (or 1/0)")
