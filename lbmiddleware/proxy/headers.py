"""What the ASGI and WSGI middlewares share: the proxy rules, in one stdlib-only module.

Every rule here comes from ``SEMANTICS.md`` "Proxying" and "Retries":

* **Routing** — :func:`normalize_prefix`, :func:`match_prefix`: which requests are proxied,
  and the path that goes upstream (``strip_prefix``).
* **The upstream target** — :func:`join_target` joins a backend's base path with the
  request's path and query. The result is only ever a path: ``//evil``, ``/http://evil``,
  ``/\\evil`` stay paths and never name a host; CR, LF and NUL raise :class:`UnsafeRequest`.
  :func:`upstream_url` builds a full URL (for clients that take one, like requests) and
  checks that its host is the backend's.
* **Headers** — :data:`TEXT` (``str`` pairs, WSGI) and :data:`BINARY` (``bytes`` pairs,
  ASGI) are :class:`HeaderRules` with the same two methods:
  ``request_headers()`` drops hop-by-hop headers (and every header ``Connection`` names),
  the ``_`` spellings of proxy headers (``X_Forwarded_Host``) and the client's framing
  (``Content-Length``, ``Transfer-Encoding``: the outbound client frames the body itself),
  sets ``Host`` and ``X-Forwarded-For/Proto/Host``, and raises :class:`UnsafeRequest` on
  CR/LF/NUL; ``response_headers()`` drops hop-by-hop headers
  going back to the client.
* **Client IP and sticky key** — :class:`ClientAddress` believes ``X-Forwarded-For`` only
  from a peer in ``trusted_proxies`` and then takes the rightmost address that is not a
  trusted proxy; :func:`sticky_key` reads ``client_ip``, ``header:NAME`` or ``cookie:NAME``.
* **Retries** — :func:`may_retry`: connect failures for any method, after sending only
  idempotent methods with a replayable body, never once the client got a byte.
* **Errors** — :func:`error_response`: 502 / 503 + ``Retry-After`` / 504 (and 400 / 404 / 501)
  with a short plain-text body and nothing from a stack trace.

The settings these rules are configured by live in :mod:`lbmiddleware.proxy_settings`.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import urllib.parse
from typing import Any, AnyStr, Callable, Iterable, NamedTuple, Sequence

from ..core.backend import Backend
from ..errors import LBError

__all__ = [
    "UnsafeRequest", "NotProxied", "HeaderRules", "TEXT", "BINARY",
    "HOP_BY_HOP", "FRAMING", "PROXY_HEADERS", "PROXY_HEADER_PREFIXES", "IDEMPOTENT_METHODS",
    "normalize_prefix", "match_prefix", "quote_path", "join_target", "upstream_url",
    "ClientAddress", "sticky_key", "parse_cookie", "may_retry",
    "ErrorResponse", "error_response",
]

# RFC 9110 §7.6.1 (plus the non-standard Keep-Alive and Proxy-Connection): never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade",
})
# The client's message framing: never copied upstream; the outbound client frames the body.
FRAMING = frozenset({"content-length", "transfer-encoding"})
# Names the rules set or remove, and those a backend believes only from its proxy. Their
# ``_`` spellings are dropped from requests: CGI and WSGI servers (and many frameworks) read
# ``X_Forwarded_Host`` as ``X-Forwarded-Host``, merged with the proxy's value (nginx
# ``underscores_in_headers off``; gunicorn and waitress drop them too).
PROXY_HEADERS = HOP_BY_HOP | FRAMING | frozenset({
    "host", "forwarded", "x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
PROXY_HEADER_PREFIXES = ("x-forwarded-", "proxy-")
# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_UNSAFE_TEXT = re.compile(r"[\r\n\x00]")
_UNSAFE_BYTES = re.compile(rb"[\r\n\x00]")
# Bytes that may not appear raw in a request target (controls, space, DEL, non-ASCII, '#');
# they are percent-encoded, everything else goes upstream exactly as the client sent it.
_TARGET_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff#]")


class UnsafeRequest(LBError, ValueError):
    """The request cannot be forwarded safely (CR/LF/NUL in a header, path or query): 400."""

    status = 400


class NotProxied(UnsafeRequest):
    """The request asks for what the proxy cannot forward (a WebSocket upgrade): 501.

    Refused rather than sent on without its hop-by-hop ``Upgrade``: the backend would
    answer a plain GET, and the client would wait for a ``101`` that never comes.
    """

    status = 501


# -- routing and the upstream target ---------------------------------------------------

def normalize_prefix(prefix: str) -> str:
    """``"api/"`` -> ``"/api"``; ``""`` and ``"/"`` -> ``"/"``. Rejects CR/LF/NUL, ``?``, ``#``."""
    if _UNSAFE_TEXT.search(prefix) or "?" in prefix or "#" in prefix:
        raise ValueError("a path prefix has no control characters, '?' or '#'")
    text = "/" + prefix.strip().strip("/")
    return text


def match_prefix(prefix: str, path: str, strip: bool = False) -> str | None:
    """The path to send upstream if ``path`` is under ``prefix``, else ``None``.

    ``/api`` matches ``/api`` and ``/api/x`` but not ``/apix``. With ``strip`` the prefix
    is removed (``/api/x`` -> ``/x``, ``/api`` -> ``/``). A path with a ``.`` or ``..``
    segment after the prefix is not under it: ``/api/../admin`` is ``/admin`` to a backend
    that normalises paths, so it is left to the app (nginx matches normalised paths).
    """
    if prefix == "/":
        return path if path.startswith("/") else None
    if path.startswith(prefix):
        rest = path[len(prefix):]
        if "/." in rest and any(segment in (".", "..") for segment in rest.split("/")):
            return None
        if not rest:
            return "/" if strip else path
        if rest[0] == "/":
            return rest if strip else path
    return None


def join_target(base_path: AnyStr, path: AnyStr, query: AnyStr | None = None) -> AnyStr:
    """The request target for the backend: its base path + the request's path and query.

    ``str`` or ``bytes`` (all three the same type). The path stays a path whatever it
    looks like: the result always starts with ``/``, is never an absolute URL, and
    bytes that may not appear raw in a request line (space, controls, non-ASCII, ``#``)
    are percent-encoded. CR, LF or NUL raise :class:`UnsafeRequest`.
    """
    binary = isinstance(path, bytes)
    raw = (base_path + path) if binary else (base_path + path).encode("utf-8", "surrogateescape")
    raw_query = b"" if not query else (query if binary else query.encode("utf-8", "surrogateescape"))
    if _UNSAFE_BYTES.search(raw) or _UNSAFE_BYTES.search(raw_query):
        raise UnsafeRequest("CR, LF or NUL in the request path or query")
    if not raw.startswith(b"/"):
        raw = b"/" + raw
    if _TARGET_ESCAPE.search(raw):
        raw = _TARGET_ESCAPE.sub(_percent, raw)
    if raw_query:
        if _TARGET_ESCAPE.search(raw_query):
            raw_query = _TARGET_ESCAPE.sub(_percent, raw_query)
        raw = raw + b"?" + raw_query
    return raw if binary else raw.decode("ascii")


def quote_path(path: str | bytes) -> str:
    """Percent-encode a *decoded* path (ASGI ``scope["path"]``: pass ``str``, encoded as
    UTF-8; WSGI ``PATH_INFO``: pass ``environ["PATH_INFO"].encode("latin-1")``) so that it
    can go in a request target: ``%``, ``?``, ``#``, ``\\``, spaces and non-ASCII are encoded."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return urllib.parse.quote(raw, safe="/!$&'()*+,;=:@~-._")


def _percent(match: re.Match) -> bytes:
    return b"%%%02X" % match.group(0)[0]


def upstream_url(backend: Backend, target: str) -> str:
    """``scheme://host:port`` of ``backend`` + ``target`` (from :func:`join_target`).

    Raises :class:`UnsafeRequest` if the result would not name the backend's host: the
    host never comes from the request.
    """
    if not target.startswith("/"):
        raise UnsafeRequest(f"request target {target[:80]!r} is not a path")
    url = f"{backend.scheme}://{backend.netloc}{target}"
    parts = urllib.parse.urlsplit(url)
    if parts.netloc != backend.netloc or parts.scheme != backend.scheme:
        raise UnsafeRequest(f"request target {target[:80]!r} would change the upstream host")
    return url


# -- headers --------------------------------------------------------------------------------

class HeaderRules:
    """The header rules for one representation of header pairs: ``str`` or ``bytes``.

    Names are compared case-insensitively. Use :data:`TEXT` (WSGI, requests) or
    :data:`BINARY` (ASGI, raw wire bytes); both apply exactly the same rules.
    """

    def __init__(self, kind: type) -> None:
        word: Callable[[str], Any] = (lambda s: s.encode("latin-1")) if kind is bytes else str
        self._word = word
        self._hop = frozenset(map(word, HOP_BY_HOP))
        self._drop = frozenset(map(word, HOP_BY_HOP | FRAMING | {
            "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}))
        self._guarded = frozenset(map(word, PROXY_HEADERS))
        self._guarded_prefixes = tuple(map(word, PROXY_HEADER_PREFIXES))
        self._underscore = word("_")
        self._dash = word("-")
        self._connection = word("connection")
        self._upgrade = word("upgrade")
        self._websocket = word("websocket")
        self._comma = word(",")
        self._host = word("host")
        self._content_length = word("content-length")
        self._transfer_encoding = word("transfer-encoding")
        self._xff = word("x-forwarded-for")
        self._xfp = word("x-forwarded-proto")
        self._xfh = word("x-forwarded-host")
        self._xff_out = word("X-Forwarded-For")
        self._xfp_out = word("X-Forwarded-Proto")
        self._xfh_out = word("X-Forwarded-Host")
        self._host_out = word("Host")
        self._join = word(", ")
        self._unsafe = _UNSAFE_BYTES if kind is bytes else _UNSAFE_TEXT
        self._empty = word("")
        self._plain_connection = frozenset(map(word, ("keep-alive", "close", "Keep-Alive", "Close")))

    def _tokens(self, value: AnyStr) -> set:
        """The header names one ``Connection`` value lists (``keep-alive``, ``close`` and
        the other hop-by-hop names left out: they go anyway)."""
        if value in self._plain_connection:
            return set()
        tokens = {t.strip().lower() for t in value.split(self._comma)}
        return tokens - self._hop - self._plain_connection - {self._word("")}

    def _refuse_websocket(self, headers: Sequence[tuple[AnyStr, AnyStr]]) -> None:
        """Raise :class:`NotProxied` for a WebSocket handshake (``Upgrade: websocket`` with
        ``Connection: upgrade``, RFC 6455 §4.1). Other upgrades (``h2c``) are declined by
        dropping ``Upgrade`` as nginx does: the backend answers a plain request (RFC 9110
        §7.8 lets a server ignore an upgrade)."""
        tokens: dict = {self._upgrade: set(), self._connection: set()}
        for name, value in headers:
            seen = tokens.get(name.lower())
            if seen is not None:
                seen.update(t.strip().lower() for t in value.split(self._comma))
        if self._websocket in tokens[self._upgrade] and self._upgrade in tokens[self._connection]:
            raise NotProxied("WebSockets are not proxied")

    def _spoofs(self, lower: AnyStr) -> bool:
        """Is ``lower`` (a name with ``_``) a spelling of a :data:`PROXY_HEADERS` name that a
        WSGI backend would merge with the real one?"""
        dashed = lower.replace(self._underscore, self._dash)
        return dashed in self._guarded or dashed.startswith(self._guarded_prefixes)

    def request_headers(self, headers: Sequence[tuple[AnyStr, AnyStr]], *, peer: str | None,
                        scheme: str, upstream_host: AnyStr | None = None,
                        preserve_host: bool = False,
                        trusted_peer: bool = False) -> list[tuple[AnyStr, AnyStr]]:
        """The headers to send upstream for a client request's ``headers``.

        * hop-by-hop headers, every header ``Connection`` names, ``Content-Length`` and
          ``Transfer-Encoding`` are dropped (the outbound client frames the body itself),
          and so are ``_`` spellings of these and of the forwarding headers
          (``X_Forwarded_Host``: :data:`PROXY_HEADERS`);
        * ``Host`` (first) is the client's with ``preserve_host``, else ``upstream_host``
          (the backend's ``netloc``); with neither there is no ``Host`` and the outbound
          client adds the backend's;
        * ``X-Forwarded-For`` is the client's list (several headers joined) + ``peer``;
        * ``X-Forwarded-Proto`` is ``scheme`` and ``X-Forwarded-Host`` the client's Host;
          from a ``trusted_peer`` that already set them, its values are kept.

        Raises :class:`UnsafeRequest` if a name or value holds CR, LF or NUL, and
        :class:`NotProxied` for a WebSocket handshake.
        """
        unsafe = self._unsafe
        drop = self._drop
        connection = self._connection
        named: set = set()
        out: list = []
        client_host = None
        forwarded_for: list = []
        proto = forwarded_host = None
        upgrade = False
        if unsafe.search(self._empty.join(itertools.chain.from_iterable(headers))):
            raise UnsafeRequest("CR, LF or NUL in a request header")
        for name, value in headers:
            lower = name.lower()
            if lower in drop:
                if lower == connection:
                    named |= self._tokens(value)
                elif lower == self._upgrade:
                    upgrade = True
                elif lower == self._host:
                    if client_host is None:
                        client_host = value
                elif lower == self._xff:
                    forwarded_for.append(value.strip())
                elif lower == self._xfp:
                    proto = value
                elif lower == self._xfh:
                    forwarded_host = value
                continue
            if self._underscore in lower and self._spoofs(lower):
                continue
            out.append((name, value))
        if upgrade:
            self._refuse_websocket(headers)
        if named:
            out = [(n, v) for n, v in out if n.lower() not in named]
        word = self._word
        host = client_host if preserve_host else upstream_host
        if host is not None:
            out.insert(0, (self._host_out, host))
        if peer is not None:
            forwarded_for.append(word(peer))
        forwarded_for = [v for v in forwarded_for if v]
        if forwarded_for:
            out.append((self._xff_out, self._join.join(forwarded_for)))
        if not (trusted_peer and proto is not None):
            proto = word(scheme)
        out.append((self._xfp_out, proto))
        if not (trusted_peer and forwarded_host is not None):
            forwarded_host = client_host
        if forwarded_host is not None:
            out.append((self._xfh_out, forwarded_host))
        return out

    def response_headers(self, headers: Sequence[tuple[AnyStr, AnyStr]]) -> list[tuple[AnyStr, AnyStr]]:
        """The upstream response's headers for the client, hop-by-hop ones dropped.

        Repeated headers (``Set-Cookie``) stay as they are. When the upstream sent
        ``Transfer-Encoding``, its ``Content-Length`` is dropped too (RFC 9112 §6.3).
        """
        hop = self._hop
        out = []
        named: set = set()
        chunked = False
        for name, value in headers:
            lower = name.lower()
            if lower in hop:
                if lower == self._connection:
                    named |= self._tokens(value)
                elif lower == self._transfer_encoding:
                    chunked = True
                continue
            out.append((name, value))
        if named or chunked:
            drop = named
            if chunked:
                drop.add(self._content_length)
            out = [(n, v) for n, v in out if n.lower() not in drop]
        return out

    def body_length(self, headers: Iterable[tuple[AnyStr, AnyStr]]) -> int | None:
        """The length of the client's request body as its framing says: ``0`` (no body),
        a byte count, or ``None`` (``Transfer-Encoding``: unknown, stream it chunked).

        ``Transfer-Encoding`` wins over ``Content-Length`` (RFC 9112 §6.3). A bad or
        conflicting ``Content-Length`` raises :class:`UnsafeRequest`.
        """
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == self._transfer_encoding:
                return None
            if lower == self._content_length:
                text = value.strip()
                if not (text.isdigit() and text.isascii()) or (
                        length is not None and int(text) != length):
                    raise UnsafeRequest("bad or conflicting Content-Length")
                length = int(text)
        return length or 0

    def get(self, headers: Iterable[tuple[AnyStr, AnyStr]], name: str) -> list[AnyStr]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = self._word(name.lower())
        return [v for n, v in headers if n.lower() == wanted]


TEXT = HeaderRules(str)
BINARY = HeaderRules(bytes)


# -- client address and sticky key -----------------------------------------------------

class ClientAddress:
    """The client's IP: the peer, or from ``X-Forwarded-For`` when the peer is trusted.

    ``X-Forwarded-For`` is believed only when the connection's peer is in
    ``trusted_proxies``; the client is then the rightmost address that is not a trusted
    proxy (each hop appends the address it saw). When every address is trusted, the
    leftmost is the client. An entry that is not an IP address ends the walk and the last
    trusted hop is the client: garbage is never used as a key (uvicorn
    ``--forwarded-allow-ips`` semantics otherwise).
    """

    def __init__(self, trusted_proxies: Iterable[Any] = ()) -> None:
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
        hops = [h.strip()
                for value in forwarded_for
                for h in (value.decode("latin-1") if isinstance(value, bytes) else value).split(",")]
        client = peer
        for hop in reversed(hops):
            ip = _parse_ip(hop)
            if ip is None:
                return client
            client = str(ip)
            if not self.is_trusted(client):
                return client
        return client


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
    values = [v.decode("latin-1") if isinstance(v, bytes) else v
              for n, v in headers
              if (n.decode("latin-1") if isinstance(n, bytes) else n).lower()
              == (lower if kind == "header" else "cookie")]
    if not values:
        return None
    if kind == "header":
        return ",".join(v.strip() for v in values)
    for value in values:
        cookie = parse_cookie(value).get(name)
        if cookie is not None:
            return cookie
    return None


# -- retries -----------------------------------------------------------------------------

def may_retry(method: str, *, sent: bool, replayable: bool, responded: bool = False,
              retry_non_idempotent: bool = False) -> bool:
    """May a failed attempt be tried again on another backend? (SEMANTICS "Retries")

    * ``responded``: a byte of the response reached the client: never.
    * not ``sent`` (a connect failure: the request never reached the backend): yes, for
      any method.
    * after sending: only an idempotent method (or any, with ``retry_non_idempotent``)
      whose body can be sent again (``replayable``).
    """
    if responded:
        return False
    if not sent:
        return True
    return replayable and (retry_non_idempotent or method.upper() in IDEMPOTENT_METHODS)


# -- error responses -------------------------------------------------------------------

class ErrorResponse(NamedTuple):
    """A response the proxy makes itself: status, reason, headers (``str`` pairs), body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


_ERRORS = {
    400: ("Bad Request", "the request cannot be forwarded"),
    404: ("Not Found", "no route for this path"),
    501: ("Not Implemented", "WebSockets are not proxied"),
    502: ("Bad Gateway", "no backend gave a response"),
    503: ("Service Unavailable", "no backend is available"),
    504: ("Gateway Timeout", "the backend did not answer in time"),
}
RETRY_AFTER = 5     # seconds, for 503


def error_response(status: int, detail: str | None = None,
                   retry_after: int = RETRY_AFTER) -> ErrorResponse:
    """The proxy's own response for ``status`` (400, 404, 501, 502, 503, 504).

    The body is one short line of plain text, ``"502 Bad Gateway: no backend gave a
    response\\n"``; ``detail`` replaces the part after the colon (keep it free of
    internals). 503 carries ``Retry-After``.
    """
    reason, default = _ERRORS[status]
    body = f"{status} {reason}: {detail or default}\n".encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if status == 503:
        headers.append(("Retry-After", str(retry_after)))
    return ErrorResponse(status, reason, tuple(headers), body)
