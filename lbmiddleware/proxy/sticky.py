"""The sticky cookie as every front-end reads and writes it (``LB_STICKY_COOKIE``).

The rule, one copy for the middlewares, the gateway, the requests adapter and the httpx
transports: read the cookie's value from the request (:meth:`StickyCookie.read`, or
:meth:`~StickyCookie.read_binary` for a raw header list) and give it to the attempt loop as
``prefer``; when a backend's response goes to the client, compare the value of the backend
that answered (:meth:`Balancer.sticky_value <lbmiddleware.core.balancer.Balancer.sticky_value>`)
with the request's and, if they differ, add the :meth:`~StickyCookie.set_cookie` header
(besides the backend's own ``Set-Cookie`` headers; never on the proxy's own 502/503/504). The
cookie is a session cookie (no ``Max-Age``), ``HttpOnly`` and ``SameSite=Lax``, ``Secure``
when the client's connection is https (a proxy's client: :func:`~.client.client_scheme`, a
trusted TLS terminator's ``X-Forwarded-Proto`` included), scoped to ``path``: the proxy's
prefix, so that two routes' cookies do not meet, or ``/`` for a client front-end.

Standard library only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StickyCookie"]


class StickyCookie:
    """One front-end's sticky cookie: its name and path (immutable)."""

    __slots__ = ("name", "path", "_name_bytes", "_readable")

    def __init__(self, name: str, path: str = "/") -> None:
        if not name:
            raise ValueError("a sticky cookie needs a name")
        if not path.startswith("/") or any(c in path for c in ";\r\n\0"):
            raise ValueError(f"a sticky cookie's path is an absolute path without ';', not "
                             f"{path!r}")
        self.name = name
        self.path = path
        self._name_bytes = name.encode("ascii")
        # A name that no cookie of a header can have (parse_cookie's names hold no '=' or
        # ';' and have no whitespace around them) is never found.
        self._readable = name == name.strip() and "=" not in name and ";" not in name

    def read(self, cookie_header: str | None) -> str | None:
        """The cookie's value in one ``Cookie`` header (first occurrence), or None: what
        :func:`~.client.parse_cookie` reads for the name (whitespace around the name and
        the value ignored, one pair of double quotes taken off), found without parsing the
        other cookies. A request with cookies pays this search: a ``find`` for the name,
        then checks that it is a whole cookie's name (``xlb=1`` or ``a=lb=1`` is not
        ``lb``'s) and a slice up to the next ``;``. A cookie where the name is found but
        is not its name is passed whole (no later place in it can be the name's either),
        so every character is looked at a bounded number of times, whatever the header
        (``lblblb...``)."""
        if not cookie_header or not self._readable:
            return None
        header = cookie_header
        name = self.name
        at = header.find(name)
        while at != -1:
            after = at + len(name)
            end = header.find(";", after)
            if end == -1:
                end = len(header)
            # The name starts its cookie (nothing but whitespace since the last ';': most
            # often "; " or the header's start) and only whitespace is between it and its
            # '=' (most often none).
            if at:
                before = header[at - 1]
                starts = before == ";" or before.isspace() and (
                    at == 1 or header[at - 2] == ";"
                    or header[header.rfind(";", 0, at) + 1:at].isspace())
            else:
                starts = True
            if starts:
                if header.startswith("=", after):
                    equals = after
                else:
                    equals = header.find("=", after, end)
                    if equals != -1 and not header[after:equals].isspace():
                        equals = -1
                if equals != -1:
                    value = header[equals + 1:end].strip()
                    if len(value) >= 2 and value[0] == value[-1] == '"':
                        value = value[1:-1]
                    return value
            at = header.find(name, end + 1)
        return None

    def read_binary(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The cookie's value among raw ``(name, value)`` headers (every ``cookie`` header,
        any case: HTTP/2 may split them), or None."""
        for name, value in headers:
            if len(name) == 6 and name.lower() == b"cookie" and self._name_bytes in value:
                found = self.read(value.decode("latin-1"))
                if found is not None:
                    return found
        return None

    def set_cookie(self, value: str, *, secure: bool) -> str:
        """The ``Set-Cookie`` value that pins a client to the backend of ``value``."""
        return (f"{self.name}={value}; Path={self.path}; HttpOnly; SameSite=Lax"
                + ("; Secure" if secure else ""))

    def renewal(self, value: str, prefer: str | None, *, secure: bool) -> str | None:
        """The ``Set-Cookie`` to add to a response from the backend whose cookie value is
        ``value`` (:meth:`Balancer.sticky_value <lbmiddleware.core.balancer.Balancer.
        sticky_value>`): None when the request's cookie (``prefer``) named it already. The
        rule every front-end applies once its answer's backend is known."""
        return None if value == prefer else self.set_cookie(value, secure=secure)

    def __repr__(self) -> str:
        return f"StickyCookie({self.name!r}, path={self.path!r})"
