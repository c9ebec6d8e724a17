"""The gateway's settings: its HTTP server (:class:`GatewaySettings`), and
:func:`load_settings`, everything ``python -m lbmiddleware serve`` reads from ``LB_*``.

Apart from :mod:`lbmiddleware.gateway` (which imports the ASGI middleware) and standard
library only: ``lbmiddleware/__init__.py`` imports it so that its variables are known to the
typo check, and ``serve --help`` lists the settings without loading the proxy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .core.forwarding import ForwardingSettings
from .core.settings import (
    BaseSettings,
    CountLike,
    DurationLike,
    FrontEndSettings,
    Settings,
    parse_positive_count,
    parse_positive_duration,
    resolve,
    setting,
)
from .proxy.settings import ProxySettings

__all__ = ["GatewaySettings", "GROUPS", "load_settings", "parse_listen", "MAX_SERVER_DURATION"]

# The gateway's servers keep their durations in fixed-size integers (granian crashed
# on a header timeout of 1e17 s at its start, and on a shutdown timeout of 1e12 s on
# SIGTERM): one day is far beyond any sensible value and far within every server's range.
MAX_SERVER_DURATION = 86400.0


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


def _listen(value: Any) -> str:
    host, port = parse_listen(str(value))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("auto", "granian", "uvicorn"):
        raise ValueError("expected auto, granian or uvicorn")
    return text


def _server_duration(value: Any) -> float:
    seconds = parse_positive_duration(value)
    if seconds > MAX_SERVER_DURATION:
        raise ValueError(f"at most {MAX_SERVER_DURATION:.0f} s (one day)")
    return seconds


@dataclasses.dataclass(frozen=True)
class GatewaySettings(BaseSettings):
    """The gateway's HTTP server: which one, where it listens, and its bounds."""

    server: str = dataclasses.field(
        default="auto",
        metadata=setting("LB_SERVER", _server,
                         "gateway HTTP server: auto (granian if installed, "
                         "else uvicorn) | granian | uvicorn"))
    listen: str = dataclasses.field(
        default="127.0.0.1:8000",
        metadata=setting("LB_LISTEN", _listen,
                         "gateway address HOST:PORT (serve command)"))
    shutdown_timeout: float = dataclasses.field(
        default=30.0,
        metadata=setting("LB_SHUTDOWN_TIMEOUT", _server_duration,
                         "gateway: on SIGTERM, seconds that requests in flight "
                         "may take before their connections are closed"))
    header_timeout: float = dataclasses.field(
        default=30.0,
        metadata=setting("LB_HEADER_TIMEOUT", _server_duration,
                         "gateway: seconds a client has to send a request head "
                         "before its connection is closed"))
    max_connections: int = dataclasses.field(
        default=512,
        metadata=setting("LB_MAX_CONNECTIONS", parse_positive_count,
                         "gateway: client connections served at once; more wait "
                         "(granian) or get 503 (uvicorn)"))

    readers: ClassVar[str] = "the gateway (python -m lbmiddleware serve): set its LB_ variable"

    if TYPE_CHECKING:
        # The constructor as type checkers see it: each field as its cast takes it (see
        # Settings in core/settings.py).
        def __init__(self, server: str = ..., listen: str = ...,
                     shutdown_timeout: DurationLike = ..., header_timeout: DurationLike = ...,
                     max_connections: CountLike = ...) -> None: ...

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        return parse_listen(self.listen)


#: The classes of settings the gateway reads, in the order ``serve --help`` lists them.
GROUPS = (Settings, ForwardingSettings, ProxySettings, GatewaySettings)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> FrontEndSettings:
    """The gateway's settings from ``LB_*`` variables (``environ`` for tests), keyword
    arguments winning; raises ``ConfigError``. ``settings[GatewaySettings]`` is the
    server's, ``settings.core`` the Balancer's, and so on."""
    return resolve("load_settings", GROUPS, overrides, environ=environ, from_env=True)
