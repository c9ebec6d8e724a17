"""Who the client is: its address (believing ``X-Forwarded-For`` only from a trusted
proxy), the scheme it used (believing ``X-Forwarded-Proto`` only from a trusted proxy) and
the sticky key ``ip_hash`` balances on.

The rules: ``docs/contract.md``, "Proxying" / "Client address and sticky key".
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import AnyStr, cast

__all__ = ["ClientAddress", "client_scheme", "proto_scheme", "sticky_key", "parse_cookie",
           "Network"]

#: A trusted proxy's network, as :class:`ClientAddress` and the proxy's settings hold it.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    """The client's IP: the peer, or from ``X-Forwarded-For`` when the peer is trusted.

    ``X-Forwarded-For`` is believed only when the connection's peer is in
    ``trusted_proxies``; the client is then the rightmost address that is not a trusted
    proxy (each hop appends the address it saw). When every address is trusted, the
    leftmost is the client. An entry that is not an IP address ends the walk and the last
    trusted hop is the client: garbage is never used as a key (uvicorn
    ``--forwarded-allow-ips`` semantics otherwise).
    """

    def __init__(self, trusted_proxies: Iterable[str | Network] = ()) -> None:
        self.networks = tuple(
            n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
            else ipaddress.ip_network(str(n).strip(), strict=False)
            for n in trusted_proxies)
        self.is_trusted = functools.lru_cache(maxsize=1024)(self._is_trusted)

    def _is_trusted(self, address: str | None) -> bool:
        if not self.networks or not address:
            return False
        ip = _parse_ip(address)
        if ip is None:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, peer: str | None, forwarded_for: Iterable[str | bytes] = ()) -> str | None:
        """The client IP for a connection from ``peer`` with these ``X-Forwarded-For``
        values (one ``str`` or ``bytes`` per header, in order)."""
        if not self.networks or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in _text(value).split(",")]
        client = peer
        for hop in reversed(hops):
            ip = _parse_ip(hop)
            if ip is None:
                return client
            client = str(ip)
            if not self.is_trusted(client):
                return client
        return client


# The schemes a connection or an X-Forwarded-Proto may name, as the client's scheme: a
# WebSocket's ws and wss are its handshake's http and https (ASGI's scope says ws/wss).
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def proto_scheme(proto: str | bytes) -> str | None:
    """``http`` or ``https``, as an ``X-Forwarded-Proto`` value names it (a proxy's list,
    ``https, http``, gives its last entry: the word of the nearest proxy, the one trusted;
    any case; ``ws``/``wss`` read as ``http``/``https``); None when it names neither."""
    return _SCHEMES.get(_text(proto).rpartition(",")[2].strip().lower())


def client_scheme(scheme: str, forwarded_proto: Iterable[str | bytes] = ()) -> str:
    """The scheme the client used, ``http`` or ``https`` (the sticky cookie is ``Secure``
    for https; the redirects' origin reads the same words): a trusted proxy's
    ``X-Forwarded-Proto`` when it names one (``forwarded_proto``: its values, one per
    header, the last counting as in the header sent upstream; pass them only when the
    peer is trusted, as ``X-Forwarded-For`` to :class:`ClientAddress`), else the
    connection's ``scheme`` (ASGI's or WSGI's; ``ws``/``wss`` read as ``http``/``https``).
    A TLS terminator in front says ``https`` about a connection that reached us as plain
    http; Traefik says ``wss`` for a WebSocket's handshake."""
    values = forwarded_proto if isinstance(forwarded_proto, list) else list(forwarded_proto)
    if values:
        named = proto_scheme(values[-1])
        if named is not None:
            return named
    return _SCHEMES.get(scheme.lower(), "http")


def _text(value: str | bytes) -> str:
    """A header name or value as ``str`` (bytes on the wire are latin-1)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``::1`` or ``[::1]:80``; else None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_cookie(header: str) -> dict[str, str]:
    """Name -> value from a ``Cookie`` header (first occurrence wins; lenient)."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and name and name not in cookies:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


def sticky_key(hash_key: str, client_ip: str | None,
               headers: Iterable[tuple[AnyStr, AnyStr]]) -> str | None:
    """The ``ip_hash`` key for a request: ``client_ip``, ``header:NAME`` or ``cookie:NAME``.

    ``headers`` are ``str`` or ``bytes`` pairs. ``None`` when the header or cookie is
    absent (the balancer then spreads the request round-robin).
    """
    if hash_key == "client_ip":
        return client_ip
    kind, _, name = hash_key.partition(":")
    lower = name.lower()
    wanted = lower if kind == "header" else "cookie"
    size = len(wanted)
    # (a bytes name reads as latin-1, each of whose characters lowers to one character: a
    # bytes name of another length than the wanted one's cannot be it, and is passed over
    # without decoding; str names are read whole: U+0130 lowers to two characters)
    pairs = cast("Iterable[tuple[str | bytes, str | bytes]]", headers)
    values = [_text(v) for n, v in pairs
              if (len(n) == size or not isinstance(n, bytes)) and _text(n).lower() == wanted]
    if not values:
        return None
    if kind == "header":
        return ",".join(v.strip() for v in values)
    for value in values:
        cookie = parse_cookie(value).get(name)
        if cookie is not None:
            return cookie
    return None
