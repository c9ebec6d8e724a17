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
user's own ``max_retries`` (a urllib3 ``Retry``, applied per backend) are the parent's;
the proxies are decided for each backend's URL, not the virtual host's
(:mod:`lbmiddleware.adapter.proxies`: ``NO_PROXY`` naming a backend's address is honoured).

A backend that builds absolute URLs from the ``Host`` it got answers with its own address
(``Location: http://10.0.0.5:8080/new``); such a ``Location``, ``Content-Location`` or
``Refresh`` is mapped to the virtual host (``http://orders/new``), so requests follows the
redirect through the adapter again (:mod:`lbmiddleware.proxy.redirects`, nginx's
``proxy_redirect default``).

Each attempt is reported to the :class:`~lbmiddleware.core.balancer.Balancer` with its
outcome and its time to the response head. The attempt counts as in flight until its body
is done: read inside the attempt with ``stream=False`` (the default), read by the caller
with ``stream=True`` (see :mod:`lbmiddleware.adapter.bodies`).

Retries follow ``docs/contract.md``, "Retries", through the attempt loop every front-end
shares (:mod:`lbmiddleware.core.attempts`; requests' errors become outcomes in one table,
:mod:`lbmiddleware.adapter.errors`): a connect failure is retried on another backend for
any method; a read timeout, a reset or a status in ``fail_statuses`` only for idempotent
methods whose body can be sent again (none, bytes, str, a seekable file), or for any method
with ``retry_non_idempotent=True``. A retry never goes to a backend already tried, and
there are at most ``retries`` of them. When every attempt answered with a failure status
the last response is returned as it is; when every attempt raised, the last exception is
raised again with requests' own arguments (``args[0]`` is urllib3's error), naming the
backends tried in its message and in ``backends_tried``.

The adapter's pools read final responses only (interim 1xx responses are skipped), and a
backend that answers before reading the request body gets no more of it
(:mod:`lbmiddleware.adapter.responses`).

Timeouts: a request's ``timeout=`` (or the ``connect_timeout`` / ``read_timeout`` settings)
applies to each attempt, as urllib3 applies it to each try: with ``retries=2``, three
hanging backends and ``timeout=1`` a call waits 3 s. The read timeout is also the longest
wait for a backend to take the next block of the request body: an upload it stops reading
raises requests' ``ReadTimeout``. ``LB_TIMEOUT`` (``timeout=`` among the adapter's settings)
bounds the whole request, up to its response head: each attempt's timeouts are cut to the
time left, and so is every wait beneath while the head is awaited (the connect, each block
of the body, each read of the head: a head trickling in a byte at a time is cut at the
deadline too; :mod:`lbmiddleware.adapter.responses`); a retry is not started without time
for it, nor a try of urllib3's own ``max_retries`` (:mod:`lbmiddleware.adapter.retries`),
and a timeout the deadline cut raises requests' own ``ReadTimeout`` / ``ConnectTimeout``
naming the deadline and the backends tried. Once the head has come, the body's reads get
the attempt's own read timeout back: the deadline bounds the wait for an answer, not its
length.

Sticky cookies (``LB_STICKY_COOKIE``): the request's ``Cookie`` header (where the Session's
jar put it) names the backend to prefer; a response from another backend gets a
``Set-Cookie`` for it, which the Session's jar keeps for the virtual host (the response is
built for the caller's URL). Never on an exception.

Each attempt reports the request body bytes it sent (in memory: its length; a file: from
where it stood to its end; a generator: as its chunks are sent) and the response body
bytes it received.
"""

from __future__ import annotations

import functools
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, DEFAULT_RETRIES, HTTPAdapter
from requests.exceptions import RequestException
from requests.models import PreparedRequest, Response
from requests.utils import super_len
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout as Urllib3Timeout

from ..core.attempts import Attempts, Outcome
from ..core.backend import Backend, Source
from ..core.balancer import Balancer
from ..core.events import MembershipChanged
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve, setting_names
from ..errors import NoHealthyBackend
from ..fleet.departures import follow_departures
from ..fleet.front_end import (
    AwaitingHead,
    ClientFrontEnd,
    deadline_limits,
    deadline_outcome,
    deadline_words,
)
from ..proxy.redirects import REDIRECT_HEADERS, RedirectRule, mapped_redirects, url_origin
from ..upstream.tls import backend_verify_cert
from .bodies import discard, end_when_done, prefetch_body, read_body, watch_body
from .departures import close_departed
from .errors import BACKEND_FAILURES, NoHealthyBackendError, failure, naming_backends
from .proxies import CallProxies
from .responses import read_final_responses

__all__ = ["LoadBalancingAdapter", "AdapterSettings"]

#: The first requests whose HTTPAdapter has ``build_connection_pool_key_attributes``, the
#: step through which a backend found by DNS is named over TLS (SNI, the certificate's name):
#: before it the override below would be skipped without a word. The ``requests`` extra asks
#: for it (setup.cfg).
REQUESTS_NEEDED = "2.32.3"
if not hasattr(HTTPAdapter, "build_connection_pool_key_attributes"):
    _found = getattr(requests, "__version__", "?")
    raise ImportError(f"lbmiddleware.adapter needs requests {REQUESTS_NEEDED} or later, not "
                      f"{_found}: pip install 'lbmiddleware[requests]'", name="requests")

#: The adapter's own settings: the forwarding settings every front-end has (retries,
#: timeouts, ``fail_statuses``, ``hash_key``, ``preserve_host``, ``retry_non_idempotent``).
AdapterSettings = ForwardingSettings

if TYPE_CHECKING:
    from requests.structures import CaseInsensitiveDict

    # What requests' send accepts (its own aliases are private): ``timeout`` in seconds, or
    # (connect, read); ``verify`` a flag or a CA bundle's path; ``cert`` a file or (cert,
    # key). For type checkers only: CaseInsensitiveDict is generic from requests 2.34 on.
    TimeoutArg = float | tuple[float | None, float | None] | None
    VerifyArg = bool | str
    CertArg = str | tuple[str, str] | None
    Headers = CaseInsensitiveDict[str | bytes]


class _UpstreamRequest(PreparedRequest):
    """The request as sent to one backend; remembers the caller's request and the backend,
    and the sticky cookie its response gets (``set_cookie``: a ``Set-Cookie`` value)."""

    original: PreparedRequest
    backend: Backend
    set_cookie: str | None = None


class LoadBalancingAdapter(ClientFrontEnd, HTTPAdapter):
    """Load-balances every request of the prefix it is mounted on over a pool of backends.

    ``backends``, ``policy``, ``max_fails``, ... are the Balancer's settings
    (:class:`~lbmiddleware.Settings`); ``retries``, ``connect_timeout``, ``read_timeout``,
    ``fail_statuses``, ``hash_key``, ``preserve_host`` and ``retry_non_idempotent`` the
    adapter's own (:class:`~lbmiddleware.ForwardingSettings`, in ``self.settings``).
    Without ``backends`` every setting not given comes from ``LB_*`` variables
    (``environ`` for tests). ``settings=`` passes a ready ``ForwardingSettings`` or
    ``Settings``, or both at once (a ``FrontEndSettings``). Pass ``balancer=`` instead of
    the Balancer's settings to share one pool with other adapters and middlewares: each
    front-end then keeps its own settings, from its keywords, else ``LB_*``, else the
    defaults.

    :meth:`close` (``Session.close()`` calls it) closes the connections and stops the
    sources and health checks of the pool the adapter built; a shared ``balancer=`` is
    left to its owner.

    ``key_func(request) -> str | None`` gives the sticky key for ``ip_hash`` (by default
    the ``hash_key`` setting: ``header:NAME`` or ``cookie:NAME`` of the outgoing request;
    without a key a request is spread round-robin). ``timeout=None`` on a request means the
    ``connect_timeout`` / ``read_timeout`` settings; any explicit timeout is used as given,
    for each attempt; the ``timeout`` setting (``LB_TIMEOUT``) bounds them all (see the
    module doc). With ``sticky_cookie`` (``LB_STICKY_COOKIE``) the Session's cookie jar
    keeps the client on the backend that first answered it (:attr:`sticky_path`: ``/``).
    ``pool_connections`` is raised to the number of backends, so that no backend's pool is
    evicted while a thread uses it (requests issue #1871).

    A backend that leaves the pool (removed by its source or ``update()``, drained) loses
    this adapter's connections: the idle ones at once, the others as their requests end
    (one in flight is not cut); if it comes back, it gets new pools
    (:mod:`lbmiddleware.adapter.departures`). Each adapter on a shared ``balancer=``
    closes its own.
    """

    #: With ``stream=True``, read this many bytes of the body inside the attempt (0: none).
    #: A proxy sets it so that a backend dying between head and body is retried.
    prefetch: int = 0
    #: The rule for a backend's redirects to itself (``Location``, ``Content-Location``,
    #: ``Refresh``): mapped to :meth:`redirect_origin`. A proxy forwarding through the
    #: adapter sets its route's (its prefix put back when it strips it).
    redirects: RedirectRule = RedirectRule()

    def __init__(
        self,
        backends: Iterable[str | Backend | Source] | str | None = None,
        policy: str | None = None,
        *,
        settings: Settings | ForwardingSettings | FrontEndSettings | None = None,
        balancer: Balancer | None = None,
        environ: Mapping[str, str] | None = None,
        key_func: Callable[[PreparedRequest], str | None] | None = None,
        pool_connections: int = DEFAULT_POOLSIZE,
        pool_maxsize: int = DEFAULT_POOLSIZE,
        max_retries: int | Retry = DEFAULT_RETRIES,
        pool_block: bool = DEFAULT_POOLBLOCK,
        timer: Callable[[], float] = time.perf_counter,
        **options: Any,
    ) -> None:
        forwarding = self._set_up("LoadBalancingAdapter", backends, policy, options,
                                  settings=settings, balancer=balancer, environ=environ,
                                  keyed_by_func=key_func is not None)
        self.key_func = key_func
        self._timer = timer
        self._default_timeout = (forwarding.connect_timeout, forwarding.read_timeout)
        self._known: set[str] = set()
        pools = max(pool_connections, len(self.balancer.backends))
        super().__init__(pools, pool_maxsize, max_retries, pool_block)
        self._unsubscribe = follow_departures(self, self.balancer,
                                              LoadBalancingAdapter._close_departed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 balancer: Balancer | None = None, **overrides: Any) -> LoadBalancingAdapter:
        """An adapter configured from ``LB_*`` variables (``environ`` for tests), even
        when ``backends`` is given; with ``balancer=``, the adapter's own settings only.

        Keyword arguments that are settings win over the variables; the others
        (``key_func``, ``pool_maxsize``, ``max_retries``, ``timer``, ...) go to the
        constructor.
        """
        names = setting_names(Settings, ForwardingSettings)
        settings = resolve("LoadBalancingAdapter.from_env", (ForwardingSettings,),
                           {k: v for k, v in overrides.items() if k in names},
                           shared=None if balancer is None else balancer.settings,
                           environ=environ, from_env=True)
        rest = {k: v for k, v in overrides.items() if k not in names}
        return cls(settings=settings, balancer=balancer, **rest)

    @property
    def forwarding(self) -> ForwardingSettings:
        """The forwarding settings (the adapter's own: ``self.settings``), as every
        front-end names them."""
        return self.settings

    # -- the two overridden steps -------------------------------------------------------

    def send(self, request: PreparedRequest, stream: bool = False, timeout: TimeoutArg = None,
             verify: VerifyArg = True, cert: CertArg = None,
             proxies: dict[str, str] | None = None) -> Response:
        """Send ``request`` to one backend after another until one answers (see module
        doc): key, attempts, forward, outcome."""
        if not self._ready:
            self._wait_ready()
        attempts = self._attempts(
            request.method or "GET", self.request_key(request) if self._keyed else None,
            None if self.sticky_cookie is None else _text(request.headers.get("Cookie")))
        body = request.body
        size = _size(body)
        verify, cert = self.tls_arguments(verify, cert)
        forward = functools.partial(
            self._forward, request, request.path_url, self._upstream_headers(request),
            attempts=attempts, size=size or 0,
            counted=_CountedBody(body) if size is None else None,
            stream=stream, timeout=self._default_timeout if timeout is None else timeout,
            verify=verify, cert=cert, proxies=self.call_proxies(request, proxies))
        replayable, rewind = _replay_point(body)
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
                    discard(answer)
                if rewind is not None:
                    rewind()
                backend = following
            if isinstance(answer, Exception):
                raise naming_backends(answer, request, attempts.tried,
                                      deadline_words(attempts, outcome)) from answer
            if stream:      # in flight until the body is read, closed or collected
                end_when_done(answer, attempts, outcome)
            else:
                attempts.end(outcome)
            return answer

    def build_response(self, req: PreparedRequest, resp: Any) -> Response:
        """The parent's response, made for the caller's request (URL, cookies, redirects),
        with the sticky cookie's ``Set-Cookie`` when it has one (for the Session's jar,
        which reads http.client's headers, and for the response's)."""
        if isinstance(req, _UpstreamRequest):
            if req.set_cookie is not None:
                _add_set_cookie(resp, req.set_cookie)
            self._map_redirects(resp, req.backend, req.original)
            req = req.original
        return super().build_response(req, resp)

    def redirect_origin(self, request: PreparedRequest) -> str | None:
        """The origin a backend's redirect to itself is mapped to: the caller's URL's (the
        virtual host), so that requests follows it through the adapter again. (A proxy
        forwarding through the adapter gives its client's.)"""
        return url_origin(request.url or "")

    def _map_redirects(self, raw: Any, backend: Backend, request: PreparedRequest) -> None:
        """Map ``Location``, ``Content-Location`` and ``Refresh`` pointing at ``backend``
        (its scheme, address or server name, port, under its base path) in urllib3's
        response ``raw`` to :meth:`redirect_origin` (:mod:`lbmiddleware.proxy.redirects`,
        the rule every front-end follows): requests reads them from there."""
        headers = getattr(raw, "headers", None)
        if headers is None or not any(name in headers for name in REDIRECT_HEADERS):
            return
        mapped = mapped_redirects(headers.items(), self.redirects.bind(
            backend, functools.partial(self.redirect_origin, request)))
        if mapped is not None:
            headers.clear()
            headers.extend(mapped)

    # -- the pools read final responses only ---------------------------------------------

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        read_final_responses(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        read_final_responses(manager)
        return manager

    def build_connection_pool_key_attributes(
            self, request: PreparedRequest, verify: VerifyArg,
            cert: CertArg = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The parent's pool key, plus the TLS name of a backend reached by address: SNI
        and certificate verification use ``backend.tls_server_name`` (urllib3's
        ``server_hostname`` and ``assert_hostname``, which also keep its pool apart)."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        backend = getattr(request, "backend", None)
        if isinstance(backend, Backend) and backend.server_name is not None \
                and host_params.get("scheme") == "https":
            pool_kwargs["server_hostname"] = pool_kwargs["assert_hostname"] = (
                backend.server_name)
        return host_params, pool_kwargs

    # -- the steps of one call ----------------------------------------------------------

    def request_key(self, request: PreparedRequest) -> str | None:
        """The sticky key of ``request``: ``key_func``, or the ``hash_key`` header/cookie."""
        if self.key_func is not None:
            return self.key_func(request)
        return self._header_key(lambda name: _text(request.headers.get(name)))

    def sticky_secure(self, request: PreparedRequest) -> bool:
        """Whether the sticky cookie set for ``request`` is ``Secure``: the caller's URL is
        https. (A proxy forwarding through the adapter says whether its client's is.)"""
        return (request.url or "").startswith("https:")

    def tls_arguments(self, verify: VerifyArg, cert: CertArg) -> tuple[VerifyArg, CertArg]:
        """requests' ``verify=`` and ``cert=`` for the attempts: the caller's when it gave
        them, else the pool's backend TLS settings (``backend_ca``, ``backend_verify``,
        ``backend_client_cert`` / ``_key``:
        :func:`~lbmiddleware.upstream.tls.backend_verify_cert`, the rule every front-end
        follows). ``verify=True`` is requests' default, and a
        ``verify`` naming the environment's bundle (``REQUESTS_CA_BUNDLE``,
        ``CURL_CA_BUNDLE``) is what requests puts there when the caller gave none: both
        leave the choice to the pool's settings, more particular than a process's."""
        pool_verify, pool_cert = backend_verify_cert(self.balancer.settings)
        if pool_verify is not True and (verify is True or (
                isinstance(verify, str) and verify in _environment_bundles())):
            verify = pool_verify
        if cert is None:
            cert = pool_cert
        return verify, cert

    def call_proxies(self, request: PreparedRequest, proxies: Mapping[str, str] | None
                     ) -> CallProxies:
        """The proxies of a call, for each backend it tries: the Session decided them for
        the caller's URL (the virtual host); the environment's part is read again for each
        backend's URL (:mod:`lbmiddleware.adapter.proxies`). (A reverse proxy forwarding
        through the adapter reaches its backends directly.)"""
        return CallProxies(proxies, request.url or "")

    def _upstream_headers(self, request: PreparedRequest) -> Headers:
        """The headers to send: the request's, plus its own Host with ``preserve_host``
        (without it, or a Host of the request's own, each backend's: see
        :meth:`_upstream_request`)."""
        if not self.settings.preserve_host or "Host" in request.headers:
            return request.headers
        headers = request.headers.copy()
        headers["Host"] = urllib.parse.urlsplit(request.url or "").netloc.rpartition("@")[2]
        return headers

    @staticmethod
    def _upstream_request(request: PreparedRequest, backend: Backend, target: str,
                          headers: Headers) -> _UpstreamRequest:
        """A shallow copy of ``request`` for ``backend`` (the body and cookies are shared).

        ``Host`` is ``backend.authority`` unless the headers have one: urllib3 would send
        the URL's host, which is an address for a backend found through DNS, and the
        backend answers to its name (``server_name``)."""
        if backend.server_name is not None and "Host" not in headers:
            headers = headers.copy()
            headers["Host"] = backend.authority
        upstream = _UpstreamRequest()
        upstream.method = request.method
        upstream.url = backend.url + target
        upstream.headers = headers
        upstream._cookies = request._cookies
        upstream.body = request.body
        upstream.hooks = request.hooks
        upstream.original = request
        upstream.backend = backend
        return upstream

    def _forward(self, request: PreparedRequest, target: str, headers: Headers,
                 backend: Backend, *, attempts: Attempts, size: int,
                 counted: _CountedBody | None, stream: bool, timeout: TimeoutArg,
                 verify: VerifyArg, cert: CertArg, proxies: CallProxies,
                 ) -> tuple[Response | RequestException, Outcome]:
        """One attempt on ``backend``: the response (its body read, or its first piece with
        ``prefetch``) or the exception that failed the attempt, and the attempt's outcome.
        ``size``: the request body's bytes, unless ``counted`` counts them as they are
        sent. Its timeouts are cut to the time left before the request's deadline."""
        if backend.url not in self._known:
            self._make_pool_room(backend)
        upstream = self._upstream_request(request, backend, target, headers)
        if self.sticky_cookie is not None:
            upstream.set_cookie = self._sticky_header(attempts, backend,
                                                      self.sticky_secure(request))
        sent_before = 0
        if counted is not None:
            upstream.body = counted
            sent_before = counted.sent
        cut: frozenset[str] = frozenset()
        read: float | None = None
        if attempts.deadline is not None:
            given = _limits(timeout)
            read = given["read"]
            limits, cut = deadline_limits(attempts, given)
            timeout = (limits["connect"], limits["read"])
        start = self._timer()
        latency: float | None = None
        try:
            with AwaitingHead(attempts):    # each wait of the I/O cut to the time left
                response = super().send(upstream, stream=stream, timeout=timeout,
                                        verify=verify, cert=cert,
                                        proxies=proxies.for_backend(backend))
            latency = self._timer() - start
            if "read" in cut:       # the deadline ends at the head: not the body's reads
                _body_read_timeout(response, read)
            received = 0
            if not stream:
                received = read_body(response)     # the body is part of the attempt
            else:       # watched as it is read; end_when_done reports what it showed
                watch_body(response)
                if self.prefetch:
                    prefetch_body(response, self.prefetch)
        except BACKEND_FAILURES as exc:
            outcome = failure(exc, self._timer() - start)
            if attempts.deadline is not None and outcome.timeout and latency is None:
                outcome = deadline_outcome(attempts, outcome,
                                           "read" if outcome.sent else "connect", cut)
            sent = size if counted is None else counted.sent - sent_before
            return exc, outcome._replace(bytes_sent=sent) if sent else outcome
        return response, self._retry_rule.outcome(
            response.status_code, latency,
            bytes_sent=size if counted is None else counted.sent - sent_before,
            bytes_received=received)

    def _make_pool_room(self, backend: Backend) -> None:
        """Keep one urllib3 pool per backend picked and still in the balancer, so none is
        evicted in use (those of departed backends are closed: :meth:`_close_departed`)."""
        self._known.add(backend.url)
        needed = len(self._known)
        if needed <= self._pool_connections:
            return
        self._pool_connections = needed
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            pools = getattr(manager, "pools", None)
            if pools is not None and getattr(pools, "_maxsize", needed) < needed:
                pools._maxsize = needed

    def _close_departed(self, event: MembershipChanged) -> None:
        """Backends left the balancer (their drain, if any, has begun): close this adapter's
        connections to them, idle ones now and the others as their requests end
        (:mod:`lbmiddleware.adapter.departures`). On the thread that changed the members."""
        for backend in event.removed:
            self._known.discard(backend.url)
        managers = [self.poolmanager, *list(self.proxy_manager.values())]
        close_departed(managers, event.removed, event.members)

    def close(self) -> None:
        """Close the connection pools, and the Balancer the adapter built (its sources and
        health checks stop); a shared ``balancer=`` is left open, and no longer followed.
        ``Session.close()`` calls this."""
        self._unsubscribe()
        super().close()
        if self._owns_balancer:
            self.balancer.close()

    # -- pickling (requests promises picklable Sessions) ----------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The parent's state plus the settings (with the static backends as they are now,
        and the sources), ``key_func`` and ``timer``: the unpickled adapter starts a fresh
        pool from them, as the parent starts fresh urllib3 pools. A shared ``balancer=`` is
        refused: the copy could not share it."""
        if not self._owns_balancer:
            raise TypeError(
                "a LoadBalancingAdapter built with balancer= cannot be pickled: its Balancer "
                "is shared, and an unpickled copy could not share it; pickle an adapter built "
                "from settings (backends=..., policy=...) instead")
        pool = self.balancer
        static = tuple(b for b in pool.backends if b.source is None)
        core = pool.settings.replace(backends=static + pool.settings.sources)
        settings = FrontEndSettings((core, self.settings))
        return {**super().__getstate__(), "settings": settings, "key_func": self.key_func,
                "timer": self._timer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        LoadBalancingAdapter.__init__(
            self, settings=state["settings"], key_func=state["key_func"], timer=state["timer"],
            pool_connections=state["_pool_connections"], pool_maxsize=state["_pool_maxsize"],
            max_retries=state["max_retries"], pool_block=state["_pool_block"])
        self.config = state["config"]

    def __repr__(self) -> str:
        return f"<LoadBalancingAdapter {self.balancer!r}>"


# -- helpers ------------------------------------------------------------------------------

@runtime_checkable
class _File(Protocol):
    def seek(self, offset: int, /) -> object: ...

    def tell(self) -> int: ...


def _replay_point(body: object) -> tuple[bool, Callable[[], object] | None]:
    """Can ``body`` be sent again, and how is it rewound first? ``(True, None)`` for no
    body or an in-memory one, ``(True, rewind)`` for a seekable file (back to where it is
    now), ``(False, None)`` for a generator, a pipe or anything else read only once."""
    if body is None or isinstance(body, (bytes, str, bytearray, memoryview)):
        return True, None
    if isinstance(body, _File):
        seekable = getattr(body, "seekable", None)
        try:
            if seekable is None or seekable():
                return True, functools.partial(body.seek, body.tell())
        except (OSError, ValueError, AttributeError):
            pass
    return False, None


def _size(body: object) -> int | None:
    """The bytes a request body sends: in memory, its length; a file, from where it stands
    to its end (a pipe's: 0, unknown); None for an iterable of chunks (a generator), which
    :class:`_CountedBody` counts as it is sent."""
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8"))        # (urllib3 2 sends text as UTF-8)
    if isinstance(body, memoryview):
        return body.nbytes
    if hasattr(body, "read"):
        try:
            return super_len(body)
        except (OSError, ValueError):
            return 0
    return None


class _CountedBody:
    """A request body of chunks (a generator, the WSGI middleware's input) that counts the
    bytes of the chunks it gives urllib3 to send (``sent``). Iterated once, whatever the
    attempts: a retry after a connect failure, which took none of them, goes on from
    where it is, as the body itself would."""

    __slots__ = ("_chunks", "sent")

    def __init__(self, body: Any) -> None:
        self._chunks: Iterator[bytes | str] = iter(body)
        self.sent = 0

    def __iter__(self) -> Iterator[bytes | str]:
        for chunk in self._chunks:
            self.sent += len(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            yield chunk


def _limits(timeout: TimeoutArg | Urllib3Timeout) -> dict[str, float | None]:
    """requests' ``timeout`` as an attempt's limits by name: one number for both, a
    ``(connect, read)`` pair, or a urllib3 ``Timeout``; None for no limit."""
    if isinstance(timeout, tuple):
        connect, read = timeout
    elif isinstance(timeout, Urllib3Timeout):
        connect, read = (_number(timeout.connect_timeout), _number(timeout.read_timeout))
    else:
        connect = read = timeout
    return {"connect": connect, "read": read}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _body_read_timeout(response: Response, read: float | None) -> None:
    """Give the connection whose response head was read (``response``'s) the read timeout
    ``read`` (None: no limit) for the reads of its body: the attempt's own, which the
    request's deadline had cut for the head."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(read)


def _add_set_cookie(raw: Any, value: str) -> None:
    """Add a ``Set-Cookie`` header to urllib3's response ``raw``: to its headers (the
    response's, and a proxy's that passes them on) and to http.client's, which requests'
    cookie jars read."""
    headers = getattr(raw, "headers", None)
    if headers is not None and hasattr(headers, "add"):
        headers.add("Set-Cookie", value)
    original = getattr(raw, "_original_response", None)
    if original is not None:
        original.msg["Set-Cookie"] = value      # (a Message: appended, never replaced)


def _environment_bundles() -> tuple[str, ...]:
    """The CA bundles requests reads from the environment when the caller gave no
    ``verify`` (``Session.merge_environment_settings``)."""
    return tuple(filter(None, (os.environ.get("REQUESTS_CA_BUNDLE"),
                               os.environ.get("CURL_CA_BUNDLE"))))


def _text(value: str | bytes | None) -> str | None:
    """A header value as ``str`` (bytes on the wire are latin-1, as the proxies read them)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value
