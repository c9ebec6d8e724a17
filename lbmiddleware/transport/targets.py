"""Where each backend's attempts go: one inner httpx transport per backend, built on its
first pick and closed once it has left the pool and its last request ended.

One inner transport per backend, not one for all, for three reasons: the proxy is decided
by the backend's real URL (:func:`~.proxies.environment_proxy`: ``HTTP_PROXY``, ``NO_PROXY``
... as httpx reads them for that URL, not for the virtual host the caller named); a backend
found through DNS is named over TLS by its server name (httpcore's ``sni_hostname``), and
its connections must never serve another name; and a backend that leaves the pool (removed
by its source or ``update()``, drained) takes its connections with it. httpcore's
``close()`` cuts connections in use, so a departed backend's transport is closed only when
its requests in flight have ended (:meth:`Target.release`): a request in flight on a
departing backend completes, and no connection outlives it.

A :class:`Target` also keeps what every attempt on its backend needs and is the same for
each: the backend's URL as httpx parses it, its ``Host`` and the TLS name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import httpx

from ..core.backend import Backend

__all__ = ["Target", "Targets"]

#: An inner transport: ``httpx.BaseTransport`` or ``httpx.AsyncBaseTransport``.
T = TypeVar("T")


class Target(Generic[T]):
    """One backend's inner transport and what its attempts share; ``in_flight`` counts its
    requests not yet ended (a response counts until its body is closed)."""

    __slots__ = ("backend", "transport", "url", "host", "extensions", "in_flight", "leaving",
                 "_targets", "_lock")

    def __init__(self, targets: Targets[T], backend: Backend, transport: T) -> None:
        self.backend = backend
        self.transport = transport
        self.url = httpx.URL(backend.url)
        self.host = backend.authority                       # (IDNA-encoded already)
        # The TLS name of a backend reached by address (a DNS source's): httpcore sends it
        # as SNI and verifies the certificate against it.
        https_name = backend.scheme == "https" and backend.server_name is not None
        self.extensions = {"sni_hostname": backend.tls_server_name} if https_name else {}
        self.in_flight = 0
        self.leaving = False
        self._targets = targets
        self._lock = targets._lock

    def release(self) -> T | None:
        """One request on it ended: the transport to close now (it left, and this was its
        last request), else None."""
        lock = self._lock               # (acquire and release: a third of ``with``'s cost)
        lock.acquire()
        try:
            self.in_flight -= 1
            last = self.leaving and self.in_flight == 0
        finally:
            lock.release()
        return self.transport if last else None

    def close_later(self, transport: T) -> None:
        """Have the owner close ``transport`` (where the caller cannot: a cancelled task)."""
        self._targets.close_later([transport])


class Targets(Generic[T]):
    """The inner transports by backend URL, safe to use from any thread: picks come from the
    caller's threads or loop, departures from whichever thread changed the members."""

    def __init__(self, make: Callable[[Backend], T], is_member: Callable[[Backend], bool],
                 close_later: Callable[[Iterable[T | None]], None],
                 closed: Callable[[], Exception] = lambda: RuntimeError("closed")) -> None:
        self._make = make
        self._is_member = is_member
        self.close_later = close_later
        self._closed_error = closed
        self._closed = False
        self._by_url: dict[str, Target[T]] = {}
        self._lock = threading.Lock()

    def acquire(self, backend: Backend) -> Target[T]:
        """``backend``'s target, with one more request in flight on it; built on the
        backend's first pick (under the lock: building an inner transport is quick, its TLS
        context made once by the owner), and again when the backend's server name changed
        (a DNS source's name: the old connections must not serve the new one, and close
        once their requests end)."""
        lock = self._lock
        lock.acquire()
        try:
            target = self._by_url.get(backend.url)
            if target is not None and (target.backend is backend
                                       or target.backend.server_name == backend.server_name):
                target.in_flight += 1
                return target
        finally:
            lock.release()
        return self._new(backend)

    def _new(self, backend: Backend) -> Target[T]:
        """:meth:`acquire` of a backend without a target, or whose server name changed."""
        closing = []
        with self._lock:
            if self._closed:
                raise self._closed_error()
            target = self._by_url.get(backend.url)
            if target is not None and target.backend.server_name != backend.server_name:
                target.leaving = True
                del self._by_url[backend.url]
                if target.in_flight == 0:
                    closing.append(target.transport)
                target = None
            if target is None:
                target = Target(self, backend, self._make(backend))
                # A backend picked just before it left, whose departure came before this
                # first request: its transport is closed after this request.
                target.leaving = not self._is_member(backend)
                if not target.leaving:
                    self._by_url[backend.url] = target
            target.in_flight += 1
        if closing:
            self.close_later(closing)
        return target

    def depart(self, urls: Iterable[str]) -> list[T]:
        """The backends of ``urls`` left the pool: forget their targets; returns the
        transports to close now (those with no request in flight; the others are returned
        by :meth:`Target.release` when their last request ends)."""
        closing = []
        with self._lock:
            for url in urls:
                target = self._by_url.pop(url, None)
                if target is not None:
                    target.leaving = True
                    if target.in_flight == 0:
                        closing.append(target.transport)
        return closing

    def close(self) -> list[T]:
        """The owner is closing: build no more, and let every backend leave as a departed
        one does. Returns the transports to close now (no request in flight); the others
        are returned by :meth:`Target.release` when their last request ends, so a request
        running as its client closes ends as it would have (httpcore's ``close()`` would
        cut its connection)."""
        with self._lock:
            self._closed = True
            targets, self._by_url = list(self._by_url.values()), {}
            closing = []
            for target in targets:
                target.leaving = True
                if target.in_flight == 0:
                    closing.append(target.transport)
        return closing

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_url)
