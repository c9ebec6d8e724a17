"""The adapter's urllib3 pools: final responses only, no more body after an early answer,
an upload the backend stops reading as a read timeout, and the request's deadline on every
wait of an attempt.

Interim responses: ``http.client`` skips only ``100 Continue``, so the adapter's connection
pools read responses with :class:`FinalResponse`, which skips every 1xx but ``101`` (a
``103 Early Hints`` would otherwise be taken as final, and the real response left on the
pooled connection for the next request to read). A ``101`` cannot be skipped (what follows
is another protocol): it fails the attempt, and urllib3 closes that connection.

Early answers: a backend that answers before reading the request body (a 413 for an upload
too large) gets no more of it, its answer is returned at once (a success for its health),
and that connection is closed after it (:class:`_BackendConnection`; plain HTTP only).

A stalled upload: the wait for the backend to take each block of the request body is the
request's read timeout (urllib3 would leave the socket's connect timeout on it), and running
out of it is a ``ReadTimeoutError`` (requests' ``ReadTimeout``; urllib3 would wrap the
socket's ``TimeoutError`` in a ``ProtocolError``, a ``ConnectionError`` for requests), as the
ASGI middleware's upstream client counts it (:class:`_BackendPool`).

The deadline (``LB_TIMEOUT``): while the adapter awaits an attempt's response head
(:func:`~lbmiddleware.fleet.front_end.head_deadline`), each wait is cut to the time left when
it begins: a connect, each block of the body, each read of the head (:class:`_HeadReads`),
which urllib3 would each give the whole timeout. urllib3's own retries (the adapter's
``max_retries``) start no try that could not begin before the deadline, its wait before it
(a ``Retry-After``, a back-off) included (:mod:`lbmiddleware.adapter.retries`).

:func:`read_final_responses` puts all this into a urllib3 pool manager's pool classes.
"""

from __future__ import annotations

import functools
import http.client
import io
import re
import select
import socket
import ssl
from typing import TYPE_CHECKING, Any, cast

from urllib3 import PoolManager
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.timeout import Timeout

from ..fleet.front_end import HeadDeadline, head_deadline
from .retries import within_deadline

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from urllib3.connection import HTTPConnection
    from urllib3.response import BaseHTTPResponse

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
    request (RFC 9110 section 15.2: a client must accept and skip them).

    Under a request's deadline (:func:`~lbmiddleware.fleet.front_end.head_deadline`), the
    reads of the head each wait at most the time left (:class:`_HeadReads`)."""

    _head_reads: _HeadReads | None = None

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = head_deadline()
        if deadline is not None and isinstance(self.fp, io.BufferedReader):
            self._head_reads = reads = _HeadReads(self.fp.detach(), sock, deadline)
            self.fp = io.BufferedReader(reads)

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
        try:
            super().begin()
        finally:
            if self._head_reads is not None:
                self._head_reads.head_in()
        # RFC 9110 5.5: a field value holds no control character but tab. http.client keeps
        # them (and obs-fold line breaks), and a WSGI server would pass them on or fail.
        for name, value in self.msg.items():
            if _CONTROL_CHARACTER.search(value):
                raise UnusableResponse(
                    f"a control character in the backend's {name!r} header: {value!r}")


class _HeadReads(io.RawIOBase):
    """The reads of a response (``raw``: http.client's over ``sock``) whose head is awaited
    under a request's deadline: until :meth:`head_in`, each read waits at most the time
    left then (and at most the socket's own timeout, the read timeout), so that a head
    trickling in a byte at a time ends at the deadline; a read that waits too long raises
    the socket's ``TimeoutError``, which urllib3 turns into its ``ReadTimeoutError``. Then
    the body's reads are the socket's own again."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: HeadDeadline) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline: HeadDeadline | None = deadline
        self._limit = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        deadline = self._deadline
        if deadline is not None:
            self._sock.settimeout(deadline.limit(self._limit))
        return self._raw.readinto(buffer)

    def head_in(self) -> None:
        """The head is read (or failed): the socket's own timeout from now on."""
        if self._deadline is not None:
            self._deadline = None
            self._sock.settimeout(self._limit)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


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
    #: The longest wait for the backend to take a block of the request body: the request's
    #: read timeout (None: no limit), set by the pool before each request (:class:`_BackendPool`).
    body_timeout: float | None = None

    def connect(self) -> None:
        deadline = head_deadline()
        if deadline is not None:        # a try of urllib3's own retries: the time left
            timeout = self.timeout
            self.timeout = deadline.limit(timeout if isinstance(timeout, (int, float))
                                          else None)
        super().connect()

    # putrequest and endheaders pass their arguments on as they come (urllib3's own
    # signatures, whatever its version adds).
    def putrequest(self, *args: Any, **kwargs: Any) -> None:
        self._in_body = False
        self.response_class = FinalResponse
        super().putrequest(*args, **kwargs)

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        super().endheaders(*args, **kwargs)
        self._in_body = True

    def _body_wait(self) -> float | None:
        """The longest wait for the backend to take the next block of the body: the read
        timeout, cut to the time left before the request's deadline."""
        deadline = head_deadline()
        return self.body_timeout if deadline is None else deadline.limit(self.body_timeout)

    def send(self, data: Any) -> None:      # (whatever http.client sends: bytes, a file ...)
        sock = self.sock
        if not self._in_body:
            super().send(data)
            return
        if not _CAN_POLL or isinstance(sock, ssl.SSLSocket) \
                or not isinstance(data, (bytes, bytearray)):
            sock.settimeout(self._body_wait())      # (urllib3 sets its own back for the head)
            super().send(data)
            return
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        view = memoryview(data)
        while view:
            timeout = self._body_wait()
            events = poller.poll(-1 if timeout is None else int(timeout * 1000))
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


if TYPE_CHECKING:
    # The mixin below is only ever combined with a urllib3 pool class (_final_response_pool).
    _Pool = HTTPConnectionPool
else:
    _Pool = object


class _BackendPool(_Pool):
    """Mixin for the adapter's urllib3 pool classes: each request's connection learns its
    read timeout (the wait for the backend to take a block of the body), a request that
    could not be sent in time is a read timeout, and urllib3's retries keep to the
    request's deadline."""

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> BaseHTTPResponse:
        # (urllib3's signature, passed on as it comes; its own retries pass ``retries``
        # as the fifth argument, requests by name)
        deadline = head_deadline()
        if deadline is not None:
            if "retries" in kwargs:
                kwargs["retries"] = within_deadline(kwargs["retries"], deadline)
            elif len(args) > 2:
                args = (*args[:2], within_deadline(args[2], deadline), *args[3:])
        return super().urlopen(method, url, *args, **kwargs)

    def _make_request(self, conn: Any, method: str, url: str, *args: Any,
                      **kwargs: Any) -> BaseHTTPResponse:
        # (urllib3's private step, called with ``timeout`` by name, that sends one request
        # on ``conn`` and reads its response head)
        timeout = self._get_timeout(kwargs.get("timeout", self.timeout))
        timeout.start_connect()         # (of this copy: read_timeout then reads it)
        limit = Timeout.resolve_default_timeout(timeout.read_timeout)
        if isinstance(conn, _BackendConnection):
            conn.body_timeout = limit
        try:
            return super()._make_request(conn, method, url, *args, **kwargs)
        except TimeoutError as exc:     # the socket's: sending the request (not urllib3's)
            raise ReadTimeoutError(
                self, url, "Read timed out: the backend stopped reading the request. "
                           f"(read timeout={limit})") from exc


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
    """A subclass of urllib3 ``pool_class`` (and :class:`_BackendPool`) whose connections
    are :class:`_BackendConnection`."""
    connection = pool_class.ConnectionCls
    if issubclass(connection, _BackendConnection):
        return pool_class
    mixed = type(connection.__name__, (_BackendConnection, connection), {})
    # type() with three arguments is typed as returning a plain ``type``: this one is a
    # subclass of pool_class.
    return cast("type[HTTPConnectionPool]", type(
        pool_class.__name__, (_BackendPool, pool_class), {"ConnectionCls": mixed}))
