"""The async transport: :class:`AsyncLoadBalancingTransport`, for ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import cast

import httpx

from .. import fleet
from ..core.attempts import Attempts, Outcome
from ..core.backend import Backend
from ..errors import NoHealthyBackend
from ..fleet.front_end import AwaitingHead, deadline_words
from .base import LoadBalancing, Plan
from .bodies import AsyncAttemptBody, adiscard
from .errors import NoHealthyBackendError, from_tls_error, naming_backends
from .origins import origin_parts

__all__ = ["AsyncLoadBalancingTransport"]


class AsyncLoadBalancingTransport(LoadBalancing[httpx.AsyncBaseTransport],
                                  httpx.AsyncBaseTransport):
    """:class:`~lbmiddleware.transport.LoadBalancingTransport` for ``httpx.AsyncClient``:
    the same keywords, settings and rules, with ``httpx.AsyncHTTPTransport`` s inside::

        async with httpx.AsyncClient(
                base_url="http://orders",
                transport=lb.AsyncLoadBalancingTransport(
                    ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], policy="latency"),
                ) as client:
            r = await client.get("/api/items", params={"page": 2})

    The event loop is never blocked: a pool with sources built inside the loop is awaited
    (``Balancer.ready()``) before the first request, as the ASGI middleware does. A task
    cancelled while it waits for a backend, or while it reads a body, releases its pick
    (in flight no more, no failure counted). ``aclose()`` (``AsyncClient.aclose()`` calls
    it) closes the inner transports and the pool the transport built. The connections of
    a backend that leaves the pool are closed on the loop this transport runs on.
    """

    _started = False
    _loop: asyncio.AbstractEventLoop | None = None
    _closing: set[asyncio.Future[None]]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to one backend after another until one answers (a request
        to another origin than the virtual one: where its URL says)."""
        if origin_parts(request.url) != self._origin_parts and self._elsewhere(request.url):
            return await self._other_transport(request.url).handle_async_request(request)
        if not self._started:
            await self._start()
        plan = Plan(self, request)
        attempts = self._attempts(
            request.method, plan.key,
            None if self.sticky_cookie is None else request.headers.get("Cookie"))
        try:
            backend = attempts.start()
        except NoHealthyBackend as exc:
            raise NoHealthyBackendError(str(exc), request=request) from exc
        with attempts:      # an exception (a cancellation) releases the attempt
            while True:
                answer, outcome = await self._forward(plan, backend, attempts)
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
                    await adiscard(answer)
                backend = following
            if isinstance(answer, httpx.TransportError):
                raise naming_backends(answer, request, attempts.tried, outcome.error,
                                      deadline_words(attempts, outcome)) from answer
            body = cast(AsyncAttemptBody, answer.stream)
            body.end_attempt(attempts, outcome, plan.timeouts)
            extensions = answer.extensions      # which backend answered, after how many
            extensions["lbmiddleware.backend"] = backend.url
            extensions["lbmiddleware.attempts"] = len(attempts.tried)
            if self.sticky_cookie is not None:
                self._stick(answer, attempts, backend, request)
            return answer

    async def _forward(self, plan: Plan, backend: Backend, attempts: Attempts
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
                    response = await target.transport.handle_async_request(upstream)
            except ssl.SSLError as tls:         # (not mapped by httpcore: see from_tls_error)
                raise from_tls_error(tls, upstream) from tls
        except httpx.TransportError as exc:
            closing = target.release()
            if closing is not None:
                await closing.aclose()
            return exc, plan.failure(exc, self._timer() - start, attempts, timeouts, cut,
                                     before)
        except BaseException:                   # cancelled: close it later, not here
            self._close_later([target.release()])
            raise
        latency = self._timer() - start
        if cut:     # the deadline ends at the head: the body's reads get the attempt's own
            upstream.extensions["timeout"] = plan.timeouts      # (httpcore reads them then)
        self._map_redirects(response, backend)
        response.stream = AsyncAttemptBody(cast(httpx.AsyncByteStream, response.stream),
                                           target)
        return response, self._retry_rule.outcome(response.status_code, latency,
                                                  bytes_sent=plan.sent(before))

    async def _start(self) -> None:
        """Before the first request: remember the loop (departed backends' connections are
        closed on it) and wait, without blocking it, for the pool's sources' first answers
        (up to ``FIRST_ANSWER_TIMEOUT`` after the pool was built)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:                    # another async library: no loop to use
            self._started = True
            return
        self._closing = set()
        self._loop = loop
        if isinstance(self.balancer, fleet.Balancer):
            await self.balancer.ready()
        self._started = True

    def _plain_transport(self, proxy: httpx.Proxy | None, tls: ssl.SSLContext
                         ) -> httpx.AsyncBaseTransport:
        options = self._options
        return httpx.AsyncHTTPTransport(verify=tls, limits=options.limits, http2=options.http2,
                                        proxy=proxy)

    def _close_later(self, transports: Iterable[httpx.AsyncBaseTransport | None]) -> None:
        """Close ``transports`` (None: nothing) on this transport's loop, from any thread:
        a departure comes on the thread that changed the members."""
        closing = [transport for transport in transports if transport is not None]
        loop = self._loop
        if not closing or loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(_close_all(closing))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return
        coroutine = _close_all(closing)
        try:
            asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:                    # the loop closed meanwhile
            coroutine.close()

    async def aclose(self) -> None:
        """Close the inner transports (one with a request running once that request
        ends), and the pool the transport built (its sources and health checks stop,
        without blocking the loop); a shared ``balancer=`` is left open, and no longer
        followed. ``AsyncClient.aclose()`` calls this. From then on the transport refuses
        to send, as :meth:`LoadBalancingTransport.close` says."""
        await _close_all(self._mark_closed())
        if self._loop is not None and self._closing:
            await asyncio.wait(set(self._closing))
        if self._owns_balancer:
            if isinstance(self.balancer, fleet.Balancer):
                await self.balancer.aclose()
            else:
                self.balancer.close()


async def _close_all(transports: Iterable[httpx.AsyncBaseTransport]) -> None:
    for transport in transports:
        await transport.aclose()
