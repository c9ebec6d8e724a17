"""Settings of the front-ends that forward requests: the requests adapter's
(:class:`ForwardingSettings`) and the middlewares' and gateway's (:class:`ProxySettings`).

Standard library only: the core's ``Settings.from_env`` loads this module to know every
``LB_`` variable before it calls one a typo.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

from ..core.settings import Settings, _count, _positive_duration, parse_flag, setting
from .rules import normalize_prefix

__all__ = ["ForwardingSettings", "ProxySettings", "parse_listen"]


def _prefix(value: Any) -> str:
    return normalize_prefix(str(value))


def _listen(value: Any) -> str:
    host, port = parse_listen(str(value))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("auto", "granian", "uvicorn"):
        raise ValueError("expected auto, granian or uvicorn")
    return text


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)[bB]?\s*", str(value))
        if not match:
            raise ValueError("not a size (bytes, or a number with KB or MB)")
        number = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_count(value: Any) -> int:
    number = _count(value)
    if number == 0:
        raise ValueError("must be at least 1")
    return number


# The gateway's servers keep their durations in fixed-size integers (granian crashed
# on a header timeout of 1e17 s at its start, and on a shutdown timeout of 1e12 s on
# SIGTERM): one day is far beyond any sensible value and far within every server's range.
MAX_SERVER_DURATION = 86400.0


def _server_duration(value: Any) -> float:
    seconds = _positive_duration(value)
    if seconds > MAX_SERVER_DURATION:
        raise ValueError(f"at most {MAX_SERVER_DURATION:.0f} s (one day)")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` / ``"[::1]:8000"`` / ``":8000"`` -> ``(host, port)``."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"{host!r} is not a host name or address")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class ForwardingSettings(Settings):
    """The core's settings plus what every front-end that forwards a request has: the
    requests adapter's settings, and the base of the middlewares' :class:`ProxySettings`."""

    preserve_host: bool = dataclasses.field(
        default=False, metadata=setting("LB_PRESERVE_HOST", parse_flag,
                                        "send the client's Host upstream (default: the backend's)"))
    retry_non_idempotent: bool = dataclasses.field(
        default=False, metadata=setting("LB_RETRY_NON_IDEMPOTENT", parse_flag,
                                        "also retry POST and PATCH after the request was sent"))


@dataclasses.dataclass(frozen=True)
class ProxySettings(ForwardingSettings):
    """The forwarding settings plus those of the middlewares and the gateway."""

    prefix: str = dataclasses.field(
        default="/", metadata=setting("LB_PREFIX", _prefix,
                                      "requests under this path are proxied; others go to the app"))
    strip_prefix: bool = dataclasses.field(
        default=False, metadata=setting("LB_STRIP_PREFIX", parse_flag,
                                        "remove the prefix from the path sent upstream"))
    retry_buffer: int = dataclasses.field(
        default=65536, metadata=setting("LB_RETRY_BUFFER", _size,
                                        "request bodies up to this size are kept to replay on a retry"))
    server: str = dataclasses.field(
        default="auto", metadata=setting("LB_SERVER", _server,
                                         "gateway HTTP server: auto (granian if installed, "
                                         "else uvicorn) | granian | uvicorn"))
    listen: str = dataclasses.field(
        default="127.0.0.1:8000", metadata=setting("LB_LISTEN", _listen,
                                                   "gateway address HOST:PORT (serve command)"))
    shutdown_timeout: float = dataclasses.field(
        default=30.0, metadata=setting("LB_SHUTDOWN_TIMEOUT", _server_duration,
                                       "gateway: on SIGTERM, seconds that requests in flight "
                                       "may take before their connections are closed"))
    header_timeout: float = dataclasses.field(
        default=30.0, metadata=setting("LB_HEADER_TIMEOUT", _server_duration,
                                       "gateway: seconds a client has to send a request head "
                                       "before its connection is closed"))
    max_connections: int = dataclasses.field(
        default=512, metadata=setting("LB_MAX_CONNECTIONS", _positive_count,
                                      "gateway: client connections served at once; more wait "
                                      "(granian) or get 503 (uvicorn)"))

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        return parse_listen(self.listen)
