"""The adapter's urllib3 pools: final responses only, and no more body after an early answer.

Interim responses: ``http.client`` skips only ``100 Continue``, so the adapter's connection
pools read responses with :class:`FinalResponse`, which skips every 1xx but ``101`` (a
``103 Early Hints`` would otherwise be taken as final, and the real response left on the
pooled connection for the next request to read). A ``101`` cannot be skipped (what follows
is another protocol): it fails the attempt, and urllib3 closes that connection.

Early answers: a backend that answers before reading the request body (a 413 for an upload
too large) gets no more of it, its answer is returned at once (a success for its health),
and that connection is closed after it (:class:`_BackendConnection`; plain HTTP only).

:func:`read_final_responses` puts both into a urllib3 pool manager's pool classes.
"""

from __future__ import annotations

import functools
import http.client
import re
import select
import socket
import ssl
from typing import TYPE_CHECKING, Any, cast

from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool

if TYPE_CHECKING:
    from urllib3.connection import HTTPConnection

__all__ = ["FinalResponse", "UnusableResponse", "read_final_responses", "MAX_INTERIM",
           "SEND_BLOCK"]

# Interim (1xx) responses skipped before a final one; a backend sending more is refused.
MAX_INTERIM = 32

# A request body goes out in blocks of this size, each after a check for an early answer.
SEND_BLOCK = 256 * 1024
MAX_HEAD_PEEK = 65536
_CAN_POLL = hasattr(select, "poll")

_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class UnusableResponse(http.client.HTTPException):
    """A backend's answer that cannot be read as a final response (an unrequested ``101``,
    endless interim responses). An ``HTTPException``, so urllib3 closes the connection
    instead of pooling it, and requests raises a ``ConnectionError`` (a backend failure)."""


class FinalResponse(http.client.HTTPResponse):
    """An ``http.client`` response that reads past every interim (1xx) response but ``101``
    and refuses a status above 599 or a control character in a header value (which a WSGI
    server could not send on).

    ``HTTPResponse.begin`` skips only ``100 Continue``; any other 1xx would be returned as
    the final response with an empty body, and the final one read by the connection's next
    request (RFC 9110 section 15.2: a client must accept and skip them)."""

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(MAX_INTERIM + 1):
            # http.client's private step that reads one status line: typeshed leaves it out
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if status >= 600:     # http.client takes up to 999; RFC 9110 defines 100-599
                raise UnusableResponse(f"the backend answered status {status}, outside 100-599")
            if status >= 200:
                return version, status, reason
            if status == 101:
                raise UnusableResponse(
                    f"the backend switched protocols ('{status} {reason.strip()}'), "
                    "which requests cannot follow; its connection is closed")
            http.client.parse_headers(self.fp)        # an interim response's fields: dropped
        raise UnusableResponse(f"more than {MAX_INTERIM} interim (1xx) responses")

    def begin(self) -> None:
        super().begin()
        # RFC 9110 5.5: a field value holds no control character but tab. http.client keeps
        # them (and obs-fold line breaks), and a WSGI server would pass them on or fail.
        for name, value in self.msg.items():
            if _CONTROL_CHARACTER.search(value):
                raise UnusableResponse(
                    f"a control character in the backend's {name!r} header: {value!r}")


class _ClosingFinalResponse(FinalResponse):
    """A final response read after its request's body was cut short: the connection
    closes after it (the backend would read the rest of that body as the next request)."""

    def begin(self) -> None:
        super().begin()
        self.will_close = True          # http.client then closes the connection


if TYPE_CHECKING:
    # The mixin below is only ever combined with a urllib3 connection class (see
    # _final_response_pool): type-check it as one, so that its super() calls are checked.
    _Connection = HTTPConnection
else:
    _Connection = object


class _BackendConnection(_Connection):
    """Mixin for the urllib3 connection classes of the adapter's pools: responses are
    read with :class:`FinalResponse`, and a request body stops going out once the backend
    has answered.

    A backend may answer before reading the body (a 413 for an upload too large, a 401)
    and then never read it: ``sendall`` would wait out the timeout and the answer be lost
    (a failure of a healthy backend). So a plain-TCP body goes out in blocks, each sent
    when the socket is writable and only while nothing has arrived; an arrival raises
    ``BrokenPipeError``, which urllib3 takes as "the server stopped reading" and reads the
    response. Over TLS a readable socket may hold only a session ticket, so TLS bodies are
    sent as before.
    """

    response_class: type[http.client.HTTPResponse] = FinalResponse
    _in_body = False

    # putrequest and endheaders pass their arguments on as they come (urllib3's own
    # signatures, whatever its version adds).
    def putrequest(self, *args: Any, **kwargs: Any) -> None:
        self._in_body = False
        self.response_class = FinalResponse
        super().putrequest(*args, **kwargs)

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        super().endheaders(*args, **kwargs)
        self._in_body = True

    def send(self, data: Any) -> None:      # (whatever http.client sends: bytes, a file ...)
        sock = self.sock
        if not self._in_body or not _CAN_POLL or isinstance(sock, ssl.SSLSocket) \
                or not isinstance(data, (bytes, bytearray)):
            super().send(data)
            return
        timeout = sock.gettimeout()
        wait = -1 if timeout is None else int(timeout * 1000)
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        view = memoryview(data)
        while view:
            events = poller.poll(wait)
            if not events:
                raise TimeoutError("timed out sending the request body")
            if events[0][1] & (select.POLLIN | select.POLLHUP | select.POLLERR) \
                    and _answered(sock):
                self.response_class = _ClosingFinalResponse
                raise BrokenPipeError("the backend answered before reading the whole body")
            view = view[sock.send(view[:SEND_BLOCK]):]


def _answered(sock: socket.socket) -> bool:
    """Whether what ``sock`` has received begins a final response (or is the end of the
    connection). Interim responses at its front are read off and dropped, as
    :class:`FinalResponse` would drop them: a ``100 Continue`` or a ``103`` asks for the
    body to go on. A head not yet complete enough to tell counts as no answer."""
    arrived = select.poll()
    arrived.register(sock, select.POLLIN)
    while arrived.poll(0):      # (a socket with a timeout waits in recv, whatever its flags)
        data = sock.recv(MAX_HEAD_PEEK, socket.MSG_PEEK)
        if not data:
            return True
        if len(data) < 12:                  # "HTTP/1.1 413": not enough to tell yet
            return False
        if data[9:10] != b"1" or data[9:12] == b"101":
            return True
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        sock.recv(end + 4)                  # an interim response, all here: dropped
    return False


def read_final_responses(manager: PoolManager) -> None:
    """Make the pools that ``manager`` (a urllib3 pool or proxy manager) creates read their
    responses with :class:`FinalResponse`; idempotent."""
    classes: dict[str, type[HTTPConnectionPool]] = manager.pool_classes_by_scheme
    if not all(issubclass(cls.ConnectionCls, _BackendConnection) for cls in classes.values()):
        manager.pool_classes_by_scheme = {     # (a class is hashable: mypy issue 11470)
            scheme: _final_response_pool(cls)  # type: ignore[arg-type]
            for scheme, cls in classes.items()}


@functools.cache
def _final_response_pool(pool_class: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    """A subclass of urllib3 ``pool_class`` whose connections are :class:`_BackendConnection`."""
    connection = pool_class.ConnectionCls
    if issubclass(connection, _BackendConnection):
        return pool_class
    mixed = type(connection.__name__, (_BackendConnection, connection), {})
    # type() with three arguments is typed as returning a plain ``type``: this one is a
    # subclass of pool_class.
    return cast("type[HTTPConnectionPool]",
                type(pool_class.__name__, (pool_class,), {"ConnectionCls": mixed}))
