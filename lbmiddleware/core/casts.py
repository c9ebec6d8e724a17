"""The casts of the settings: each takes the raw value of a setting (the text of an ``LB_``
variable, or an already typed keyword) and returns it typed, or raises ``ValueError`` with
the reason; the settings machinery (:mod:`.settings`) turns that into a ``ConfigError``
naming the variable or argument and the value. Also the types each cast accepts, as the
settings classes declare them for type checkers."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, TypeAlias

from .backend import Backend

__all__ = [
    "parse_duration", "parse_positive_duration", "parse_flag", "parse_count",
    "parse_positive_count", "parse_size",
    "BackendsLike", "CountLike", "DurationLike", "FlagLike", "SizeLike",
]

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")
_SIZE = re.compile(r"\s*(\d+)\s*([kKmM]?)[bB]?\s*")

# -- what the casts accept, as a settings class's constructor declares it for type checkers:
#    the text of a variable or an already typed value. A field reads back as the cast's result
#    (``Settings(max_fails="3").max_fails`` is the int 3).

#: A count: ``3`` or ``"3"``.
CountLike: TypeAlias = int | str
#: A duration: seconds (``1.5``), or text (``"1.5"``, ``"10s"``, ``"250ms"``).
DurationLike: TypeAlias = float | str
#: A flag: ``True``, ``1``, or text (``"yes"``, ``"off"``, ...).
FlagLike: TypeAlias = bool | int | str
#: A size: bytes (``65536``), or text (``"65536"``, ``"64KB"``, ``"1MB"``).
SizeLike: TypeAlias = int | str
#: Backends: URLs or :class:`Backend` objects, or one comma-separated string of URLs.
BackendsLike: TypeAlias = Iterable[str | Backend] | str


# -- casts: each takes the raw value (text or typed) and returns it typed, or raises
#    ValueError with the reason; the settings class turns that into a ConfigError naming
#    the variable or argument and the value.

def parse_duration(value: Any) -> float:
    """Seconds from ``1.5``, ``"1.5"``, ``"10s"`` or ``"250ms"``; never negative."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:           # an int beyond any float (10**400)
            raise ValueError("not a non-negative finite duration") from None
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("not a duration (seconds, or a number with 's' or 'ms')")
        seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError("not a non-negative finite duration")
    return seconds


def parse_positive_duration(value: Any) -> float:
    """A duration (:func:`parse_duration`) greater than zero."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_flag(value: Any) -> bool:
    """A boolean from ``True``/``False`` or ``1/0``, ``true/false``, ``yes/no``, ``on/off``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean (expected true/false, 1/0, yes/no, on/off)")


def parse_count(value: Any) -> int:
    """A non-negative integer from ``3`` or ``"3"`` (not ``2.5``, not ``True``)."""
    if isinstance(value, bool):
        raise ValueError("not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        number = int(value)
    else:
        raise ValueError("not an integer")
    if number < 0:
        raise ValueError("must not be negative")
    return number


def parse_positive_count(value: Any) -> int:
    """A count (:func:`parse_count`) of at least 1."""
    number = parse_count(value)
    if number == 0:
        raise ValueError("must be at least 1")
    return number


def parse_size(value: Any) -> int:
    """Bytes from ``65536``, ``"65536"``, ``"64KB"`` or ``"1MB"`` (KB and MB are 1024-based)."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.fullmatch(str(value))
        if not match:
            raise ValueError("not a size (bytes, or a number with KB or MB)")
        number = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if number < 0:
        raise ValueError("must not be negative")
    return number
