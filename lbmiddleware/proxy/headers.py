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

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, AnyStr, Generic, NamedTuple

from ..core.backend import Backend
from .redirects import REDIRECT_HEADERS, RedirectRule, Rewrite
from .refusals import NotProxied, UnsafeRequest

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


# What the rules do with a header, by its lower-case name: one small int per name, so that
# the per-header step is one dict lookup (``_PASS``, the usual answer, is 0: falsy). A
# request's Content-Length and Transfer-Encoding are the two highest (body_length asks for
# ``>= _LENGTH``); a response's redirect headers (_REWRITE + their index in _REDIRECT_NAMES)
# come last.
(_PASS, _DROP, _CONNECTION, _UPGRADE, _HOST, _FORWARDED_FOR, _FORWARDED_PROTO,
 _FORWARDED_HOST, _LENGTH, _CHUNKED, _REWRITE) = range(11)
_REDIRECT_NAMES = tuple(sorted(REDIRECT_HEADERS))

_REQUEST_ACTIONS = {
    **dict.fromkeys(HOP_BY_HOP, _DROP),
    "connection": _CONNECTION, "upgrade": _UPGRADE, "host": _HOST,
    "x-forwarded-for": _FORWARDED_FOR, "x-forwarded-proto": _FORWARDED_PROTO,
    "x-forwarded-host": _FORWARDED_HOST, "content-length": _LENGTH,
    "transfer-encoding": _CHUNKED,
}
_RESPONSE_ACTIONS = {
    **dict.fromkeys(HOP_BY_HOP | HIDDEN, _DROP),
    "connection": _CONNECTION, "transfer-encoding": _CHUNKED,
    **{name: _REWRITE + index for index, name in enumerate(_REDIRECT_NAMES)},
}
# The names each kind's rules have met, as they were spelled (any case), and their actions:
# at most _LEARNED names of at most _LEARNED_LENGTH characters (the table starts over when
# full), so that a client sending endless new names costs only time, as before the table.
_LEARNED = 1024
_LEARNED_LENGTH = 64


class _Kind(NamedTuple):
    """How the rules read one kind of header pairs."""

    word: Callable[[str], Any]        # a str word spelled in this kind (bytes: latin-1)
    text: Callable[[Any], str]        # a value of this kind as str
    cr: Any                           # CR, LF, NUL and "_" as `in` finds them fastest in
    lf: Any                           # this kind: for bytes the ints (`13 in data` is a
    nul: Any                          # memchr; `b"\r" in data` takes 7 times as long)
    underscore: Any


def _same(text: str) -> str:
    return text


_KINDS: dict[type, _Kind] = {
    str: _Kind(str, _same, "\r", "\n", "\0", "_"),
    bytes: _Kind(operator.methodcaller("encode", "latin-1"),
                 operator.methodcaller("decode", "latin-1"), 13, 10, 0, 95),
}


class HeaderRules(Generic[AnyStr]):
    """The header rules for one representation of header pairs: ``str`` or ``bytes``
    (``HeaderRules(str)`` is a ``HeaderRules[str]``).

    Names are compared case-insensitively. Use :data:`TEXT` (WSGI, requests) or
    :data:`BINARY` (ASGI, the fast path, raw wire bytes): one implementation, so both apply
    exactly the same rules (``tests/proxy/test_rules_kinds.py`` runs one table of cases
    through both). What each name means is decided once: every name the rules compare is
    spelled in the headers' kind here, and each name met is remembered with what the rules
    do with it, as it was spelled (up to 1,024 names), so that the per-header step is one
    dict lookup whatever the case of the names (ASGI's and the fast path's are lower-case;
    WSGI's and a backend's response's are not). A name is remembered for requests only once
    checked free of CR, LF and NUL, so that per request only the values (and the names met
    for the first time) need that check: one join and three ``in`` (memchr), no regex.
    """

    def __init__(self, kind: type[AnyStr]) -> None:
        # Every attribute is annotated: mypy infers none from an assignment in a class
        # generic over a constrained type variable (AnyStr). They are at most 29: CPython
        # 3.11 keeps no more inline in an instance, where they are the fastest to load (what
        # only a name met for the first time needs is read from the kind).
        spelling = _KINDS[kind]
        word: Callable[[str], AnyStr] = spelling.word
        self._kind: _Kind = spelling
        self._cr: Any = spelling.cr
        self._lf: Any = spelling.lf
        self._nul: Any = spelling.nul
        self._word: Callable[[str], AnyStr] = word
        self._hop: frozenset[AnyStr] = frozenset(map(word, HOP_BY_HOP))
        self._guarded: frozenset[AnyStr] = frozenset(map(word, PROXY_HEADERS))
        self._guarded_prefixes: tuple[AnyStr, ...] = tuple(map(word, PROXY_HEADER_PREFIXES))
        self._plain_connection: frozenset[AnyStr] = frozenset(
            map(word, ("keep-alive", "close", "Keep-Alive", "Close")))
        # name (lower case) -> action, and the names met as spelled -> action (learned)
        self._request_base: dict[AnyStr, int] = {
            word(name): action for name, action in _REQUEST_ACTIONS.items()}
        self._response_base: dict[AnyStr, int] = {
            word(name): action for name, action in _RESPONSE_ACTIONS.items()}
        self._request_actions: dict[AnyStr, int] = dict(self._request_base)
        self._response_actions: dict[AnyStr, int] = dict(self._response_base)
        self._xff_out: AnyStr = word("X-Forwarded-For")
        self._xfp_out: AnyStr = word("X-Forwarded-Proto")
        self._xfh_out: AnyStr = word("X-Forwarded-Host")
        # the usual schemes' X-Forwarded-Proto fields, and the peers met's X-Forwarded-For
        self._scheme_fields: dict[str, tuple[AnyStr, AnyStr]] = {
            scheme: (self._xfp_out, word(scheme)) for scheme in ("http", "https")}
        self._peer_fields: dict[str, tuple[AnyStr, AnyStr]] = {}
        self._underscore: AnyStr = word("_")
        self._dash: AnyStr = word("-")
        self._connection: AnyStr = word("connection")
        self._upgrade: AnyStr = word("upgrade")
        self._websocket: AnyStr = word("websocket")
        self._comma: AnyStr = word(",")
        self._slashes: AnyStr = word("//")
        self._content_length: AnyStr = word("content-length")
        self._host_out: AnyStr = word("Host")
        self._join: AnyStr = word(", ")
        self._empty: AnyStr = word("")

    def _unsafe(self, data: AnyStr) -> bool:
        """Does ``data`` hold CR, LF or NUL? (three memchr: no regex, no copy)"""
        return self._cr in data or self._lf in data or self._nul in data

    def _request_action(self, name: AnyStr) -> int:
        """What the request rules do with a header ``name`` not met before (any case); it is
        learned when short and free of CR, LF and NUL."""
        lower = name.lower()
        action = self._request_base.get(lower, _PASS)
        if not action and self._kind.underscore in lower and self._spoofs(lower):
            action = _DROP
        if len(name) <= _LEARNED_LENGTH and not self._unsafe(name):
            _learn(self._request_actions, name, action)
        return action

    def _response_action(self, name: AnyStr) -> int:
        """What the response rules do with a header ``name`` not met before (any case)."""
        action = self._response_base.get(name.lower(), _PASS)
        if len(name) <= _LEARNED_LENGTH:
            _learn(self._response_actions, name, action)
        return action

    def _tokens(self, value: AnyStr) -> frozenset[AnyStr]:
        """The header names one ``Connection`` value lists (``keep-alive``, ``close`` and
        the other hop-by-hop names left out: they go anyway). The callers pass over the
        plain values (``keep-alive``, ``close``: the usual ones) without asking."""
        tokens = {t.strip().lower() for t in value.split(self._comma)}
        return frozenset(tokens - self._hop - self._plain_connection - {self._empty})

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

    def request_headers(self, headers: Sequence[tuple[AnyStr, AnyStr]], peer: str | None,
                        scheme: str, upstream_host: AnyStr | None = None,
                        preserve_host: bool = False, trusted_peer: bool = False,
                        framing: list[AnyStr | None] | None = None
                        ) -> list[tuple[AnyStr, AnyStr]]:
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

        ``framing``, when given, gets the request's framing headers appended in order: each
        Content-Length's value, None for a Transfer-Encoding (:meth:`request` reads the
        body's length from them: one pass over the headers for both).

        Raises :class:`UnsafeRequest` if a name or value holds CR, LF or NUL, and
        :class:`NotProxied` for a WebSocket handshake. (Positional arguments are taken
        too: fewer to bind on a front-end's every request.)
        """
        actions = self._request_actions
        out: list[tuple[AnyStr, AnyStr]] = []
        client_host: AnyStr | None = None
        forwarded_for: list[AnyStr] | None = None
        proto: AnyStr | None = None
        forwarded_host: AnyStr | None = None
        named: frozenset[AnyStr] | None = None
        upgrade = False
        checked: list[AnyStr] = []      # what may not hold CR, LF or NUL
        for name, value in headers:
            checked.append(value)
            action = actions.get(name)
            if action is None:
                action = self._request_action(name)
                checked.append(name)    # (a name met before was checked then)
            if not action:
                out.append((name, value))
            elif action == _HOST:
                if client_host is None:
                    client_host = value
            elif action == _CONNECTION:
                if value not in self._plain_connection:      # keep-alive, close: no names
                    tokens = self._tokens(value)
                    if tokens:
                        named = tokens if named is None else named | tokens
            elif action >= _LENGTH:
                if framing is not None:
                    framing.append(value if action == _LENGTH else None)
            elif action == _FORWARDED_FOR:
                if forwarded_for is None:
                    forwarded_for = [value.strip()]
                else:
                    forwarded_for.append(value.strip())
            elif action == _FORWARDED_PROTO:
                proto = value
            elif action == _FORWARDED_HOST:
                forwarded_host = value
            elif action == _UPGRADE:
                upgrade = True
        # CR, LF or NUL anywhere: in the values, and in the names unless each was met (and
        # checked) before: one join, three memchr.
        joined = self._empty.join(checked)
        if self._cr in joined or self._lf in joined or self._nul in joined:
            raise UnsafeRequest("CR, LF or NUL in a request header")
        if upgrade:
            self._refuse_websocket(headers)
        if named:
            out = [(n, v) for n, v in out if n.lower() not in named]
        host = client_host if preserve_host else upstream_host
        if host is not None:
            out.insert(0, (self._host_out, host))
        # (the X-Forwarded-For field of a peer, and the X-Forwarded-Proto field of a scheme,
        # are made once and shared: a tuple is immutable)
        peer_field = None               # the peer's (an empty peer: none)
        if peer:
            peer_field = self._peer_fields.get(peer)
            if peer_field is None:
                peer_field = self._peer_field(peer)
        if forwarded_for is None:
            if peer_field is not None:
                out.append(peer_field)
        else:
            if peer_field is not None:
                forwarded_for.append(peer_field[1])
            listed = [v for v in forwarded_for if v]
            if listed:
                out.append((self._xff_out, self._join.join(listed)))
        if trusted_peer and proto is not None:
            out.append((self._xfp_out, proto))
        else:
            scheme_field = self._scheme_fields.get(scheme)
            out.append((self._xfp_out, self._word(scheme)) if scheme_field is None
                       else scheme_field)
        if not (trusted_peer and forwarded_host is not None):
            forwarded_host = client_host
        if forwarded_host is not None:
            out.append((self._xfh_out, forwarded_host))
        return out

    def request(self, headers: Sequence[tuple[AnyStr, AnyStr]], *, peer: str | None,
                scheme: str, upstream_host: AnyStr | None = None, preserve_host: bool = False,
                trusted_peer: bool = False) -> tuple[list[tuple[AnyStr, AnyStr]], int | None]:
        """:meth:`request_headers` and :meth:`body_length` in one pass over ``headers``: the
        upstream headers and the body's length (what a proxy front-end asks of every
        request). Raises what :meth:`request_headers` raises, then what
        :meth:`body_length` raises (a bad Content-Length is 400 after a WebSocket's 501)."""
        framing: list[AnyStr | None] = []
        out = self.request_headers(headers, peer, scheme, upstream_host, preserve_host,
                                   trusted_peer, framing)
        length = None
        for value in framing:           # as body_length reads them, in order
            if value is None:
                return out, None
            length = self._count(value, length)
        return out, length or 0

    def _peer_field(self, peer: str) -> tuple[AnyStr, AnyStr]:
        """The ``X-Forwarded-For`` field of a ``peer`` met for the first time, remembered
        when its address is short (encoding one costs more than a lookup)."""
        field = (self._xff_out, self._word(peer))
        if len(peer) <= _LEARNED_LENGTH:
            _learn(self._peer_fields, peer, field)
        return field

    def response_headers(self, headers: Sequence[tuple[AnyStr, AnyStr]],
                         rewrite: Rewrite | RedirectRule | None = None,
                         backend: Backend | None = None,
                         origin: Sequence[tuple[AnyStr, AnyStr]] | Callable[[], str | None]
                         | None = None) -> list[tuple[AnyStr, AnyStr]]:
        """The upstream response's headers for the client: hop-by-hop ones, ``Date`` and
        ``Server`` (:data:`HIDDEN`) dropped, ``Location``, ``Content-Location`` and
        ``Refresh`` given to ``rewrite`` (a bound :class:`~.redirects.RedirectRule`: its new
        value, or None to keep the header as it came) when they hold ``//`` (a relative
        reference, the usual redirect, is left as it is: not asked). ``rewrite`` may be the
        rule itself with the ``backend`` that answered and the ``origin`` to bind it to
        (:meth:`~.redirects.RedirectRule.bind`'s): it is bound only when a header needs it,
        so that most responses (none does) make no bound rule.

        Repeated headers (``Set-Cookie``) stay as they are. When the upstream sent
        ``Transfer-Encoding``, its Content-Length is dropped too (RFC 9112 §6.3).
        """
        actions = self._response_actions
        out: list[tuple[AnyStr, AnyStr]] = []
        named: frozenset[AnyStr] | None = None
        chunked = False
        for field in headers:
            action = actions.get(field[0])
            if action is None:
                action = self._response_action(field[0])
            if not action:
                # a pair of our own: ASGI allows a list for the caller's, which it may change
                # after (past the rules), and a field that is no pair is refused here
                name, value = field
                out.append((name, value))
            elif action == _DROP:       # (Date, Server: in most responses)
                pass
            elif action >= _REWRITE:
                name, value = field
                # (a value without "//" is a relative reference: never rewritten, not asked)
                if rewrite is not None and value.find(self._slashes) != -1:
                    if isinstance(rewrite, RedirectRule):
                        if backend is None or origin is None:
                            raise TypeError("a RedirectRule is bound to a backend and an "
                                            "origin")
                        rewrite = rewrite.bind(backend, origin)
                    new = rewrite(_REDIRECT_NAMES[action - _REWRITE], self._kind.text(value))
                    if new is not None:
                        value = self._word(new)
                out.append((name, value))
            elif action == _CONNECTION:
                value = field[1]
                if value not in self._plain_connection:      # keep-alive, close: no names
                    tokens = self._tokens(value)
                    if tokens:
                        named = tokens if named is None else named | tokens
            elif action == _CHUNKED:
                chunked = True
        if named or chunked:
            drop = set(named or ())
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
        actions = self._request_actions
        length = None
        for name, value in headers:
            action = actions.get(name)
            if action is None:
                action = self._request_action(name)
            if action >= _LENGTH:
                if action == _CHUNKED:
                    return None
                length = self._count(value, length)
        return length or 0

    @staticmethod
    def _count(value: AnyStr, length: int | None) -> int:
        """The byte count of one Content-Length ``value`` after the ``length`` an earlier
        one said (None: the first); UnsafeRequest when it is not a count of ASCII digits or
        differs."""
        text = value.strip()
        if not (text.isdigit() and text.isascii()) or (
                length is not None and int(text) != length):
            raise UnsafeRequest("bad or conflicting Content-Length")
        return int(text)

    def get(self, headers: Iterable[tuple[AnyStr, AnyStr]], name: str) -> list[AnyStr]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = self._word(name.lower())
        return [v for n, v in headers if n.lower() == wanted]


def _learn(table: dict[Any, Any], name: Any, action: Any) -> None:
    """Remember ``name``'s action (or a peer's address) in ``table``, starting the table
    over when it is full (the names the rules compare are found again by their lower-case
    spelling). Safe between threads: one dict operation at a time, and a name missing is
    only slower."""
    if len(table) >= _LEARNED:
        table.clear()
    table[name] = action


#: The rules for ``str`` headers (WSGI, requests).
TEXT = HeaderRules(str)
#: The rules for ``bytes`` headers (ASGI, raw wire bytes).
BINARY = HeaderRules(bytes)
