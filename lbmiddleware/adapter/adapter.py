"""A ``requests`` transport adapter that spreads a Session's calls over a pool of backends.

::

    session = requests.Session()
    session.mount("http://orders/", LoadBalancingAdapter(
        ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], policy="latency", retries=2))
    session.get("http://orders/api/items", params={"page": 2}, timeout=5)

It is an :class:`~requests.adapters.HTTPAdapter` that overrides two steps: :meth:`send` wraps
the parent's ``send`` in a loop of attempts (pick a backend, rewrite the URL, send, report),
and :meth:`build_response` gives the caller a response for the URL it asked for (so cookies,
redirects and ``response.url`` stay on the virtual host). Pooling, TLS, proxies and the
user's own ``max_retries`` (a urllib3 ``Retry``, applied per backend) are the parent's.

Each attempt is reported to the :class:`~lbmiddleware.balancer.Balancer` with its outcome
and its time to the response head. The attempt counts as in flight until its body is done:

* ``stream=False`` (the default): the body is read inside the attempt, so a connection cut
  mid-body is a failure that can still be retried (the caller has seen nothing yet). It is
  read undecoded: decoding stays requests' business, after the attempt (a false
  ``Content-Encoding`` is not a backend failure), and ``Response.elapsed`` stays the time
  to the response head, as requests documents it;
* ``stream=True``: the outcome and latency are fixed when the head arrives, and the report
  is made when the body is read to the end, the response is closed, or it is garbage
  collected, exactly once. ``least_conn`` and ``latency`` therefore see a response being
  streamed as in flight, which it is: its backend is still sending it.

Retries follow ``SEMANTICS.md``, through the attempt loop every front-end shares
(:mod:`lbmiddleware.core.attempts`; requests' errors become outcomes in one table,
``_FAILURES``): a connect failure is retried on another backend for any method; a read
timeout, a reset or a status in ``fail_statuses`` only for idempotent methods whose body
can be sent again (none, bytes, str, a seekable file), or for any method with
``retry_non_idempotent=True``. A retry never
goes to a backend already tried, and there are at most ``retries`` of them. When every
attempt answered with a failure status the last response is returned as it is; when every
attempt raised, the last exception is raised again with requests' own arguments (``args[0]``
is urllib3's error), naming the backends tried in its message and in ``backends_tried``.

Interim responses: ``http.client`` skips only ``100 Continue``, so the adapter's connection
pools read responses with :class:`FinalResponse`, which skips every 1xx but ``101`` (a
``103 Early Hints`` would otherwise be taken as final, and the real response left on the
pooled connection for the next request to read). A ``101`` cannot be skipped (what follows
is another protocol): it fails the attempt, and urllib3 closes that connection.

Early answers: a backend that answers before reading the request body (a 413 for an upload
too large) gets no more of it, its answer is returned at once (a success for its health),
and that connection is closed after it (:class:`_BackendConnection`; plain HTTP only).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import http.client
import io
import itertools
import re
import select
import socket
import ssl
import time
import urllib.parse
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, DEFAULT_RETRIES, HTTPAdapter
from requests.exceptions import (
    ChunkedEncodingError, ConnectTimeout, ProxyError, RetryError, Timeout,
)
from requests.models import PreparedRequest, Response
from urllib3 import HTTPResponse
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

from ..core.attempts import Attempts, Completion, Outcome, RetryRule
from ..core.backend import Backend
from ..core.balancer import Balancer
from ..errors import NoHealthyBackend
from ..proxy import parse_cookie
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve

__all__ = ["LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
           "FinalResponse", "UnusableResponse"]

# A failure-status response is read (to keep its connection) before a retry only when it
# announces a body this small; a larger or unknown one is closed instead.
DRAIN_LIMIT = 64 * 1024

# Interim (1xx) responses skipped before a final one; a backend sending more is refused.
MAX_INTERIM = 32

# A request body goes out in blocks of this size, each after a check for an early answer.
SEND_BLOCK = 256 * 1024
MAX_HEAD_PEEK = 65536
_CAN_POLL = hasattr(select, "poll")

# Exceptions from the parent's send (or the body read) that are the backend's fault.
# ProxyError is a ConnectionError too, but it is the proxy's, and is tested for first.
# (ContentDecodingError is not: the body is decoded after the attempt, by requests.)
_BACKEND_FAILURES = (requests.ConnectionError, Timeout, ChunkedEncodingError, RetryError)

# How an exception from the parent's send (or the body read) ends an attempt: the first row
# naming the exception's class, or that of the urllib3 error it wraps (``args[0]`` or its
# ``reason``), gives (sent, timeout). A connect failure was not sent: any method may be
# retried. A TLS error may come after sending, so it counts as sent (the safe side).
_FAILURES: tuple[tuple[type | tuple[type, ...], bool | None, bool], ...] = (
    (ProxyError, None, False),                    # the proxy's fault: raised as it is
    (NewConnectionError, False, False),           # refused, unreachable (a ConnectTimeoutError)
    ((ConnectTimeout, ConnectTimeoutError), False, True),
    ((Timeout, ReadTimeoutError), True, True),    # no response head (or body) in time
    (_BACKEND_FAILURES, True, False),             # reset, cut short, TLS, a bad answer
)


class UnusableResponse(http.client.HTTPException):
    """A backend's answer that cannot be read as a final response (an unrequested ``101``,
    endless interim responses). An ``HTTPException``, so urllib3 closes the connection
    instead of pooling it, and requests raises a ``ConnectionError`` (a backend failure)."""


_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class FinalResponse(http.client.HTTPResponse):
    """An ``http.client`` response that reads past every interim (1xx) response but ``101``
    and refuses a status above 599 or a control character in a header value (which a WSGI
    server could not send on).

    ``HTTPResponse.begin`` skips only ``100 Continue``; any other 1xx would be returned as
    the final response with an empty body, and the final one read by the connection's next
    request (RFC 9110 section 15.2: a client must accept and skip them)."""

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(MAX_INTERIM + 1):
            version, status, reason = super()._read_status()
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


class _BackendConnection:
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

    response_class: type = FinalResponse
    sock: Any
    _in_body = False

    def putrequest(self, *args: Any, **kwargs: Any) -> None:
        self._in_body = False
        self.response_class = FinalResponse
        super().putrequest(*args, **kwargs)  # type: ignore[misc]

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        super().endheaders(*args, **kwargs)  # type: ignore[misc]
        self._in_body = True

    def send(self, data: Any) -> None:
        sock = self.sock
        if not self._in_body or not _CAN_POLL or isinstance(sock, ssl.SSLSocket) \
                or not isinstance(data, (bytes, bytearray)):
            return super().send(data)  # type: ignore[misc]
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


class NoHealthyBackendError(NoHealthyBackend, requests.ConnectionError):
    """No backend is left to try; also a ``requests.ConnectionError``, so
    ``except requests.RequestException`` catches it."""


#: The adapter's own settings: the forwarding settings every front-end has (retries,
#: timeouts, ``fail_statuses``, ``hash_key``, ``preserve_host``, ``retry_non_idempotent``).
AdapterSettings = ForwardingSettings


class _UpstreamRequest(PreparedRequest):
    """The request as sent to one backend; remembers the caller's request."""

    original: PreparedRequest


class LoadBalancingAdapter(HTTPAdapter):
    """Load-balances every request of the prefix it is mounted on over a pool of backends.

    ``backends``, ``policy``, ``max_fails``, ... are the Balancer's settings
    (:class:`~lbmiddleware.Settings`); ``retries``, ``connect_timeout``, ``read_timeout``,
    ``fail_statuses``, ``hash_key``, ``preserve_host`` and ``retry_non_idempotent`` the
    adapter's own (:class:`AdapterSettings`, in ``self.settings``). Without ``backends``
    every setting not given comes from ``LB_*`` variables. Pass ``balancer=`` instead to
    share one pool with other adapters and middlewares: then only the adapter's own
    settings may be given here, and each front-end keeps its own.

    ``key_func(request) -> str | None`` gives the sticky key for ``ip_hash`` (by default
    the ``hash_key`` setting: ``header:NAME`` or ``cookie:NAME`` of the outgoing request;
    without a key a request is spread round-robin). ``timeout=None`` on a request means the
    ``connect_timeout`` / ``read_timeout`` settings; any explicit timeout is used as given.
    ``pool_connections`` is raised to the number of backends, so that no backend's pool is
    evicted while a thread uses it (requests issue #1871).
    """

    #: With ``stream=True``, read this many bytes of the body inside the attempt (0: none).
    #: A proxy sets it so that a backend dying between head and body is retried.
    prefetch: int = 0

    def __init__(
        self,
        backends: Iterable[str | Backend] | str | None = None,
        policy: str | None = None,
        *,
        balancer: Balancer | None = None,
        key_func: Callable[[PreparedRequest], str | None] | None = None,
        pool_connections: int = DEFAULT_POOLSIZE,
        pool_maxsize: int = DEFAULT_POOLSIZE,
        max_retries: Any = DEFAULT_RETRIES,
        pool_block: bool = DEFAULT_POOLBLOCK,
        timer: Callable[[], float] = time.perf_counter,
        **options: Any,
    ) -> None:
        if backends is not None:
            options["backends"] = backends
        if policy is not None:
            options["policy"] = policy
        resolved = resolve("LoadBalancingAdapter", (AdapterSettings,), options,
                           shared=None if balancer is None else balancer.settings)
        self._owns_balancer = balancer is None
        if balancer is None:
            balancer = Balancer(settings=resolved.core)
        self.balancer = balancer
        self.settings = settings = resolved[AdapterSettings]
        self.key_func = key_func
        self._timer = timer
        self._default_timeout = (settings.connect_timeout, settings.read_timeout)
        self._fail_statuses = settings.fail_statuses
        self._retries = settings.retries
        self._keyed = key_func is not None or (
            balancer.policy == "ip_hash" and settings.hash_key != "client_ip")
        self._key_kind, _, self._key_name = settings.hash_key.partition(":")
        self._known: set[str] = set()
        pools = max(pool_connections, len(balancer.backends))
        super().__init__(pools, pool_maxsize, max_retries, pool_block)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 key_func: Callable[[PreparedRequest], str | None] | None = None,
                 **overrides: Any) -> "LoadBalancingAdapter":
        """An adapter configured from ``LB_*`` variables (``environ`` for tests).

        Keyword arguments that are settings win over the variables; the others
        (``pool_maxsize``, ``max_retries``, ``timer``, ...) go to the constructor.
        """
        names = {f.name for group in (Settings, AdapterSettings) for f in dataclasses.fields(group)}
        settings = resolve("LoadBalancingAdapter.from_env", (AdapterSettings,),
                           {k: v for k, v in overrides.items() if k in names},
                           environ=environ, from_env=True)
        rest = {k: v for k, v in overrides.items() if k not in names}
        return cls(key_func=key_func, **rest, **_fields(settings))

    @property
    def forwarding(self) -> ForwardingSettings:
        """The forwarding settings (the adapter's own: ``self.settings``), as every
        front-end names them."""
        return self.settings

    # -- the two overridden steps -------------------------------------------------------

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> Response:
        """Send ``request`` to one backend after another until one answers (see module
        doc): key, attempts, forward, outcome."""
        attempts = Attempts(self.balancer, self._retry_rule, request.method or "GET",
                            self.request_key(request) if self._keyed else None)
        forward = functools.partial(
            self._forward, request, request.path_url, self._upstream_headers(request),
            stream=stream, timeout=self._default_timeout if timeout is None else timeout,
            verify=verify, cert=cert, proxies=proxies)
        body: Any = request.body
        replayable, offset = _replay_point(body)
        try:
            backend = attempts.start()
        except NoHealthyBackend as exc:
            raise NoHealthyBackendError(str(exc), request=request) from exc
        with attempts:      # an exception (a ProxyError, an interrupt) releases the attempt
            while True:
                answer, outcome = forward(backend)
                if outcome.ok:
                    break
                following = attempts.retry(outcome, replayable=replayable)
                if following is None:
                    break
                if isinstance(answer, Response):
                    _discard(answer)
                if offset is not None:
                    body.seek(offset)
                backend = following
            if isinstance(answer, Exception):
                raise _naming_backends(answer, request, attempts.tried) from answer
            if stream:      # in flight until the body is read, closed or collected
                _end_when_done(answer, attempts.completion, outcome)
            else:
                attempts.end(outcome)
            return answer

    def build_response(self, req: PreparedRequest, resp: Any) -> Response:
        """The parent's response, made for the caller's request (URL, cookies, redirects)."""
        if isinstance(req, _UpstreamRequest):
            req = req.original
        return super().build_response(req, resp)

    # -- the pools read final responses only ---------------------------------------------

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _read_final_responses(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _read_final_responses(manager)
        return manager

    # -- the steps of one call ----------------------------------------------------------

    def request_key(self, request: PreparedRequest) -> str | None:
        """The sticky key of ``request``: ``key_func``, or the ``hash_key`` header/cookie."""
        if self.key_func is not None:
            return self.key_func(request)
        if self._key_kind == "header":
            return request.headers.get(self._key_name)
        if self._key_kind == "cookie":
            cookie = request.headers.get("Cookie")
            return parse_cookie(cookie).get(self._key_name) if cookie else None
        return None

    def _upstream_headers(self, request: PreparedRequest) -> Any:
        """The headers to send: the request's, plus its own Host with ``preserve_host``."""
        if not self.settings.preserve_host or "Host" in request.headers:
            return request.headers    # urllib3 then sends the backend's host
        headers = request.headers.copy()
        headers["Host"] = urllib.parse.urlsplit(request.url).netloc.rpartition("@")[2]
        return headers

    @staticmethod
    def _upstream_request(request: PreparedRequest, url: str, headers: Any) -> _UpstreamRequest:
        """A shallow copy of ``request`` for ``url`` (the body and cookies are shared)."""
        upstream = _UpstreamRequest()
        upstream.method = request.method
        upstream.url = url
        upstream.headers = headers
        upstream._cookies = request._cookies
        upstream.body = request.body
        upstream.hooks = request.hooks
        upstream.original = request
        return upstream

    def _forward(self, request: PreparedRequest, target: str, headers: Any, backend: Backend,
                 *, stream: bool, **send_options: Any) -> tuple[Response | Exception, Outcome]:
        """One attempt on ``backend``: the response (its body read, or its first piece with
        ``prefetch``) or the exception that failed the attempt, and the attempt's outcome."""
        if backend.url not in self._known:
            self._make_pool_room(backend)
        upstream = self._upstream_request(request, backend.url + target, headers)
        start = self._timer()
        try:
            response = super().send(upstream, stream=stream, **send_options)
            latency = self._timer() - start
            received = 0
            if not stream:
                received = _read_body(response)     # the body is part of the attempt
            elif self.prefetch:
                _prefetch(response, self.prefetch)
        except _BACKEND_FAILURES as exc:
            return exc, _failure(exc, self._timer() - start)
        return response, self._retry_rule.outcome(
            response.status_code, latency, bytes_sent=_size(request.body),
            bytes_received=received)

    @functools.cached_property
    def _retry_rule(self) -> RetryRule:
        """The forwarding settings' retry rule, built once (the settings never change)."""
        forwarding = self.forwarding
        return RetryRule(retries=forwarding.retries, fail_statuses=forwarding.fail_statuses,
                         retry_non_idempotent=forwarding.retry_non_idempotent)

    def _make_pool_room(self, backend: Backend) -> None:
        """Keep one urllib3 pool per backend ever picked, so none is evicted in use."""
        self._known.add(backend.url)
        needed = len(self._known)
        if needed <= self._pool_connections:
            return
        self._pool_connections = needed
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            pools = getattr(manager, "pools", None)
            if pools is not None and getattr(pools, "_maxsize", needed) < needed:
                pools._maxsize = needed

    # -- pickling (requests promises picklable Sessions) ----------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The parent's state plus the settings (with the backends as they are now),
        ``key_func`` and ``timer``: the unpickled adapter starts a fresh pool from them, as
        the parent starts fresh urllib3 pools. A shared ``balancer=`` is refused: the copy
        could not share it."""
        if not self._owns_balancer:
            raise TypeError(
                "a LoadBalancingAdapter built with balancer= cannot be pickled: its Balancer "
                "is shared, and an unpickled copy could not share it; pickle an adapter built "
                "from settings (backends=..., policy=...) instead")
        core = self.balancer.settings.replace(backends=self.balancer.backends)
        settings = FrontEndSettings((core, self.settings))
        return {**super().__getstate__(), "settings": settings, "key_func": self.key_func,
                "timer": self._timer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        LoadBalancingAdapter.__init__(
            self, key_func=state["key_func"], timer=state["timer"],
            pool_connections=state["_pool_connections"], pool_maxsize=state["_pool_maxsize"],
            max_retries=state["max_retries"], pool_block=state["_pool_block"],
            **_fields(state["settings"]))
        self.config = state["config"]

    def __repr__(self) -> str:
        return f"<LoadBalancingAdapter {self.balancer!r}>"


# -- helpers ------------------------------------------------------------------------------

def _fields(settings: FrontEndSettings) -> dict[str, Any]:
    """The settings (the Balancer's and the adapter's) as keyword arguments of the
    constructor."""
    return {field.name: getattr(group, field.name)
            for group in settings for field in dataclasses.fields(group)}


def _read_final_responses(manager: Any) -> None:
    """Make the pools that ``manager`` (a urllib3 pool or proxy manager) creates read their
    responses with :class:`FinalResponse`; idempotent."""
    classes = manager.pool_classes_by_scheme
    if any(cls.ConnectionCls.response_class is not FinalResponse for cls in classes.values()):
        manager.pool_classes_by_scheme = {
            scheme: _final_response_pool(cls) for scheme, cls in classes.items()}


@functools.cache
def _final_response_pool(pool_class: type) -> type:
    """A subclass of urllib3 ``pool_class`` whose connections are :class:`_BackendConnection`."""
    connection = pool_class.ConnectionCls
    if issubclass(connection, _BackendConnection):
        return pool_class
    connection = type(connection.__name__, (_BackendConnection, connection), {})
    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": connection})


def _replay_point(body: Any) -> tuple[bool, int | None]:
    """Can ``body`` be sent again, and from which file offset? ``(True, None)`` for no body
    or an in-memory one, ``(True, offset)`` for a seekable file, ``(False, None)`` for a
    generator, a pipe or anything else read only once."""
    if body is None or isinstance(body, (bytes, str, bytearray, memoryview)):
        return True, None
    seekable = getattr(body, "seekable", None)
    try:
        if seekable() if seekable is not None else hasattr(body, "seek"):
            return True, body.tell()
    except (OSError, ValueError, AttributeError):
        pass
    return False, None


def _failure(exc: Exception, latency: float) -> Outcome:
    """The outcome of an attempt that raised ``exc``: the first row of :data:`_FAILURES`
    that names its class or the urllib3 error it wraps; a row without an outcome (the
    proxy's fault) raises ``exc`` again."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    for kinds, sent, timeout in _FAILURES:
        if isinstance(exc, kinds) or isinstance(reason, kinds):
            if sent is None:
                raise exc
            return Outcome(ok=False, latency=latency, sent=sent, timeout=timeout)
    raise exc                                      # (the last row takes them all)


def _size(body: Any) -> int:
    """The bytes of a request body, where cheaply known (0 for a file or a generator)."""
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


def _naming_backends(exc: Exception, request: PreparedRequest,
                     tried: list[Backend]) -> Exception:
    """``exc`` for the caller: the same kind and arguments (``args[0]`` stays the urllib3
    error requests put there), the caller's ``request``, and the backends tried in
    ``backends_tried`` and in its message."""
    try:
        named = _naming_class(type(exc))(*exc.args, request=request,
                                         response=getattr(exc, "response", None))
    except Exception:        # an exception type with another signature: keep it as it is
        return exc
    named.backends_tried = tuple(b.url for b in tried)
    return named


class _NamesBackends:
    """Mixin of the exceptions the adapter raises: names the backends tried in ``str()``."""

    backends_tried: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{super().__str__()} (backends tried: {', '.join(self.backends_tried)})"

    def __reduce__(self) -> tuple:       # the class is made at run time: pickle its base
        return _renamed, (type(self).__mro__[2], self.args, self.__dict__)


@functools.cache
def _naming_class(base: type) -> type:
    """A subclass of the requests exception ``base`` whose message names the backends."""
    return type(base.__name__, (_NamesBackends, base),
                {"__module__": base.__module__, "__qualname__": base.__qualname__})


def _renamed(base: type, args: tuple, state: dict) -> Exception:
    exc = _naming_class(base)(*args)
    exc.__dict__.update(state)
    return exc


def _read_body(response: Response) -> int:
    """Read the whole body inside the attempt, without decoding it, and return its size:
    decoding is requests' business, after the attempt (it tolerates a false
    ``Content-Encoding`` on a redirect it follows). An encoded body is read raw, and
    requests is given a raw response over the bytes read, which it reads and decodes as it
    would have read the connection. Read errors are translated as
    ``Response.iter_content`` translates them."""
    raw = response.raw
    started = time.perf_counter()
    if "Content-Encoding" not in raw.headers:
        size = len(response.content)     # nothing to decode: the fast path of requests
    else:
        try:
            data = raw.read(decode_content=False)
        except ProtocolError as exc:
            raise ChunkedEncodingError(exc) from exc
        except ReadTimeoutError as exc:
            raise requests.ConnectionError(exc) from exc
        except SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
        response.raw = HTTPResponse(
            body=io.BytesIO(data), headers=raw.headers, status=raw.status, version=raw.version,
            version_string=raw.version_string, reason=raw.reason, preload_content=False,
            original_response=raw._original_response,    # requests reads cookies from it
            retries=raw.retries, enforce_content_length=False, request_url=raw.url)
        size = len(data)
    response.__class__ = _BodyReadResponse
    response._body_time = datetime.timedelta(seconds=time.perf_counter() - started)
    return size


class _BodyReadResponse(Response):
    """A response whose body was read inside the attempt. ``Session.send`` sets ``elapsed``
    to its whole call of the adapter; requests documents it as the time to the response
    head, so the time spent reading the body is taken off that (first) setting."""

    @property
    def elapsed(self) -> datetime.timedelta:
        return self.__dict__["elapsed"]

    @elapsed.setter
    def elapsed(self, value: datetime.timedelta) -> None:
        self.__dict__["elapsed"] = value - self.__dict__.pop("_body_time", datetime.timedelta())


def _prefetch(response: Response, size: int) -> None:
    """Read the first piece (at most ``size`` bytes, whatever has arrived) of a streamed
    body inside the attempt, so that a backend cutting the connection right after the head
    is a failure that can still be retried (nothing has reached the caller). The raw
    pieces, the first one included, are left in ``response.raw_chunks``."""
    chunks = _raw_chunks(response.raw, size)
    try:
        first = next(chunks, b"")
    except ReadTimeoutError as exc:
        response.close()
        raise requests.exceptions.ReadTimeout(exc, response=response) from exc
    except ProtocolError as exc:
        response.close()
        raise ChunkedEncodingError(exc, response=response) from exc
    response.raw_chunks = itertools.chain((first,), chunks) if first else chunks


def _raw_chunks(raw: Any, size: int) -> Iterator[bytes]:
    """The body as it comes, undecoded, in pieces of at most ``size`` bytes: each piece is
    what one read returned, so a slow body is passed on as it arrives, not in full pieces."""
    while True:
        data = raw.read1(size, decode_content=False)
        if not data:
            return
        yield data


def _discard(response: Response) -> None:
    """Let go of a response before a retry: read a small body (the connection goes back to
    the pool), close anything else."""
    try:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT:
            response.content
    except requests.RequestException:
        pass
    finally:
        response.close()


def _end_when_done(response: Response, completion: Completion, outcome: Outcome) -> None:
    """End a streamed attempt with ``outcome`` once, when its raw response releases its
    connection, is closed or is garbage collected, whichever comes first."""
    raw = response.raw
    # wait=False: a garbage collection may run this inside the balancer's own lock.
    done = weakref.finalize(raw, completion.done, outcome, wait=False)
    raw_type = type(raw)
    raw_ref = weakref.ref(raw)        # the wrappers live on raw: no reference cycle

    def release_conn() -> None:
        try:
            target = raw_ref()
            if target is not None:
                raw_type.release_conn(target)
        finally:
            done()

    def close() -> None:
        try:
            target = raw_ref()
            if target is not None:
                raw_type.close(target)
        finally:
            done()

    raw.release_conn = release_conn
    raw.close = close
