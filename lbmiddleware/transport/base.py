"""What the sync and the async transport share: settings, the sticky key, the request as
each backend gets it, the inner transports, and following the pool's departures.

Only the I/O differs between the two (:mod:`.sync`, :mod:`.aio`); both run the core's
attempt loop (:class:`~lbmiddleware.core.attempts.Attempts`) with the rules every
front-end follows, and build everything an attempt needs here, once per request
(:class:`Plan`) and once per backend (:class:`~.targets.Target`).
"""

from __future__ import annotations

import functools
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import httpx

from ..core.attempts import Attempts, Outcome
from ..core.backend import Backend, Source
from ..core.balancer import Balancer
from ..core.events import MembershipChanged
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve, setting_names
from ..errors import ConfigError
from ..fleet.departures import follow_departures
from ..fleet.front_end import ClientFrontEnd, deadline_limits, deadline_outcome
from ..proxy.redirects import RedirectRule, mapped_redirects
from ..upstream.tls import TLSSettings, new_backend_ssl_context
from . import outgoing
from .deadline import bound_waits
from .errors import closed_error, failure, limit_name
from .origins import Origin, Parts, has_redirects, origin_of, parts_of
from .proxies import as_proxy, environment_proxy
from .targets import Target, Targets
from .uploads import CountedStream, replayable_body

__all__ = ["LoadBalancing", "Plan", "TransportOptions"]

#: The inner transport: ``httpx.BaseTransport`` (sync) or ``httpx.AsyncBaseTransport``.
T = TypeVar("T")
_Self = TypeVar("_Self", bound="LoadBalancing[Any]")

#: Connections per backend, as httpx's default (``httpx.Client()``'s limits).
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

#: An httpx timeout as a request carries it (``extensions["timeout"]``).
_Timeouts = Mapping[str, float | None]

#: No timeout of the attempt was cut (no deadline).
_NOTHING_CUT: frozenset[str] = frozenset()


class TransportOptions:
    """How the default inner transports are built, one per backend: the TLS context,
    ``limits`` per backend, ``http2`` (offered over TLS, as httpx does; the ``h2`` package is
    needed), and the proxy: ``proxy`` for every backend, else with ``trust_env`` the one the
    environment names for the backend's real URL (:func:`~.proxies.environment_proxy`).

    The backends' TLS context (:meth:`tls`) is the user's when ``verify`` or ``cert`` was
    given (made as httpx makes it, with ``trust_env``), else the pool's backend TLS settings'
    (``backend_tls``: ``LB_BACKEND_CA``, ``LB_BACKEND_VERIFY``, ``LB_BACKEND_CLIENT_CERT`` /
    ``_KEY``; a context of its own from :func:`~lbmiddleware.upstream.tls.new_backend_ssl_context`,
    since httpcore sets its ALPN on the context it is given), else httpx's own; another
    origin's requests (:meth:`other_tls`) are verified as plain httpx verifies them (the
    pool's CA is trusted for its backends only). Each is made on first use (loading a CA
    bundle takes milliseconds) and shared by the transports that use it.
    """

    def __init__(self, *, verify: ssl.SSLContext | str | bool = True,
                 cert: Any = None, trust_env: bool = True,
                 limits: httpx.Limits = DEFAULT_LIMITS, http2: bool = False,
                 proxy: str | httpx.URL | httpx.Proxy | None = None,
                 backend_tls: TLSSettings | None = None) -> None:
        self.verify, self.cert, self.trust_env = verify, cert, trust_env
        self.limits, self.http2, self.proxy = limits, http2, proxy
        self.backend_tls = backend_tls
        self._tls: ssl.SSLContext | None = None
        self._other_tls: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        """The TLS context of the backends' inner transports (see the class)."""
        if self._tls is None:
            settings = self.backend_tls
            if self.verify is True and self.cert is None and settings is not None \
                    and not _library_default(settings):
                self._tls = new_backend_ssl_context(settings)
            else:
                self._tls = self.other_tls()
        return self._tls

    def other_tls(self) -> ssl.SSLContext:
        """The TLS context of other origins' transports: the user's ``verify`` and
        ``cert``, else httpx's own."""
        if self._other_tls is None:
            self._other_tls = httpx.create_ssl_context(verify=self.verify, cert=self.cert,
                                                       trust_env=self.trust_env)
        return self._other_tls

    def proxy_for(self, where: Backend | httpx.URL) -> httpx.Proxy | None:
        """The proxy to reach ``where`` (a backend, or another origin's URL) through."""
        if self.proxy is not None:
            return as_proxy(self.proxy)
        if not self.trust_env:
            return None
        return environment_proxy(where if isinstance(where, httpx.URL) else httpx.URL(where.url))


class Plan:
    """One request as every attempt sends it, worked out once by ``transport``: its sticky
    key, whether its body can be sent again and its size (``counted``: a body read once,
    counted as it is sent), the timeouts (``timeouts``, in ``extensions``), and where the
    backend's ``Host`` goes (``host_at``: :func:`~.outgoing.find_host`'s position, or None
    when the request keeps its own)."""

    __slots__ = ("request", "key", "replayable", "size", "counted", "host_at", "extensions",
                 "timeouts")

    def __init__(self, transport: LoadBalancing[Any], request: httpx.Request) -> None:
        self.request = request
        self.key = transport.request_key(request) if transport._keyed else None
        self.counted: CountedStream | None = None
        try:        # (replayable_body's first case, the usual one, without its call)
            self.replayable, self.size = True, len(request.content)
        except httpx.RequestNotRead:
            self.replayable, self.size = replayable_body(request)
            if not self.replayable:
                self.counted = CountedStream(request.stream)
        # The request keeps its own Host with preserve_host, or when it set another than
        # its URL's (httpx always sends the URL's); without one it gets the backend's.
        host, position = outgoing.find_host(request.headers)
        self.host_at = None if host is not None and (
            transport.settings.preserve_host or position == outgoing.SEVERAL
            or host != outgoing.netloc(request.url)) else position
        # Each attempt's connect and read timeouts are the request's (httpx's Timeout) when
        # shorter than the settings (connect_timeout, read_timeout), else the settings'. An
        # explicit None (httpx.Timeout(5, read=None): no limit) is kept, as the adapter
        # keeps one; a request without a timeout (httpx's clients always give one) gets the
        # settings'.
        extensions = request.extensions
        given: _Timeouts | None = extensions.get("timeout")
        most_connect, most_read = transport._connect_timeout, transport._read_timeout
        if given is None:
            given = {"connect": most_connect, "read": most_read}
            extensions = {**extensions, "timeout": given}
        else:
            connect, read = given.get("connect"), given.get("read")
            if (connect is not None and connect > most_connect) \
                    or (read is not None and read > most_read):
                given = {**given, "connect": _bounded(connect, most_connect),
                         "read": _bounded(read, most_read)}
                extensions = {**extensions, "timeout": given}
        self.extensions = extensions
        self.timeouts = given

    def upstream(self, target: Target[Any], extensions: dict[str, Any] | None = None
                 ) -> httpx.Request:
        """The request as ``target``'s backend gets it: its URL with the base path, its
        ``Host`` unless the request keeps its own, its TLS name, its body (counted when it
        is read once); ``extensions``: this attempt's, when not the plan's (:meth:`attempt`)."""
        if extensions is None:
            extensions = self.extensions
        request = outgoing.attempt(
            self.request, target.url, self.host_at, target.host,
            {**extensions, **target.extensions} if target.extensions else extensions)
        if self.counted is not None:
            request.stream = self.counted
        return request

    def attempt(self, target: Target[Any], attempts: Attempts
                ) -> tuple[httpx.Request, Mapping[str, float | None], frozenset[str]]:
        """One attempt's request for ``target`` (:meth:`upstream`), its timeouts and the
        names of those the request's deadline cut: under a deadline each timeout (connect,
        read, write, pool) is cut to the time left; without one, the plan's, none cut."""
        if attempts.deadline is None:
            return self.upstream(target), self.timeouts, _NOTHING_CUT
        timeouts, cut = deadline_limits(attempts, self.timeouts)
        return self.upstream(target, {**self.extensions, "timeout": timeouts}), timeouts, cut

    def sent(self, before: int) -> int:
        """The body bytes an attempt sent: the size, or what the counter counted since
        ``before`` (its count when the attempt began)."""
        return self.size if self.counted is None else self.counted.sent - before

    def failure(self, exc: httpx.TransportError, latency: float, attempts: Attempts,
                timeouts: Mapping[str, float | None], cut: frozenset[str],
                before: int) -> Outcome:
        """The outcome of an attempt that raised ``exc`` (:func:`~.errors.failure`), in
        the deadline's words when it was a timeout the deadline cut, with the bytes sent."""
        outcome = failure(exc, latency, timeouts)
        if attempts.deadline is not None and outcome.timeout:
            outcome = deadline_outcome(attempts, outcome, limit_name(exc), cut)
        sent = self.sent(before)
        return outcome._replace(bytes_sent=sent) if sent else outcome


class LoadBalancing(ClientFrontEnd, Generic[T]):
    """The shared part of :class:`~lbmiddleware.transport.LoadBalancingTransport` and
    :class:`~lbmiddleware.transport.AsyncLoadBalancingTransport` (see their docs)."""

    settings: ForwardingSettings

    def __init__(
        self,
        backends: Iterable[str | Backend | Source] | str | None = None,
        policy: str | None = None,
        *,
        settings: Settings | ForwardingSettings | FrontEndSettings | None = None,
        balancer: Balancer | None = None,
        environ: Mapping[str, str] | None = None,
        key_func: Callable[[httpx.Request], str | None] | None = None,
        inner_transport: Callable[[Backend], T] | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
        http2: bool = False,
        proxy: str | httpx.URL | httpx.Proxy | None = None,
        timer: Callable[[], float] = time.perf_counter,
        origin: str | None = None,
        **options: Any,
    ) -> None:
        name = type(self).__name__
        virtual = None if origin is None else Origin.parse(origin, f"{name} origin")
        if inner_transport is not None:
            given = [k for k, v in (("verify", verify is not True), ("cert", cert is not None),
                                    ("trust_env", trust_env is not True),
                                    ("limits", limits is not None), ("http2", http2),
                                    ("proxy", proxy is not None)) if v]
            if given:
                raise ConfigError(f"{name}: {', '.join(given)} given with inner_transport=: "
                                  "give them to the transports it builds")
        forwarding = self._set_up(name, backends, policy, options, settings=settings,
                                  balancer=balancer, environ=environ,
                                  keyed_by_func=key_func is not None)
        self.key_func = key_func
        self._timer = timer
        self._connect_timeout = forwarding.connect_timeout
        self._read_timeout = forwarding.read_timeout
        self._options = TransportOptions(
            verify=verify, cert=cert, trust_env=trust_env, http2=http2, proxy=proxy,
            backend_tls=self.balancer.settings,
            **({} if limits is None else {"limits": limits}))
        self._targets: Targets[T] = Targets(inner_transport or self._inner_transport,
                                            self._is_member, self._close_later,
                                            self._closed_error)
        self._closed = False
        # The virtual origin, and what each request's origin is compared with: the same,
        # or once closed one no request has (the closed check costs a request nothing).
        self._virtual: Origin | None = virtual
        self._origin: Origin | None = virtual
        self._origin_parts: Parts | None = None if virtual is None else parts_of(virtual)
        self._others: dict[tuple[str, Any] | None, T] = {}      # by proxy (see _elsewhere)
        self._others_lock = threading.Lock()
        self._unsubscribe = follow_departures(self, self.balancer, type(self)._departed)

    @classmethod
    def from_env(cls: type[_Self], environ: Mapping[str, str] | None = None, *,
                 balancer: Balancer | None = None, **overrides: Any) -> _Self:
        """A transport configured from ``LB_*`` variables (``environ`` for tests), even
        when ``backends`` is given; with ``balancer=``, the transport's own settings only.

        Keyword arguments that are settings win over the variables; the others
        (``key_func``, ``inner_transport``, ``verify``, ``limits``, ``timer``, ...) go to
        the constructor."""
        names = setting_names(Settings, ForwardingSettings)
        settings = resolve(f"{cls.__name__}.from_env", (ForwardingSettings,),
                           {k: v for k, v in overrides.items() if k in names},
                           shared=None if balancer is None else balancer.settings,
                           environ=environ, from_env=True)
        rest = {k: v for k, v in overrides.items() if k not in names}
        return cls(settings=settings, balancer=balancer, **rest)

    @property
    def forwarding(self) -> ForwardingSettings:
        """The forwarding settings (the transport's own: ``self.settings``), as every
        front-end names them."""
        return self.settings

    # -- per request ------------------------------------------------------------------------

    def request_key(self, request: httpx.Request) -> str | None:
        """The sticky key of ``request``: ``key_func``, or the ``hash_key`` header/cookie."""
        if self.key_func is not None:
            return self.key_func(request)
        return self._header_key(request.headers.get)

    # -- the virtual origin -----------------------------------------------------------------

    @property
    def origin(self) -> str | None:
        """The virtual origin the transport balances (``origin=``, else its first request's
        scheme, host and port; None before that request)."""
        return None if self._virtual is None else str(self._virtual)

    def _elsewhere(self, url: httpx.URL) -> bool:
        """Whether a request to ``url`` goes elsewhere than the pool: to another origin
        than the virtual one (the first request's origin becomes it, when ``origin=`` was
        not given). Raises once the transport is closed."""
        if self._closed:
            raise self._closed_error()
        origin = origin_of(url)
        if self._origin is None:
            with self._others_lock:
                if self._origin is None:
                    self._virtual = self._origin = origin
                    self._origin_parts = parts_of(origin)
        return origin != self._origin

    def _other_transport(self, url: httpx.URL) -> T:
        """The plain transport for a request to another origin (``url``'s): one per proxy
        the environment names for such URLs, built on first use with the TLS options."""
        proxy = self._options.proxy_for(url)
        key = None if proxy is None else (str(proxy.url), proxy.raw_auth)
        with self._others_lock:
            transport = self._others.get(key)
            if transport is None:
                transport = self._others[key] = self._plain_transport(
                    proxy, self._options.other_tls())
        return transport

    def _forget_others(self) -> list[T]:
        """The plain transports of other origins, forgotten: to close (the owner is)."""
        with self._others_lock:
            others, self._others = list(self._others.values()), {}
        return others

    def _stick(self, response: httpx.Response, attempts: Attempts, backend: Backend,
               request: httpx.Request) -> None:
        """Add the sticky cookie's ``Set-Cookie`` to ``backend``'s ``response`` (the answer
        of ``request``), when the request's cookie did not name it: the client's cookie
        jar keeps it for the request's URL (the virtual host)."""
        value = self._sticky_header(attempts, backend, request.url.scheme == "https")
        if value is not None:
            headers = response.headers
            response.headers = httpx.Headers(
                [*headers.raw, (b"Set-Cookie", value.encode("ascii"))],
                encoding=headers.encoding)

    def _map_redirects(self, response: httpx.Response, backend: Backend) -> None:
        """``Location``, ``Content-Location`` and ``Refresh`` pointing at ``backend`` itself
        (its scheme, address or server name, port, under its base path), mapped to the
        virtual origin (:mod:`lbmiddleware.proxy.redirects`, the rule of every front-end):
        the client follows them through the pool."""
        headers = response.headers
        virtual = self._virtual
        if virtual is None or not has_redirects(headers):
            return
        encoding = headers.encoding
        mapped = mapped_redirects(
            [(n.decode(encoding), v.decode(encoding)) for n, v in headers.raw],
            _REDIRECTS.bind(backend, functools.partial(str, virtual)))
        if mapped is not None:
            response.headers = httpx.Headers(
                [(n.encode(encoding), v.encode(encoding)) for n, v in mapped],
                encoding=encoding)

    # -- closing ----------------------------------------------------------------------------

    def _mark_closed(self) -> list[T]:
        """Refuse every request from now on, and let every backend leave as a departed one
        does: the inner transports to close now (the others close as their last request
        ends), and those of other origins."""
        self._closed = True
        self._origin = _NO_ORIGIN
        self._origin_parts = parts_of(_NO_ORIGIN)
        self._unsubscribe()
        return [*self._targets.close(), *self._forget_others()]

    def _closed_error(self) -> RuntimeError:
        return closed_error(type(self).__name__)

    # -- the inner transports ---------------------------------------------------------------

    def _inner_transport(self, backend: Backend) -> T:
        """The default inner transport of ``backend`` (see :class:`TransportOptions`); with
        a deadline, each wait of its I/O is cut to the time left while an attempt awaits
        its head (:mod:`~lbmiddleware.transport.deadline`)."""
        transport = self._plain_transport(self._options.proxy_for(backend), self._options.tls())
        if self._deadline:
            bound_waits(transport)
        return transport

    def _plain_transport(self, proxy: httpx.Proxy | None, tls: ssl.SSLContext) -> T:
        """An httpx transport with the options (limits, HTTP/2), ``proxy`` and ``tls``."""
        raise NotImplementedError

    def _is_member(self, backend: Backend) -> bool:
        return any(member.url == backend.url for member in self.balancer.backends)

    def _departed(self, event: MembershipChanged) -> None:
        """Backends left the pool: forget their inner transports, closing those with no
        request in flight now and the others when their last request ends. On the
        thread that changed the members."""
        self._close_later(self._targets.depart(b.url for b in event.removed))

    def _close_later(self, transports: Iterable[T | None]) -> None:
        """Close ``transports`` (None: nothing), where this transport's I/O runs."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.balancer!r}>"


#: The rule for a backend's redirects to itself: to the virtual origin, no prefix.
_REDIRECTS = RedirectRule()

#: The origin no request has: a closed transport's (every request goes to ``_elsewhere``).
_NO_ORIGIN = Origin("", "", -1)


def _library_default(settings: TLSSettings) -> bool:
    """Whether ``settings`` leave the backends' TLS at its default (the system's or the
    library's store, names verified, no client certificate): httpx's own context then, as
    requests keeps its own for the adapter."""
    return (settings.backend_verify and not settings.backend_ca
            and not settings.backend_client_cert)


def _bounded(given: float | None, limit: float) -> float | None:
    return None if given is None else min(given, limit)
