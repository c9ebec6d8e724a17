"""The sync transport: :class:`LoadBalancingTransport`, for ``httpx.Client``."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import cast

import httpx

from ..core.attempts import Attempts, Outcome
from ..core.backend import Backend
from ..errors import NoHealthyBackend
from ..fleet.front_end import AwaitingHead, deadline_words
from .base import LoadBalancing, Plan
from .bodies import AttemptBody, discard
from .errors import NoHealthyBackendError, from_tls_error, naming_backends
from .origins import origin_parts

__all__ = ["LoadBalancingTransport"]


class LoadBalancingTransport(LoadBalancing[httpx.BaseTransport], httpx.BaseTransport):
    """An httpx transport that sends each request to one backend of a pool, retrying on
    another when an attempt fails::

        client = httpx.Client(transport=lb.LoadBalancingTransport(
            ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], policy="latency"))
        client.get("http://orders/api/items", params={"page": 2})

    ``backends``, ``policy``, ``max_fails``, ... are the Balancer's settings
    (:class:`~lbmiddleware.Settings`); ``retries``, ``connect_timeout``, ``read_timeout``,
    ``fail_statuses``, ``hash_key``, ``preserve_host`` and ``retry_non_idempotent`` the
    transport's own (:class:`~lbmiddleware.ForwardingSettings`, in ``self.settings``), as
    for the requests adapter: without ``backends`` every setting not given comes from
    ``LB_*`` variables (``environ`` for tests), and :meth:`from_env` reads them always.
    ``balancer=`` shares one pool with other transports, adapters and middlewares.

    The transport balances one virtual origin: ``origin=`` (``"http://orders"``), else the
    origin of the first request it sees (the client's ``base_url``, the URL it is mounted
    on); a request to any other origin (a redirect to a CDN) goes where its URL says, over
    a plain ``httpx.HTTPTransport`` with the same ``verify``, ``cert``, ``trust_env``,
    ``limits``, ``http2`` and proxy, as without the pool (see
    :mod:`~lbmiddleware.transport.origins`). ``mounts={"http://orders": transport}`` is
    the precise form.

    Each request to it goes to one backend: its URL with the backend's base path before the
    request's path, ``Host`` the backend's (its server name for a DNS source's) unless
    ``preserve_host`` or the request sets another, over an inner transport of that
    backend's own: by default an ``httpx.HTTPTransport`` with ``verify``, ``cert``,
    ``trust_env``, ``limits`` (per backend) and ``http2`` (offered over TLS), its proxy
    ``proxy`` or, with ``trust_env``, the environment's for the backend's real URL
    (``NO_PROXY`` names backends, not the virtual host). ``inner_transport(backend)``
    builds them instead (HTTP/2 without TLS: ``lambda backend:
    httpx.HTTPTransport(http1=False, http2=True)``; it is called under a lock, once per
    backend). Each attempt's connect and read timeouts are the request's,
    bounded by the ``connect_timeout`` and ``read_timeout`` settings; an explicit None
    (``httpx.Timeout(5, read=None)``) is kept: no limit. A backend's ``Location`` pointing
    at itself is mapped to the virtual origin (nginx's ``proxy_redirect default``).

    Retries follow the rules of every front-end (docs/contract.md, "Retries": the core's
    attempt loop). A body httpx holds in memory (``content=``, ``json=``, ``data=``) is sent
    again, and so is a multipart upload (``files=``) whose files can seek; a generator is
    not. A response counts as in flight until its body is read or closed;
    ``response.extensions["lbmiddleware.backend"]`` is the URL of the backend that
    answered, ``["lbmiddleware.attempts"]`` the attempts made. When every attempt raised,
    the last httpx exception is raised again, of the same class, naming the backends tried
    (also in ``backends_tried``); an empty pool raises
    :class:`~lbmiddleware.transport.NoHealthyBackendError`, an ``httpx.ConnectError`` that
    is also a ``lb.NoHealthyBackend``.

    A backend's connection pool that stays full for httpx's ``pool`` timeout
    (``httpx.PoolTimeout``: ``limits=`` is per backend) is this client's own limit, not
    the backend's failure: the attempt is released (no failure counted, no retry budget
    spent) and the PoolTimeout raised, naming the backend, as a plain client raises it.
    It is not sent elsewhere: the caller has waited its pool timeout already, and another
    backend would get the overflow of a client that is past its own limits (raise
    ``limits=``, or use ``least_conn``, whose in-flight counts steer picks away from it).

    The ``timeout`` setting (``LB_TIMEOUT``) bounds the whole request up to its response
    head: each attempt's connect, read, write and pool timeouts are cut to the time left,
    and in the default inner transports every wait beneath (a connect, each write of the
    body, each read of the head) is cut again to the time left when it begins
    (:mod:`~lbmiddleware.transport.deadline`), so a head trickling in a byte at a time is
    cut at the deadline too; an ``inner_transport=`` of the caller's gets the cut
    timeouts, which bound each wait, not their sum. A retry is not started without time
    for it, and a timeout the deadline cut raises httpx's own (``ReadTimeout``,
    ``ConnectTimeout``, ``WriteTimeout``, ...) naming the deadline and the backends tried;
    the body's reads then get the attempt's own read timeout back. With
    ``sticky_cookie`` (``LB_STICKY_COOKIE``) the client's cookie jar keeps it on the
    backend that first answered it: a response from another backend than the one its
    ``Cookie`` named gets a ``Set-Cookie`` (path ``/``, ``Secure`` for an https URL), which
    the client keeps for the virtual host.

    ``close()`` (``Client.close()`` calls it) closes the inner transports and the pool the
    transport built (a shared ``balancer=`` is left to its owner); a request running then
    ends as it would have, and the transport refuses any later one (``RuntimeError``). A
    backend that leaves the pool loses its connections once its requests in flight have
    ended.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to one backend after another until one answers (a request
        to another origin than the virtual one: where its URL says)."""
        if origin_parts(request.url) != self._origin_parts and self._elsewhere(request.url):
            return self._other_transport(request.url).handle_request(request)
        if not self._ready:
            self._wait_ready()
        plan = Plan(self, request)
        attempts = self._attempts(
            request.method, plan.key,
            None if self.sticky_cookie is None else request.headers.get("Cookie"))
        try:
            backend = attempts.start()
        except NoHealthyBackend as exc:
            raise NoHealthyBackendError(str(exc), request=request) from exc
        with attempts:      # an exception (a ProxyError, an interrupt) releases the attempt
            while True:
                answer, outcome = self._forward(plan, backend, attempts)
                if outcome.ok:
                    break
                if isinstance(answer, httpx.TransportError) and (
                        self._closed or isinstance(answer, httpx.PoolTimeout)):
                    # ended by our own close, maybe, or our own pool was full: no one's
                    # failure, and not retried (see the class doc)
                    attempts.release()
                    break
                following = attempts.retry(outcome, replayable=plan.replayable)
                if following is None:
                    break
                if isinstance(answer, httpx.Response):
                    discard(answer)
                backend = following
            if isinstance(answer, httpx.TransportError):
                raise naming_backends(answer, request, attempts.tried, outcome.error,
                                      deadline_words(attempts, outcome)) from answer
            body = cast(AttemptBody, answer.stream)
            body.end_attempt(attempts, outcome, plan.timeouts)
            extensions = answer.extensions      # which backend answered, after how many
            extensions["lbmiddleware.backend"] = backend.url
            extensions["lbmiddleware.attempts"] = len(attempts.tried)
            if self.sticky_cookie is not None:
                self._stick(answer, attempts, backend, request)
            return answer

    def _forward(self, plan: Plan, backend: Backend, attempts: Attempts
                 ) -> tuple[httpx.Response | httpx.TransportError, Outcome]:
        """One attempt on ``backend``: the response (its body still to read) or the
        exception that failed the attempt, and the attempt's outcome: its timeouts cut to
        the time left before the request's deadline."""
        target = self._targets.acquire(backend)
        counted = plan.counted
        before = 0 if counted is None else counted.sent
        upstream, timeouts, cut = plan.attempt(target, attempts)
        start = self._timer()
        try:
            try:
                with AwaitingHead(attempts):    # each wait of the I/O cut to the time left
                    response = target.transport.handle_request(upstream)
            except ssl.SSLError as tls:         # (not mapped by httpcore: see from_tls_error)
                raise from_tls_error(tls, upstream) from tls
        except httpx.TransportError as exc:
            self._close_later([target.release()])
            return exc, plan.failure(exc, self._timer() - start, attempts, timeouts, cut,
                                     before)
        except BaseException:
            self._close_later([target.release()])
            raise
        latency = self._timer() - start
        if cut:     # the deadline ends at the head: the body's reads get the attempt's own
            upstream.extensions["timeout"] = plan.timeouts      # (httpcore reads them then)
        self._map_redirects(response, backend)
        response.stream = AttemptBody(cast(httpx.SyncByteStream, response.stream), target)
        return response, self._retry_rule.outcome(response.status_code, latency,
                                                  bytes_sent=plan.sent(before))

    def _plain_transport(self, proxy: httpx.Proxy | None, tls: ssl.SSLContext
                         ) -> httpx.BaseTransport:
        options = self._options
        return httpx.HTTPTransport(verify=tls, limits=options.limits, http2=options.http2,
                                   proxy=proxy)

    def _close_later(self, transports: Iterable[httpx.BaseTransport | None]) -> None:
        """Close ``transports`` (None: nothing) now, on this thread."""
        for transport in transports:
            if transport is not None:
                transport.close()

    def close(self) -> None:
        """Close the inner transports (one with a request running once that request
        ends: it ends as it would have), and the pool the transport built (its sources and
        health checks stop); a shared ``balancer=`` is left open, and no longer followed.
        ``Client.close()`` calls this. From then on the transport refuses to send
        (``RuntimeError``, as a closed ``httpx.Client``); an attempt that fails after the
        close is given up, neither counted against its backend nor retried."""
        self._close_later(self._mark_closed())
        if self._owns_balancer:
            self.balancer.close()
