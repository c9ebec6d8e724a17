"""The rules every source follows between its answers, written once.

A watcher asks its registry (a DNS server, etcd) for the source's backends and hands each new
set to ``publish`` (the fleet passes ``lambda b: pool.update(b, source=src)``). Whatever the
registry, the same rules apply (SEMANTICS, "Membership from a registry"):

- a *successful* answer replaces the set, even by an empty one (NXDOMAIN, no records, an empty
  prefix: Envoy STRICT_DNS), and ends an outage (one ``SourceRecovered``);
- a *failure* (timeout, SERVFAIL, refused, connection lost) keeps the last good set and retries
  with :class:`~lbmiddleware.discovery.backoff.Backoff`; the first failure of an outage emits
  one ``SourceFailed``, the later ones only update the status;
- an unchanged set is not published again (the pool's ``update()`` would be a no-op anyway).

:class:`Follower` holds those rules for any watcher (etcd's, which waits on a stream, uses it
directly); :class:`PollingWatcher` is the loop of a source that asks again after a delay (DNS):
ask, apply, sleep for the TTL or the back-off, again, until cancelled.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from ..core.backend import Backend
from ..core.events import Event, SourceFailed, SourceRecovered
from .backoff import Backoff, refresh_delay
from .status import SourceStatus

__all__ = ["Publish", "Emit", "Watcher", "SourceError", "Answer", "Follower", "PollingWatcher",
           "describe_error"]

Publish = Callable[[tuple[Backend, ...]], None]
Emit = Callable[[Event], None]
Sleep = Callable[[float], Awaitable[object]]


class Watcher(Protocol):
    """What the fleet runs for each source."""

    status: SourceStatus

    async def run(self, publish: Publish, emit: Emit) -> None:
        """Follow the source until cancelled."""


class SourceError(Exception):
    """The source could not answer (the message says why): keep the last set, retry later."""


class Answer(NamedTuple):
    """A successful answer: the backends (possibly none) and how long they hold (seconds;
    None when the registry does not say)."""

    backends: tuple[Backend, ...]
    ttl: float | None = None


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failure: the message of a :class:`SourceError`, else the
    exception's class and message ("TimeoutError", "OSError: [Errno 111] ...")."""
    if isinstance(exc, SourceError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Follower:
    """Applies a source's answers and failures: publishes new sets, keeps the status, emits
    ``SourceFailed`` once per outage and ``SourceRecovered`` once when it ends, and says how
    long to wait after a failure."""

    def __init__(self, status: SourceStatus, publish: Publish, emit: Emit, *,
                 rng: random.Random | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.status = status
        self._publish = publish
        self._emit = emit
        self._timer = timer
        self.backoff = Backoff(rng=rng)
        self.backends: tuple[Backend, ...] | None = None   # the last set published

    def succeeded(self, backends: tuple[Backend, ...]) -> None:
        """The source answered with ``backends`` (maybe none): publish them if they changed,
        end an outage."""
        now = self._timer()
        if backends != self.backends:
            self._publish(backends)
            self.backends = backends
        status = self.status
        status.backends = len(backends)
        status.last_success = now
        status.updates_total += 1
        self.backoff.reset()
        if status.failing_since is not None:
            outage = now - status.failing_since
            status.failing_since = None
            status.failures = 0
            self._emit(SourceRecovered(status.source, outage))

    def failed(self, error: str) -> float:
        """The source failed (``error`` says why): keep the last set; returns the seconds to
        wait before trying again. Emits ``SourceFailed`` on the first failure of an outage."""
        now = self._timer()
        delay = self.backoff.next()
        status = self.status
        status.last_error = error
        status.last_error_at = now
        status.next_refresh = now + delay
        status.failures += 1
        status.failures_total += 1
        if status.failing_since is None:
            status.failing_since = now
            kept = len(self.backends) if self.backends is not None else 0
            self._emit(SourceFailed(status.source, error, delay, kept=kept))
        return delay


class PollingWatcher(abc.ABC):
    """A source asked again and again: :meth:`ask` once, apply the answer or the failure,
    sleep for the refresh delay (the answer's TTL, clamped and jittered) or the back-off, and
    again, until cancelled.

    ``sleep`` is ``asyncio.sleep`` unless a test passes one that advances a fake clock.
    """

    def __init__(self, status: SourceStatus, *, min_refresh: float, max_refresh: float,
                 rng: random.Random | None = None,
                 timer: Callable[[], float] = time.monotonic,
                 sleep: Sleep | None = None) -> None:
        self.status = status
        self.min_refresh = min_refresh
        self.max_refresh = max_refresh
        self._rng = rng if rng is not None else random.Random()
        self._timer = timer
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep

    @abc.abstractmethod
    async def ask(self) -> Answer:
        """One question to the registry. Raise on failure (:class:`SourceError`, ``OSError``,
        ``TimeoutError`` or any ``Exception``): the last set stays."""

    async def run(self, publish: Publish, emit: Emit) -> None:
        follower = Follower(self.status, publish, emit, rng=self._rng, timer=self._timer)
        while True:
            delay = await self.step(follower)
            await self._sleep(delay)

    async def step(self, follower: Follower) -> float:
        """Ask once and apply the result; returns the seconds to wait before the next ask."""
        try:
            answer = await self.ask()
        except Exception as exc:      # any failure keeps the last set (cancellation passes)
            return follower.failed(describe_error(exc))
        follower.succeeded(answer.backends)
        delay = refresh_delay(answer.ttl, self.min_refresh, self.max_refresh, self._rng)
        self.status.next_refresh = self._timer() + delay
        return delay
