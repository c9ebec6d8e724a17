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

from .core.casts import format_duration, parse_file
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
from .errors import ConfigError
from .proxy.settings import ProxySettings

__all__ = ["GatewaySettings", "GROUPS", "load_settings", "parse_listen", "MAX_SERVER_DURATION",
           "LOG_LEVELS", "EVERY_INTERFACE"]

# The gateway's servers keep their durations in fixed-size integers (granian crashed
# on a header timeout of 1e17 s at its start, and on a shutdown timeout of 1e12 s on
# SIGTERM): one day is far beyond any sensible value and far within every server's range.
MAX_SERVER_DURATION = 86400.0

DEFAULT_LISTEN = "127.0.0.1:8000"


#: What ``:8000`` (no host) listens on: every IPv4 interface, as most servers read it
#: (gunicorn's -b, Go's net.Listen, Docker's -p). ``[::]:8000`` is every IPv6 one.
EVERY_INTERFACE = "0.0.0.0"


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` / ``"[::1]:8000"`` -> ``(host, port)``; ``":8000"`` is every
    interface (:data:`EVERY_INTERFACE`)."""
    text = text.strip()
    scheme, slashes, rest = text.partition("://")
    if slashes:             # 'http://127.0.0.1:8000': an address, not a URL
        raise ValueError(f"an address HOST:PORT, not a URL: {rest.rstrip('/') or 'HOST:PORT'}"
                         if scheme.lower() in ("http", "https") else
                         "an address HOST:PORT, not a URL")
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:       # '::1:0' could be [::1]:0 or the address ::1:0: written as URLs are
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    host = host or EVERY_INTERFACE
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        hint = f" (every interface: :{port})" if host == "*" else ""      # nginx's *:8000
        raise ValueError(f"{host!r} is not a host name or address{hint}")
    return host, int(port)


def _listen(value: Any) -> str:
    host, port = parse_listen(str(value))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _admin_listen(value: Any) -> str:
    """An address as :func:`_listen` spells it, or ``""``: the admin listener is off."""
    return _listen(value) if str(value).strip() else ""


#: The levels ``LB_LOG_LEVEL`` takes, lowest first (``logging``'s names, in lower case).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(value: Any) -> str:
    text = str(value).strip().lower()
    text = {"warn": "warning", "fatal": "critical"}.get(text, text)
    if text not in LOG_LEVELS:
        raise ValueError(f"expected {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
    return text


#: The gateway's servers, as ``LB_SERVER`` names them (``auto``: the first installed of the
#: others, in this order).
SERVER_NAMES = ("auto", "fast", "granian", "uvicorn")
#: At most this many worker processes (``LB_WORKERS``): far beyond any machine's cores.
MAX_WORKERS = 256


def _server(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in SERVER_NAMES:
        raise ValueError("expected auto, fast, granian or uvicorn")
    return text


def _workers(value: Any) -> int:
    count = parse_positive_count(value)
    if count > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS}")
    return count


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
                         "gateway HTTP server: auto (fast if uvloop and httptools are "
                         "installed, else granian, else uvicorn) | fast | granian | uvicorn"))
    workers: int = dataclasses.field(
        default=1,
        metadata=setting("LB_WORKERS", _workers,
                         "gateway: worker processes sharing the port (SO_REUSEPORT), each "
                         "with its own pool state; more than 1 needs the fast server"))
    listen: str = dataclasses.field(
        default=DEFAULT_LISTEN,
        metadata=setting("LB_LISTEN", _listen,
                         "gateway address HOST:PORT; :8000 means every interface "
                         "(0.0.0.0:8000), [::]:8000 every IPv6 interface; port 0 picks a "
                         "free one"))
    admin_listen: str = dataclasses.field(
        default="",
        metadata=setting("LB_ADMIN_LISTEN", _admin_listen,
                         "gateway: address HOST:PORT of the admin listener (/status, "
                         "/status.json, /metrics, /ready), as LB_LISTEN reads it; empty: off"))
    shutdown_timeout: float = dataclasses.field(
        default=30.0,
        metadata=setting("LB_SHUTDOWN_TIMEOUT", _server_duration,
                         "gateway: on SIGTERM, time requests in flight may take before their "
                         "connections are closed (at most one day)", show=format_duration))
    header_timeout: float = dataclasses.field(
        default=30.0,
        metadata=setting("LB_HEADER_TIMEOUT", _server_duration,
                         "gateway: time a client has to send a request head (on the admin "
                         "port too) before its connection is closed (at most one day)",
                         show=format_duration))
    max_connections: int = dataclasses.field(
        default=512,
        metadata=setting("LB_MAX_CONNECTIONS", parse_positive_count,
                         "gateway: client connections served at once; more get 503 (fast, "
                         "uvicorn) or wait (granian)"))
    log_level: str = dataclasses.field(
        default="info",
        metadata=setting("LB_LOG_LEVEL", _log_level,
                         "gateway: lowest level logged: debug | info | warning | error "
                         "| critical (LB_ACCESS_LOG's lines are written whatever it is)"))

    tls_cert: str = dataclasses.field(
        default="",
        metadata=setting("LB_TLS_CERT", parse_file,
                         "gateway: certificate chain (PEM file) to serve https with; empty: "
                         "plain http"))
    tls_key: str = dataclasses.field(
        default="",
        metadata=setting("LB_TLS_KEY", parse_file,
                         "gateway: the certificate's private key (PEM file)"))

    readers: ClassVar[str] = "the gateway (python -m lbmiddleware serve): set its LB_ variable"

    if TYPE_CHECKING:
        # The constructor as type checkers see it: each field as its cast takes it (see
        # Settings in core/settings.py).
        def __init__(self, server: str = ..., workers: CountLike = ..., listen: str = ...,
                     admin_listen: str = ...,
                     shutdown_timeout: DurationLike = ..., header_timeout: DurationLike = ...,
                     max_connections: CountLike = ..., log_level: str = ...,
                     tls_cert: str = ..., tls_key: str = ...) -> None: ...

    def _check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = (("LB_TLS_CERT", "LB_TLS_KEY") if self.tls_cert
                              else ("LB_TLS_KEY", "LB_TLS_CERT"))
            raise ConfigError(f"{given} is set but {missing} is empty: TLS needs the "
                              f"certificate and its key")
        # The admin port is the status app's alone, never shared with proxied paths.
        admin = self.admin_address
        if admin is not None and _same_listener(admin, self.listen_address):
            raise ConfigError(
                f"LB_ADMIN_LISTEN (admin_listen) has value {self.admin_listen!r}: the address "
                f"of LB_LISTEN (listen), which has value {self.listen!r}"
                f"{' (its default)' if self.listen == DEFAULT_LISTEN else ''}; the admin "
                f"listener needs a port of its own: set LB_ADMIN_LISTEN to another port "
                f"(port 0 picks a free one)")

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        return parse_listen(self.listen)

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """``admin_listen`` as ``(host, port)``; ``None`` when the admin listener is off."""
        return parse_listen(self.admin_listen) if self.admin_listen else None


_ANY_ADDRESS = ("0.0.0.0", "::")


def _same_listener(one: tuple[str, int], other: tuple[str, int]) -> bool:
    """Whether two addresses would claim one listener: the same port (not 0, which picks a
    free one each) on the same host, or on a host and the wildcard address."""
    return one[1] == other[1] != 0 and (
        one[0] == other[0] or one[0] in _ANY_ADDRESS or other[0] in _ANY_ADDRESS)


#: The classes of settings the gateway reads, in the order ``serve --help`` lists them.
GROUPS = (Settings, ForwardingSettings, ProxySettings, GatewaySettings)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> FrontEndSettings:
    """The gateway's settings from ``LB_*`` variables (``environ`` for tests), keyword
    arguments winning; raises ``ConfigError``. ``settings[GatewaySettings]`` is the
    server's, ``settings.core`` the Balancer's, and so on."""
    return resolve("load_settings", GROUPS, overrides, environ=environ, from_env=True)
