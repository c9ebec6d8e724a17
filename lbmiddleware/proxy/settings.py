"""The reverse proxy's settings (:class:`ProxySettings`): what the ASGI and WSGI
middlewares and the gateway read besides the Balancer's and the forwarding settings.

Standard library only: ``lbmiddleware/__init__.py`` imports this module, so that its
``LB_`` variables are known to the typo check wherever settings are read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from ..core.settings import BaseSettings, FlagLike, SizeLike, parse_flag, parse_size, setting
from .client import Network
from .routing import normalize_prefix

__all__ = ["ProxySettings", "NetworksLike"]

#: Trusted proxies: addresses or CIDRs (text or networks), one network, or one comma-separated
#: string.
NetworksLike: TypeAlias = Iterable[str | Network] | Network | str


def _prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a path (a string such as '/api')")
    return normalize_prefix(value)


def _networks(value: Any) -> tuple[Network, ...]:
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        items = [value]         # one network, not its addresses one by one
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError("not an address or CIDR, a list of them or a comma-separated string")
    networks: list[Network] = []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR") from None
    return tuple(networks)


@dataclasses.dataclass(frozen=True)
class ProxySettings(BaseSettings):
    """Which requests are proxied (``prefix``, ``strip_prefix``), whose
    ``X-Forwarded-For`` is believed, how much of a request body is kept for a retry, and
    whether each request is logged (``access_log``: :mod:`lbmiddleware.proxy.access`)."""

    prefix: str = dataclasses.field(
        default="/",
        metadata=setting("LB_PREFIX", _prefix,
                         "requests under this path are proxied; others go to the app (the "
                         "gateway, which has none, answers them 404)"))
    strip_prefix: bool = dataclasses.field(
        default=False,
        metadata=setting("LB_STRIP_PREFIX", parse_flag,
                         "remove the prefix from the path sent upstream"))
    trusted_proxies: tuple[Network, ...] = dataclasses.field(
        default=(),
        metadata=setting("LB_TRUSTED_PROXIES", _networks,
                         "CIDRs whose X-Forwarded-For is believed"))
    retry_buffer: int = dataclasses.field(
        default=65536,
        metadata=setting("LB_RETRY_BUFFER", parse_size,
                         "request bodies up to this size are kept to replay on a retry"))
    access_log: bool = dataclasses.field(
        default=False,
        metadata=setting("LB_ACCESS_LOG", parse_flag,
                         "one INFO line per proxied request on the lbmiddleware.access "
                         "logger (logfmt: client, method, path, status, backend, attempts, "
                         "duration_ms)"))

    readers: ClassVar[str] = ("the reverse proxies (LoadBalancerMiddleware, WSGILoadBalancer, "
                              "the gateway): give it there")

    if TYPE_CHECKING:
        # The constructor as type checkers see it: each field as its cast takes it (see
        # Settings in core/settings.py).
        def __init__(self, prefix: str = ..., strip_prefix: FlagLike = ...,
                     trusted_proxies: NetworksLike = ...,
                     retry_buffer: SizeLike = ..., access_log: FlagLike = ...) -> None: ...
