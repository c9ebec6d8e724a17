"""The header rules of the proxy, for ``str`` pairs (WSGI, requests) and ``bytes`` pairs
(ASGI, raw wire bytes) alike: what goes upstream, what comes back, the body's framing.

Upstream, hop-by-hop headers (and every header ``Connection`` names), the ``_`` spellings
of the proxy's own headers (``X_Forwarded_Host``) and the client's framing
(``Content-Length``, ``Transfer-Encoding``: the outbound client frames the body itself)
are dropped; ``Host`` and ``X-Forwarded-For/Proto/Host`` are set; CR/LF/NUL raise
:class:`~.refusals.UnsafeRequest` and a WebSocket handshake :class:`~.refusals.NotProxied`.
Back to the client, hop-by-hop headers are dropped, and so are the backend's ``Date`` and
``Server`` (the server in front sends its own); ``Location``, ``Content-Location`` and
``Refresh`` pointing at the backend are rewritten (:mod:`.redirects`). The rules:
``docs/contract.md``, "Proxying" / "Request headers" and "Responses".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, AnyStr, Generic, overload

from .redirects import REDIRECT_HEADERS, Rewrite
from .refusals import UNSAFE_BYTES, UNSAFE_TEXT, NotProxied, UnsafeRequest

__all__ = [
    "HeaderRules", "TEXT", "BINARY", "HOP_BY_HOP", "FRAMING", "PROXY_HEADERS",
    "PROXY_HEADER_PREFIXES", "HIDDEN",
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
# The backend's response headers the client never sees: the server in front says its own
# (nginx's proxy_hide_header default). Every server measured adds a Date and a Server: uvicorn
# and hypercorn always, beside the application's (so a backend's would reach the client
# twice), granian, waitress and wsgiref when the application sent none, gunicorn in place of
# the application's. Nothing in an ASGI scope or a WSGI environ says which server it is.
HIDDEN = frozenset({"date", "server"})


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


def _from_latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _same(text: str) -> str:
    return text


@overload
def _alphabet(kind: type[str]) -> tuple[Callable[[str], str], Callable[[str], str],
                                        re.Pattern[str]]: ...
@overload
def _alphabet(kind: type[bytes]) -> tuple[Callable[[str], bytes], Callable[[bytes], str],
                                          re.Pattern[bytes]]: ...
def _alphabet(kind: type[str] | type[bytes]
              ) -> tuple[Callable[[str], str | bytes], Callable[[Any], str],
                         re.Pattern[str] | re.Pattern[bytes]]:
    """How a ``str`` word is spelled in headers of ``kind`` (bytes on the wire are latin-1),
    how a value of that kind reads as ``str``, and the pattern of the characters never
    forwarded, in that kind."""
    if kind is bytes:
        return _latin1, _from_latin1, UNSAFE_BYTES
    return str, _same, UNSAFE_TEXT


class HeaderRules(Generic[AnyStr]):
    """The header rules for one representation of header pairs: ``str`` or ``bytes``
    (``HeaderRules(str)`` is a ``HeaderRules[str]``).

    Names are compared case-insensitively. Use :data:`TEXT` (WSGI, requests) or
    :data:`BINARY` (ASGI, raw wire bytes); both apply exactly the same rules. Every name
    the rules compare is spelled in the headers' kind once, here, so the per-request path
    only looks things up.
    """

    def __init__(self, kind: type[AnyStr]) -> None:
        # Every attribute is annotated: mypy infers none from an assignment in a class
        # generic over a constrained type variable (AnyStr).
        word: Callable[[str], AnyStr]
        text: Callable[[AnyStr], str]
        unsafe: re.Pattern[AnyStr]
        word, text, unsafe = _alphabet(kind)
        self._word: Callable[[str], AnyStr] = word
        self._text: Callable[[AnyStr], str] = text
        self._unsafe: re.Pattern[AnyStr] = unsafe
        self._hop: frozenset[AnyStr] = frozenset(map(word, HOP_BY_HOP))
        self._hidden: frozenset[AnyStr] = frozenset(map(word, HIDDEN))
        # the response headers that are not passed on as they came
        self._response_special: frozenset[AnyStr] = frozenset(
            map(word, HOP_BY_HOP | HIDDEN | REDIRECT_HEADERS))
        self._drop: frozenset[AnyStr] = frozenset(map(word, HOP_BY_HOP | FRAMING | {
            "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}))
        self._guarded: frozenset[AnyStr] = frozenset(map(word, PROXY_HEADERS))
        self._guarded_prefixes: tuple[AnyStr, ...] = tuple(map(word, PROXY_HEADER_PREFIXES))
        self._plain_connection: frozenset[AnyStr] = frozenset(
            map(word, ("keep-alive", "close", "Keep-Alive", "Close")))
        self._underscore: AnyStr = word("_")
        self._dash: AnyStr = word("-")
        self._connection: AnyStr = word("connection")
        self._upgrade: AnyStr = word("upgrade")
        self._websocket: AnyStr = word("websocket")
        self._comma: AnyStr = word(",")
        self._host: AnyStr = word("host")
        self._content_length: AnyStr = word("content-length")
        self._transfer_encoding: AnyStr = word("transfer-encoding")
        self._xff: AnyStr = word("x-forwarded-for")
        self._xfp: AnyStr = word("x-forwarded-proto")
        self._xfh: AnyStr = word("x-forwarded-host")
        self._xff_out: AnyStr = word("X-Forwarded-For")
        self._xfp_out: AnyStr = word("X-Forwarded-Proto")
        self._xfh_out: AnyStr = word("X-Forwarded-Host")
        self._host_out: AnyStr = word("Host")
        self._join: AnyStr = word(", ")
        self._empty: AnyStr = word("")

    def _tokens(self, value: AnyStr) -> set[AnyStr]:
        """The header names one ``Connection`` value lists (``keep-alive``, ``close`` and
        the other hop-by-hop names left out: they go anyway)."""
        if value in self._plain_connection:
            return set()
        tokens = {t.strip().lower() for t in value.split(self._comma)}
        return tokens - self._hop - self._plain_connection - {self._empty}

    def _refuse_websocket(self, headers: Sequence[tuple[AnyStr, AnyStr]]) -> None:
        """Raise :class:`NotProxied` for a WebSocket handshake (``Upgrade: websocket`` with
        ``Connection: upgrade``, RFC 6455 §4.1). Other upgrades (``h2c``) are declined by
        dropping ``Upgrade`` as nginx does: the backend answers a plain request (RFC 9110
        §7.8 lets a server ignore an upgrade)."""
        tokens: dict[AnyStr, set[AnyStr]] = {self._upgrade: set(), self._connection: set()}
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
          (the backend's ``authority``); with neither there is no ``Host`` and the outbound
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
        named: set[AnyStr] = set()
        out: list[tuple[AnyStr, AnyStr]] = []
        client_host: AnyStr | None = None
        forwarded_for: list[AnyStr] = []
        proto: AnyStr | None = None
        forwarded_host: AnyStr | None = None
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

    def response_headers(self, headers: Sequence[tuple[AnyStr, AnyStr]],
                         rewrite: Rewrite | None = None) -> list[tuple[AnyStr, AnyStr]]:
        """The upstream response's headers for the client: hop-by-hop ones, ``Date`` and
        ``Server`` (:data:`HIDDEN`) dropped, ``Location``, ``Content-Location`` and
        ``Refresh`` given to ``rewrite`` (a bound :class:`~.redirects.RedirectRule`: its new
        value, or None to keep the header as it came).

        Repeated headers (``Set-Cookie``) stay as they are. When the upstream sent
        ``Transfer-Encoding``, its ``Content-Length`` is dropped too (RFC 9112 §6.3).
        """
        special = self._response_special
        hop = self._hop
        out: list[tuple[AnyStr, AnyStr]] = []
        named: set[AnyStr] = set()
        chunked = False
        for name, value in headers:
            lower = name.lower()
            if lower in special:
                if lower in hop:
                    if lower == self._connection:
                        named |= self._tokens(value)
                    elif lower == self._transfer_encoding:
                        chunked = True
                    continue
                if lower in self._hidden:
                    continue
                if rewrite is not None:
                    new = rewrite(self._text(lower), self._text(value))
                    if new is not None:
                        value = self._word(new)
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


#: The rules for ``str`` headers (WSGI, requests).
TEXT = HeaderRules(str)
#: The rules for ``bytes`` headers (ASGI, raw wire bytes).
BINARY = HeaderRules(bytes)
