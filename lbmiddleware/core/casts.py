"""The casts of the settings: each takes the raw value of a setting (the text of an ``LB_``
variable, or an already typed keyword) and returns it typed, or raises ``ValueError`` with
the reason; the settings machinery (:mod:`.settings`) turns that into a ``ConfigError``
naming the variable or argument and the value. Also the types each cast accepts, as the
settings classes declare them for type checkers, and :func:`format_duration`, a duration
written back as the settings spell it."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable
from typing import Any, TypeAlias

from .backend import Backend, Source

__all__ = [
    "parse_duration", "parse_positive_duration", "format_duration", "parse_flag", "parse_count",
    "parse_positive_count", "parse_size", "format_size", "parse_factor", "parse_statuses",
    "parse_dns_servers", "parse_balance_factor", "parse_ratio", "parse_rate", "parse_file",
    "BackendsLike", "CountLike", "DurationLike", "FlagLike", "SizeLike", "FactorLike",
    "StatusesLike", "ServersLike", "PercentLike", "RatioLike",
]

# A duration's text: a sign, then a number with an optional unit, or parts with a unit each,
# largest first ("1h30m", "2s500ms"); _UNITS in that order ("ms" divides by 1000: exact).
_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_DURATION = re.compile(rf"\s*(-?)\s*((?:{_NUMBER}\s*(?:ms|s|m|h)\s*)+|{_NUMBER}\s*)")
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)?\s*")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_FORMS = "seconds, or a number with ms, s, m or h, or such parts largest first: 1m30s"
_SIZE = re.compile(r"\s*(-?)\s*(\d+)\s*([kKmM]?)[bB]?\s*")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}

# -- what the casts accept, as a settings class's constructor declares it for type checkers:
#    the text of a variable or an already typed value. A field reads back as the cast's result
#    (``Settings(max_fails="3").max_fails`` is the int 3).

#: A count: ``3`` or ``"3"``.
CountLike: TypeAlias = int | str
#: A duration: seconds (``1.5``), or text (``"1.5"``, ``"10s"``, ``"250ms"``, ``"5m"``, ``"1h"``).
DurationLike: TypeAlias = float | str
#: A flag: ``True``, ``1``, or text (``"yes"``, ``"off"``, ...).
FlagLike: TypeAlias = bool | int | str
#: A size: bytes (``65536``), or text (``"65536"``, ``"64KB"``, ``"1MB"``).
SizeLike: TypeAlias = int | str
#: Backends: URLs, sources, :class:`Backend` and :class:`Source` objects, or one
#: comma-separated string of entries.
BackendsLike: TypeAlias = Iterable[str | Backend | Source] | str
#: A factor: ``1.4`` or ``"1.4"``.
FactorLike: TypeAlias = float | str
#: A percentage: ``125``, ``"125"``, ``"125%"``.
PercentLike: TypeAlias = int | str
#: A ratio: ``0.2``, ``"0.2"``, ``"20%"``, ``"off"``.
RatioLike: TypeAlias = float | str
#: HTTP statuses: ``200``, ``"200,204,300-399"``, or a list of statuses, ``"lo-hi"`` texts
#: and ``(lo, hi)`` ranges.
StatusesLike: TypeAlias = int | str | Iterable[int | str | tuple[int, int]]
#: Addresses of servers: ``"127.0.0.1:8600,[::1]:53"`` or a list of such texts.
ServersLike: TypeAlias = str | Iterable[str]


# -- casts: each takes the raw value (text or typed) and returns it typed, or raises
#    ValueError with the reason; the settings class turns that into a ConfigError naming
#    the variable or argument and the value.

def parse_duration(value: Any) -> float:
    """Seconds from ``1.5``, ``"1.5"``, ``"10s"``, ``"250ms"``, ``"5m"``, ``"1h"`` or parts
    largest first (``"1m30s"``, ``"1h30m"``, ``"2s500ms"``); never negative."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:           # an int beyond any float (10**400)
            raise ValueError("not a non-negative finite duration") from None
    else:
        seconds = _duration_text(str(value))
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("not a non-negative finite duration")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _duration_text(text: str) -> float:
    """Seconds from a duration's text (negative if it has a sign: the caller says so)."""
    match = _DURATION.fullmatch(text)
    units = list(_UNITS)
    seconds = 0.0
    for part in _PART.finditer(match.group(2)) if match else ():
        number, unit = float(part.group(1)), part.group(2) or "s"   # a bare number: seconds
        if unit not in units:           # each unit once, largest first ("1m30s", "2s500ms")
            match = None
            break
        del units[:units.index(unit) + 1]
        seconds += number / 1000.0 if unit == "ms" else number * _UNITS[unit]
    if not match:
        raise ValueError(f"not a duration ({_DURATION_FORMS})")
    return -seconds if match.group(1) else seconds


def parse_positive_duration(value: Any) -> float:
    """A duration (:func:`parse_duration`) greater than zero."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be greater than zero")
    return seconds


def format_duration(seconds: float, *, digits: int | None = None) -> str:
    """The way back: ``2.0`` -> ``"2s"``, ``0.25`` -> ``"250ms"``, ``1.5`` -> ``"1.5s"``: a
    duration as the settings spell it, so every text naming a limit (a failed attempt's
    "read timed out after 200ms", a probe's "timeout after 2s") spells it one way, and a
    person can give it back as a setting. ``digits``: the significant digits to keep, for a
    time measured rather than set (``0.2013`` -> ``"201ms"`` with 3)."""
    if digits is not None:
        seconds = float(f"{seconds:.{digits}g}")
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


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
        number = int(match.group(2)) * _SIZE_UNITS[match.group(3).lower()]
        number = -number if match.group(1) else number
    if number < 0:
        raise ValueError("must not be negative")
    return number


def format_size(size: int) -> str:
    """The way back: bytes as :func:`parse_size` reads them, in the largest unit that divides
    them (``65536`` -> ``"64KB"``, ``1536`` -> ``"1536"``), for ``--help`` and the docs."""
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_factor(value: Any) -> float:
    """A finite number of at least 1 from ``1.4`` or ``"1.4"``."""
    return _finite_number(value, 1.0)


def _finite_number(value: Any, least: float) -> float:
    """A finite number of at least ``least`` (a number or its text), the one copy of the
    rule :func:`parse_factor` and :func:`parse_rate` share."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("not a number") from None
    if math.isnan(number) or math.isinf(number) or number < least:
        raise ValueError(f"must be a finite number of at least {least}")
    return number


def parse_file(value: Any) -> str:
    """A path to a readable file, or ``""`` (none). Checked when the setting is read, so a
    typo is found at the start, not at the first https connection."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("not a path (a string such as '/etc/ssl/ca.pem')")
    path = os.fspath(value).strip()
    if not path:
        return ""
    if not os.path.isfile(path):
        raise ValueError("no such file" if not os.path.exists(path) else "not a file")
    if not os.access(path, os.R_OK):
        raise ValueError("the file is not readable")
    return path


def parse_balance_factor(value: Any) -> int:
    """A bounded-load factor in percent: ``0`` (off) or a whole number of at least 100
    (``125``, ``"125"``, ``"125%"``)."""
    if isinstance(value, bool):
        raise ValueError("not a percentage")
    text = str(value).strip().removesuffix("%").strip()
    try:
        number = int(text) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError("not a whole percentage (0: off, or 100 and more: 125, 150, 200)"
                         ) from None
    if number != 0 and number < 100:
        raise ValueError("must be 0 (off) or at least 100: a backend may hold this percent "
                         "of its fair share of the requests in flight")
    return number


def parse_ratio(value: Any) -> float:
    """A retry budget's ratio: a finite number of at least 0 (``0.2``, ``"20%"``), or
    ``off`` (no budget: :data:`math.inf`)."""
    if isinstance(value, bool):
        raise ValueError("not a ratio")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "unlimited", "false", "no"):
            return math.inf
        percent = text.endswith("%")
        try:
            number = float(text.removesuffix("%")) / (100.0 if percent else 1.0)
        except ValueError:
            raise ValueError("not a ratio (0.2, 20%, or off)") from None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("not a ratio (0.2, 20%, or off)") from None
    if math.isnan(number) or number < 0:
        raise ValueError("must be 0 or more (0.2: a retry per five requests), or off")
    return number


def parse_rate(value: Any) -> float:
    """A rate per second: a finite number of at least 0 (``10``, ``"2.5"``)."""
    return _finite_number(value, 0)


def _status(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an HTTP status")
    if isinstance(value, str) and re.fullmatch(r"\s*\d{3}\s*", value):
        value = int(value)
    if not isinstance(value, int) or not 100 <= value <= 599:
        raise ValueError(f"{value!r} is not an HTTP status (100-599)")
    return value


def parse_statuses(value: Any) -> tuple[tuple[int, int], ...]:
    """Ranges of HTTP statuses, ``(lo, hi)`` inclusive, from ``200``, ``"200,204,300-399"``
    or a list of statuses, ``"lo-hi"`` texts and ``(lo, hi)`` pairs; at least one."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        items: list[Any] = (str(value).split(",") if isinstance(value, str) else [value])
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ValueError("not a list of HTTP statuses")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, str) and "-" in item:
            low_text, _, high_text = item.partition("-")
            low, high = _status(low_text), _status(high_text)
        elif isinstance(item, tuple) and len(item) == 2:
            low, high = _status(item[0]), _status(item[1])
        elif isinstance(item, str) and not item.strip():
            continue
        else:
            low = high = _status(item)
        if low > high:
            raise ValueError(f"range {low}-{high} is empty (the first status is larger)")
        ranges.append((low, high))
    if not ranges:
        raise ValueError("no status given (expected e.g. 200-399)")
    return tuple(ranges)


def parse_dns_servers(value: Any) -> tuple[str, ...]:
    """Resolver addresses as ``"ip:port"`` (IPv6 in brackets) from a comma-separated text or
    a list; empty: the system's resolvers.

    ``10.0.0.2:8600``; ``[::1]:8600`` (an IPv6 address with a port is bracketed); a bare
    address, ``10.0.0.2`` or ``::1``, means port 53. A bare IPv6 address whose last group
    could be a port of the rest (``::1:8600``, meant as ``[::1]:8600`` or the address
    ``::1:8600``?) is refused as ambiguous, with both bracketed spellings."""
    items = value.split(",") if isinstance(value, str) else list(value)
    servers: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an address text")
        text = item.strip()
        if not text:
            continue
        host, port_text = text, "53"
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{text!r} is not ip:port (IPv6: [address]:port)")
            if rest:
                port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        elif ":" in text:
            _ambiguous(text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address "
                             "(a resolver is named by its address)") from None
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r} has port {port_text!r}: not 1-65535")
        shown = f"[{address}]" if address.version == 6 else str(address)
        servers.append(f"{shown}:{int(port_text)}")
    return tuple(servers)


def _ambiguous(text: str) -> None:
    """A bare IPv6 address is port 53, unless its last group reads as a port of an address
    made of the rest: then which was meant cannot be told."""
    head, _, tail = text.rpartition(":")
    if not (tail.isascii() and tail.isdigit() and 0 < int(tail) < 65536):
        return
    try:
        ipaddress.IPv6Address(head)
        ipaddress.IPv6Address(text)
    except ValueError:
        return
    raise ValueError(f"{text!r} is ambiguous: write [{head}]:{tail} for port {tail} of "
                     f"{head}, or [{text}] for that address on port 53")
