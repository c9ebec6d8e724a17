"""One proxied request on the fast path (:class:`FastExchange`): the shared attempt loop
driven by callbacks, and what every exchange of one route shares (:class:`Route`).

The steps are the ASGI exchange's (:mod:`lbmiddleware.asgi.exchange`), with callbacks where
it awaits; the rules are the same objects: the request as the middleware prepares it
(:meth:`LoadBalancerMiddleware.prepare <lbmiddleware.asgi.LoadBalancerMiddleware.prepare>`),
the attempt loop (:class:`~lbmiddleware.core.attempts.Attempts`: start, retry, and its steps
around the loop: failed, answer_status, delivered, client_left, broke_off), the resend rule
(:meth:`Forwarder.may_resend <lbmiddleware.asgi.exchange.Forwarder.may_resend>`), the
response headers (:meth:`Forwarder.response_headers
<lbmiddleware.asgi.exchange.Forwarder.response_headers>`: response rules, redirects, 204/304,
the sticky cookie), the failure words (:func:`~lbmiddleware.upstream.errors.failure_text`; the
deadline's by ``Attempts.failed``).

A request's life: its body, when it has one, is held up to ``retry_buffer`` bytes (then it is
replayable); the first attempt starts once it is all here, or once more than that has come,
or at once when its ``Content-Length`` is more than that (then it is streamed, with the
upload's flow control: the backend's full buffer pauses the client's body). The upstream
head (request line with the backend's base path, the prepared headers, ``Host`` when the
request keeps none of its own, the framing) and what there is of the body go to
:meth:`BackendPool.request <.upstream.BackendPool.request>`; the answer comes back by the
:class:`~.upstream.Receiver` callbacks. Before anything reached the client a failure (no
response, or a status of ``fail_statuses``) is retried as the rule says, else the client
gets 502 or 504 (that status's response, for a failing status). The response's head and
body go to the client in one write when the body is all there; a longer one streams, the
upstream read paused while the client's buffer is full. The outcome carries the request and
response body bytes (the ``bandwidth`` policy's). With ``LB_TIMEOUT`` each attempt's head
timeout is the deadline's time left.

A streamed body is not replayable, as on the ASGI path; its bytes are kept until one of
them is written to an open connection all the same, so that a connect failure (retried for
any method: nothing reached the backend) sends it whole.

To the client: a body of known length goes as it came (the backend's ``Content-Length``); one
without (chunked, or read until the backend closes) is chunked to an HTTP/1.1 client and
ends with the connection for an HTTP/1.0 one. ``HEAD``, 204 and 304 have no body. A client
that leaves aborts the upstream call: the attempt is released, or ended with the bytes passed
when the response had begun; a body that breaks off after the head cuts the client's
connection and ends the attempt as failed (``Attempts.broke_off``). An answer given before
the request's body has all come (the backend's early one, the proxy's own) says
``connection: close`` and the connection closes after it: the rest of the body is dropped.
Each request ends with its access line when the route logs (:mod:`lbmiddleware.proxy.access`:
499 for a client gone before any status).

No task, future or closure per request: the exchange is one object with ``__slots__``, its
callbacks are its methods, the clock is read when an attempt is sent and when its head comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...asgi.exchange import Forwarder
from ...core.attempts import NO_BACKEND_STATUS, Attempts, Outcome, Picker, RetryRule
from ...errors import NoHealthyBackend
from ...proxy.access import CLIENT_CLOSED, access_line
from ...proxy.access import logger as access_logger
from ...upstream import NO_BODY_STATUSES
from ...upstream.errors import failure_text
from ...upstream.head import request_head
from .upstream import BackendPool, Call, UpstreamPools
from .wire import DateHeader, error_bytes, response_head

if TYPE_CHECKING:
    from ...asgi.middleware import LoadBalancerMiddleware, Prepared
    from ...core.backend import Backend
    from ...upstream.errors import UpstreamError
    from ..routes import Entry
    from .connection import ClientConnection, Request

__all__ = ["Route", "FastExchange", "log_access"]

logger = logging.getLogger("lbmiddleware.gateway")

_monotonic = time.monotonic
_INFO = logging.INFO
_LAST_CHUNK = b"0\r\n\r\n"
# A first body piece longer than this goes beside its head in one writev rather than joined
# to it (the join copies the piece; for a few KB it is cheaper than a multi-buffer write).
_JOIN_LIMIT = 16384


class Route:
    """What every exchange of one route (one middleware) shares on the fast path, computed
    once: the middleware (its request rules), its :class:`~lbmiddleware.asgi.exchange.
    Forwarder` (retry rule, resend rule, response headers, deadline), the picker (the
    pool's lock-free lane when the loop owns the pool, else the pool), the route's upstream
    pools (``pools``: :class:`~.upstream.UpstreamPools`), the settings the exchange reads
    (``retry_buffer``, ``access_log``, ``prefix``, ``strip``) and the server's ``Date``
    line."""

    __slots__ = ("middleware", "forwarder", "rule", "picker", "pools", "timeout",
                 "fail_statuses", "retry_buffer", "access_log", "prefix", "strip", "date",
                 "methods", "unsubscribe", "__weakref__")

    def __init__(self, middleware: LoadBalancerMiddleware, forwarder: Forwarder,
                 picker: Picker, pools: UpstreamPools, date: DateHeader) -> None:
        settings = middleware.settings
        self.middleware = middleware
        self.forwarder = forwarder
        self.rule: RetryRule = forwarder.rule
        #: The statuses that fail an attempt (the rule's: :meth:`RetryRule.outcome`).
        self.fail_statuses = self.rule.fail_statuses
        self.picker = picker
        self.pools = pools
        self.timeout = forwarder.timeout
        self.retry_buffer = settings.retry_buffer
        self.access_log = settings.access_log
        self.prefix = settings.prefix
        self.strip = settings.strip_prefix
        self.date = date
        #: method -> what the exchanges need of it (:meth:`method`; the first 32 seen)
        self.methods: dict[str, tuple[bytes, bool, bool]] = {}
        #: Stops following the pool's departures (set by the dispatcher).
        self.unsubscribe: Callable[[], None] | None = None

    def close(self) -> None:
        """Stop following the pool; close the idle upstream connections (those in use as
        their responses end)."""
        unsubscribe, self.unsubscribe = self.unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        self.pools.close()

    def method(self, method: str) -> tuple[bytes, bool, bool]:
        """What an exchange needs of ``method``, worked out once per method: its bytes, whether
        it is ``HEAD`` (no body in the answer), and the resend rule's answer for a body that
        can be sent again (:meth:`Forwarder.may_resend
        <lbmiddleware.asgi.exchange.Forwarder.may_resend>`: the method and the body decide
        it, so most requests need not ask)."""
        found = self.methods.get(method)
        if found is None:
            found = (method.encode("ascii"), method == "HEAD",
                     self.forwarder.may_resend(method, True))
            if len(self.methods) < 32:
                self.methods[method] = found
        return found


def log_access(request: Request, client: str | None, status: int | None,
               attempts: Attempts | None) -> None:
    """The request's access line (:func:`~lbmiddleware.proxy.access.access_line`), its
    duration from the head's arrival; ``status`` None: the client left before one."""
    if not access_logger.isEnabledFor(_INFO):
        return
    tried = attempts.tried if attempts is not None else ()
    access_logger.info(access_line(client, request.method, request.path,
                                   CLIENT_CLOSED if status is None else status,
                                   tried[-1].url if tried else None, len(tried),
                                   _monotonic() - request.arrived))


class FastExchange:
    """One request through the fast path (see the module's docstring): the connection's
    :class:`~.connection.Handler` and the upstream call's :class:`~.upstream.Receiver`."""

    __slots__ = (
        "route", "connection", "request", "entry", "method", "method_bytes", "head_request",
        "resend", "target", "headers", "add_host", "length", "key", "prefer", "secure",
        # the request body: held (None once a streamed piece left without a copy), its
        # size, all of it here, being streamed to the current call, streamed ever
        "held", "size", "body_done", "streaming", "streamed", "paused",
        # the attempts
        "attempts", "backend", "pool", "call", "sent_at", "head_at", "latency",
        # the response
        "status", "pending", "chunked", "close", "received", "finished",
    )

    # Set by the attempt (_attempt) or by its answer's head (upstream_head) before anything
    # reads them, so not in __init__ (a store each per request, for nothing):
    backend: Backend        # the current attempt's
    pool: BackendPool       # its upstream pool
    sent_at: float          # the clock when it was sent
    head_at: float          # when its head came (its end may come in that read)
    latency: float          # the answered attempt's time to its head
    close: bool             # the connection closes after the response

    def __init__(self, route: Route, request: Request, connection: ClientConnection,
                 prepared: Prepared, entry: Entry | None) -> None:
        self.route = route
        self.connection = connection
        self.request = request
        self.entry = entry
        method = request.method
        self.method = method
        # (the resend rule's answer for a body that can be sent again)
        self.method_bytes, self.head_request, self.resend = (route.methods.get(method)
                                                             or route.method(method))
        (self.target, self.headers, self.add_host, self.length, self.key, self.prefer,
         self.secure) = prepared
        self.held: list[bytes] | None = []
        self.size = 0
        self.body_done = self.length == 0
        self.streaming = False
        self.streamed = False           # an attempt has streamed it: not replayable
        self.paused = False             # the client's body is paused for the upload
        self.attempts: Attempts | None = None
        self.call: Call | None = None
        # the status the client gets; 0: none yet (while not finished: a backend's answer)
        self.status = 0
        self.pending: bytes | None = None       # the response head, held for its body
        self.chunked = False            # the body is chunked to the client
        self.received = 0               # response body bytes passed to the client
        self.finished = False

    def begin(self) -> None:
        """Start at once without a body, or with one whose length is over ``retry_buffer``
        (streamed); else ask for it (``100 Continue`` when the client waits for one) and
        start once it is held, or once more than ``retry_buffer`` bytes have come."""
        try:
            if self.body_done:
                self._start()
                return
            self.connection.send_continue()
            length = self.length
            if length is not None and length > self.route.retry_buffer:
                self.streaming = True
                self._start()
        except Exception:
            self._crash()

    # -- the client's side (Handler) -----------------------------------------------------

    def body(self, data: bytes) -> None:
        if self.finished or self.status:
            return                      # answered: the rest of the upload is dropped
        try:
            if self.streaming:
                call = self.call
                if call is not None:
                    call.send_body(data)
                    held = self.held
                    if held is not None:
                        if call.bytes_sent:
                            self.held = None        # sent without a copy: not replayable
                        else:
                            held.append(data)
                            self.size += len(data)
                return
            held = self.held
            if held is not None:
                held.append(data)
                self.size += len(data)
                if self.attempts is None and self.size > self.route.retry_buffer:
                    self.streaming = True           # too long to hold: streamed from now
                    self._start()
        except Exception:
            self._crash()

    def body_end(self) -> None:
        self.body_done = True
        if self.finished or self.status:
            return
        try:
            if self.attempts is None:
                if self.length is None and not self.size:
                    self.length = 0             # chunked, and empty after all
                self._start()
            elif self.streaming:
                self.streaming = False
                call = self.call
                if call is not None:
                    call.end_body()
        except Exception:
            self._crash()

    def client_lost(self) -> None:
        """The client closed, reset or timed out: the upstream call is aborted; the attempt
        is released, or ended with the bytes passed when its response had begun."""
        if self.finished:
            return
        call, self.call = self.call, None
        if call is not None:
            call.abort()
        attempts = self.attempts
        if attempts is not None:
            answered = self._answered(call.bytes_sent) if call is not None and self.status \
                else None
            attempts.client_left(answered, self.received)
        self._finish()

    def writable(self) -> None:
        """The client's buffer drained: read the backend's response again."""
        call = self.call
        if call is not None and not self.finished:
            call.resume_reading()

    # -- the attempts --------------------------------------------------------------------

    def _start(self) -> None:
        route = self.route
        now = _monotonic()          # the deadline's start, the pick's time, the attempt's
        # (by position: a class called with keywords builds a dict of them)
        self.attempts = attempts = Attempts(route.picker, route.rule, self.method, self.key,
                                            self.prefer, route.timeout, now)
        try:
            backend = attempts.start()
        except NoHealthyBackend:
            self._error(NO_BACKEND_STATUS)
            return
        self._attempt(backend, now)

    def _attempt(self, backend: Backend, now: float | None = None) -> None:
        """Send the request to ``backend``: the head and the body held; the rest follows
        (:meth:`body`) when it is streamed. ``now``: a clock reading of this callback's."""
        route = self.route
        self.backend = backend
        self.pool = pool = route.pools.pool(backend)
        held = self.held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
        else:
            data = b""
        more = not self.body_done
        if held is None:
            raise RuntimeError("a retry without the body: it went upstream without a copy")
        head = request_head(self.method_bytes, pool.base_path + self.target, self.headers,
                            pool.authority if self.add_host else None,
                            self.length if more else len(data))
        if now is None:
            now = _monotonic()
        attempts = self.attempts
        if attempts is None:
            raise RuntimeError("an attempt before the attempts began")
        deadline = attempts.deadline
        left = None if deadline is None else deadline - now
        self.streaming = more
        if more:
            self.streamed = True
        if self.paused:                 # (by the call before, which will not resume it)
            self.paused = False
            self.connection.resume_body()
        self.sent_at = now
        # (by position: more_body, resend, head_timeout, head_request, chunked)
        self.call = pool.request(
            head, data, self, more,
            route.forwarder.may_resend(self.method, False) if more else self.resend,
            left, self.head_request,
            more and self.length is None)     # (request_head's framing rule)

    # -- the backend's side (Receiver) ---------------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      length: int | None, chunked: bool) -> None:
        if self.finished:
            return
        try:
            call = self.call
            attempts = self.attempts
            if call is None or attempts is None:
                raise RuntimeError("a response head without its call")
            route = self.route
            now = _monotonic()
            latency = now - self.sent_at
            if status in route.fail_statuses:
                # (an outcome is built only for this: the common end passes its fields)
                outcome = route.rule.outcome(status, latency, call.bytes_sent)
                following = attempts.retry(outcome, replayable=not self.streamed, now=now)
                if following is not None:
                    call.abort()            # another backend gets a chance
                    self._attempt(following, now)
                    return
            self.latency = latency
            self.status = status
            self.streaming = False          # (the call stopped the upload)
            request = self.request
            out = route.forwarder.response_headers(status, headers, self.backend, self.headers,
                                                   self.prefer, self.secure)
            # (an answer before the upload's end: the rest is dropped, the connection closes)
            close = not (request.keep_alive and self.body_done)
            framed = False              # chunked to the client
            stated = None               # a length the head states (the rules dropped it)
            if self.head_request or status in NO_BODY_STATUSES:
                # no body; a HEAD's answer says what a GET's would (not chunked to 1.0), and
                # a 204's or 304's no Transfer-Encoding (RFC 9112 6.1)
                framed = (chunked and self.head_request and request.version != "1.0"
                          and status not in NO_BODY_STATUSES)
            elif chunked or length is None:
                if request.version == "1.0":
                    close = True        # no chunked to HTTP/1.0: the body ends with the
                else:                   # connection
                    framed = self.chunked = True
            else:
                for name, _ in out:     # (the backend's Content-Length, as a rule passed it)
                    if len(name) == 14 and name.lower() == b"content-length":
                        break
                else:
                    # its Connection named it: the body is framed by its length all the same
                    # (a head without framing would run to the close, RFC 9112 6.3)
                    stated = length
            self.close = close
            # (by position: date, length, chunked, close)
            head = response_head(status, reason, out, route.date.value(), stated, framed, close)
            if call.follows:
                self.pending = head         # written with the body: one write
                self.head_at = now          # (its end may come in this callback too)
            else:
                self.connection.write(head)
        except Exception:
            self._crash()

    def upstream_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.received += len(data)
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        connection = self.connection
        self._write(data)
        if connection.writing_paused:
            call = self.call
            if call is not None:
                call.pause_reading()
                connection.on_writable(self.writable)

    def upstream_end(self, last: bytes) -> None:
        if self.finished:
            return
        try:
            call = self.call
            attempts = self.attempts
            if call is None or attempts is None or not self.status:
                raise RuntimeError("a response's end without its head")
            if last:
                self.received += len(last)
                if self.chunked:
                    last = b"%x\r\n%b\r\n%b" % (len(last), last, _LAST_CHUNK)
            elif self.chunked:
                last = _LAST_CHUNK
            pending = self.pending
            if pending is None:
                now = None
                if last:
                    self.connection.write(last)
            else:
                # The whole response came in one read: the head goes with its body, and that
                # read's clock reading serves the end too.
                now = self.head_at
                self._write(last)
            # (the answered attempt's fields, not an outcome: Attempts.delivered_answer)
            attempts.delivered_answer(self.status, self.latency, self.received,
                                      call.bytes_sent, now)
            self.call = None
            self._finish()
            self.connection.done(not self.close)
        except Exception:
            self._crash()

    def upstream_failed(self, error: UpstreamError) -> None:
        if self.finished:
            return
        try:
            attempts = self.attempts
            if attempts is None:
                raise RuntimeError("a failure without its call")
            pool = self.pool
            if self.status:
                # The head went out, the body broke: the client sees a cut response, and the
                # backend a failure that no retry can follow.
                self.call = None
                attempts.broke_off(self._answered(error.bytes_sent), self.received,
                                   failure_text(error, pool), timeout=error.timeout)
                self._finish()
                self.connection.abort()
                return
            now = _monotonic()
            outcome = attempts.failed(error, now - self.sent_at, failure_text(error, pool))
            following = attempts.retry(outcome, replayable=not self.streamed, now=now)
            if following is not None:
                self._attempt(following, now)
                return
            self.call = None
            self._error(Attempts.answer_status(outcome))
        except Exception:
            self._crash()

    def _write(self, data: bytes) -> None:
        """Write response bytes to the client, after the head when it is still held (one
        write; a long piece beside it in one writev, not copied)."""
        pending = self.pending
        if pending is None:
            self.connection.write(data)
        else:
            self.pending = None
            if len(data) > _JOIN_LIMIT:
                self.connection.writelines((pending, data))
            else:
                self.connection.write(pending + data)

    def _answered(self, bytes_sent: int) -> Outcome:
        """The answered attempt's outcome at its head (``bytes_sent``: its request body
        bytes), for the rare endings that take one (the client gone, a body broken off)."""
        return self.route.rule.outcome(self.status, self.latency, bytes_sent)

    def upload_paused(self) -> None:
        if not self.finished:
            self.paused = True
            self.connection.pause_body()

    def upload_resumed(self) -> None:
        if not self.finished and self.paused:
            self.paused = False
            self.connection.resume_body()

    # -- the endings ---------------------------------------------------------------------

    def _error(self, status: int) -> None:
        """The proxy's own answer (502, 503, 504) to the client, and the request's end;
        the connection closes after it when the request's body has not all come (it is
        dropped)."""
        self.status = status
        connection = self.connection
        close = not (self.request.keep_alive and self.body_done)
        connection.write(error_bytes(status, date=self.route.date.value(), close=close,
                                     head_only=self.head_request))
        self._finish()
        connection.done(not close)

    def _finish(self) -> None:
        """The request is over for the route: its count in flight, its access line. A bug
        in them is logged, never raised: the caller's ``done()`` or abort of the connection
        follows all the same."""
        self.finished = True
        self.call = None
        try:
            entry = self.entry
            if entry is not None:
                entry.leave()
            route = self.route
            if route.access_log:
                request = self.request
                log_access(request,
                           route.middleware.client_address(self.connection.peer,
                                                           request.headers),
                           self.status or None, self.attempts)
        except Exception:
            logger.exception("the end of %s %s failed on the fast path", self.method,
                             self.request.path)

    def _crash(self) -> None:
        """A bug of the fast path: logged, the upstream call and the client's connection cut,
        the attempt released (never a pick left in flight, nor a route's count). The
        connection is cut even when the request had finished (a bug after it ended, before
        its ``done()``: else the connection waited for good)."""
        logger.exception("the fast path failed on %s %s", self.method, self.request.path)
        if not self.finished:
            call, self.call = self.call, None
            if call is not None:
                call.abort()
            if self.attempts is not None:
                self.attempts.release()
            self._finish()
        self.connection.abort()
