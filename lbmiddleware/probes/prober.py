"""The prober: one task per member of a pool, each probing its backend on a jittered schedule
and reporting every result to the pool (``pool.report_probe(backend, ok, reason)``).

The schedule follows HAProxy (``inter``, ``spread-checks``) and SEMANTICS part two:

* The members present when :meth:`Prober.run` starts are spread over one interval: the
  first probe of the k-th of N is at ``k * interval / N``, so a thousand backends do not
  open a thousand connections in the same millisecond.
* Backends that join later are probed almost at once: their first probes are spread over
  ``jitter * interval`` (0.5 s at the default 5 s). A backend that joins later gets no
  traffic before its first passing probe, so waiting up to a full interval would keep a new
  replica idle for no reason; spreading keeps a source that adds hundreds at once from
  opening them all together.
* Every later probe starts ``interval * (1 +- jitter)`` (uniform, ``jitter`` = 10%) after the
  previous one *ended*, as in HAProxy: probes of one backend never overlap, and a backend
  that hangs is not probed more often than one that answers.

Membership is followed through the pool's events: a ``MembershipChanged`` (delivered on
whatever thread changed the pool) wakes the prober's loop thread-safely, which re-reads
``pool.backends``; a removed backend's task is cancelled (its probe in progress, if any, is
aborted and not reported) and the connection kept for its probes closed; a new one's task
starts. A backend that stays keeps its task, its schedule, and sees its new weight or
server name at its next probe.

A probe that could bring a backend back proves that the backend accepts new connections.
Probes keep a connection per backend (:mod:`.check`), and a backend whose listener is gone
(shutting down, or its accept queue full) may still answer on it while clients' connects
fail; a passing probe ends a passive ejection at once (Envoy's rule, the core's
``report_probe``), so a pass on that old connection would return to rotation a backend that
clients cannot reach, and it would flap (clients' failures eject it, the next probe returns
it, clients pay retries again). So, from the pool's events:

* when the pool ejects a backend (``BackendEjected``), the prober closes the connection kept
  for its probes (``HealthCheck.drop``, on the prober's loop: the event comes on whatever
  thread reported the failure);
* while a backend is ejected (until ``BackendReturned``) or down by its checks (from
  ``BackendDown`` to ``BackendUp``: a backend coming back up needs ``rise`` passes, each on
  a new connection), every probe of it is made on a new connection: one a pass kept is
  closed before the next probe;
* a probe that passed on a connection kept from before, while the backend was ejected in
  the meantime (the ejection came during the probe), is not reported: it is made again at
  once on a new connection, and that result is reported.

A failed probe already closes its connection (:mod:`.check`). A healthy backend's probes
keep reusing theirs: the cost of a connect is paid only by backends that are out. What is
left: a pass that has ended on an old connection and is being reported in the very moment
another thread ejects the backend (no ``await`` in between: microseconds) still ends that
ejection; the next failures eject it again and its probes are fresh from then on. A prober
started on a pool whose backends are already ejected or down (after a fork or a crash) has
no kept connection, so its first probe of each is fresh; it learns of later ejections and
downs from the events.

The prober runs on any asyncio loop, until cancelled (the fleet runs it on its own loop
thread; nothing here blocks); once stopped, it has closed every connection it kept. What
one probe does is :class:`~.check.HealthCheck`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..core.backend import Backend
from ..core.events import (
    BackendDown,
    BackendEjected,
    BackendReturned,
    BackendUp,
    Event,
    Listener,
    MembershipChanged,
)
from ..errors import ConfigError
from ..upstream.tls import TLSSettings, backend_ssl_context
from .check import HealthCheck

__all__ = ["Prober", "ProbedPool", "ProbeSettings", "JITTER"]

logger = logging.getLogger("lbmiddleware")

JITTER = 0.1        # every interval is interval * (1 +- JITTER), uniformly (HAProxy spread-checks)
STOP_WAIT = 5.0     # seconds run() waits, once cancelled, for the probes it cancelled to end


class ProbedPool(Protocol):
    """What the prober needs of a pool (the core Balancer has it)."""

    @property
    def backends(self) -> tuple[Backend, ...]: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...

    def report_probe(self, backend: Backend, ok: bool, reason: str = "") -> None: ...


class ProbeSettings(Protocol):
    """The settings the prober reads (the core Settings has them), and, when they have them
    (:class:`~lbmiddleware.upstream.tls.TLSSettings`: the core Settings does), the backend
    TLS settings: the probes reach https backends as the proxies do."""

    @property
    def health_check(self) -> str: ...

    @property
    def health_check_interval(self) -> float: ...

    @property
    def health_check_timeout(self) -> float: ...

    @property
    def health_check_statuses(self) -> tuple[tuple[int, int], ...]: ...


def _context(settings: ProbeSettings) -> ssl_module.SSLContext | None:
    """The pool's context for its https backends, if ``settings`` say how to reach them."""
    return backend_ssl_context(settings) if isinstance(settings, TLSSettings) else None


class _Target:
    """One watched backend: its current value (a new weight or server name is taken at the
    next probe) and the task that probes it."""

    __slots__ = ("backend", "task")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.task: asyncio.Task[None] | None = None


class Prober:
    """Active health checks for ``pool``: ``await prober.run()`` probes every member until
    cancelled.

    ``settings``: ``health_check`` (the path; must not be empty), ``health_check_interval``,
    ``health_check_timeout``, ``health_check_statuses``. ``rng``: a ``random.Random`` for the
    jitter (seed it in tests). ``ssl``: the TLS context for ``https`` backends (default: the
    pool's, :func:`~lbmiddleware.upstream.tls.backend_ssl_context` of ``settings``: its
    ``backend_ca``, ``backend_verify`` and client certificate, built here, so that a file
    that cannot be loaded fails at the start, not at the first probe). ``sleep``: the
    coroutine that waits between probes (``asyncio.sleep``; a test may record the delays
    instead).

    :meth:`check` is the one probe (``(ok, reason)``); a subclass may replace it.
    """

    def __init__(self, pool: ProbedPool, settings: ProbeSettings, *,
                 rng: random.Random | None = None,
                 ssl: ssl_module.SSLContext | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if not settings.health_check:
            raise ConfigError("active health checks are off (health_check is empty): "
                              "give a path such as '/healthz' to probe")
        interval = settings.health_check_interval
        if not interval > 0:
            raise ConfigError(f"health_check_interval is {interval!r}: not a positive duration")
        self.pool = pool
        self.interval = float(interval)
        self.health_check = HealthCheck(settings.health_check, settings.health_check_statuses,
                                        settings.health_check_timeout,
                                        ssl=ssl if ssl is not None else _context(settings))
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._targets: dict[str, _Target] = {}      # url -> target, in joining order
        self._running = False
        # URLs the pool has ejected, and those down by their checks (from its events, on
        # any thread: set operations are atomic). Their probes use new connections.
        self._ejected: set[str] = set()
        self._down: set[str] = set()

    @property
    def watched(self) -> tuple[Backend, ...]:
        """The backends being probed now, in the order they joined."""
        return tuple(target.backend for target in self._targets.values())

    async def check(self, backend: Backend) -> tuple[bool, str]:
        """Probe ``backend`` once: ``(ok, reason)``."""
        return await self.health_check(backend)

    async def run(self) -> None:
        """Probe every member of the pool, following its membership, until cancelled."""
        if self._running:
            raise RuntimeError("this Prober is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def listener(event: Event) -> None:
            if isinstance(event, MembershipChanged):
                call = changed.set
            elif isinstance(event, BackendEjected):
                self._ejected.add(event.backend.url)
                call = functools.partial(self._drop_ejected, event.backend.url)
            elif isinstance(event, BackendReturned):
                self._ejected.discard(event.backend.url)
                return
            elif isinstance(event, BackendDown):
                self._down.add(event.backend.url)
                return
            elif isinstance(event, BackendUp):
                self._down.discard(event.backend.url)
                return
            else:
                return
            try:
                loop.call_soon_threadsafe(call)
            except RuntimeError:            # the loop is closed: nothing left to follow
                pass

        unsubscribe = self.pool.subscribe(listener)     # before reading: no change is missed
        try:
            self._follow(self.pool.backends, self.interval)
            while True:
                await changed.wait()
                changed.clear()
                self._follow(self.pool.backends, self.interval * JITTER)
        finally:
            unsubscribe()
            await self._stop_all()
            self.health_check.close()
            self._ejected.clear()
            self._down.clear()
            self._running = False

    # -- membership ---------------------------------------------------------------------

    def _follow(self, backends: tuple[Backend, ...], spread: float) -> None:
        """Stop the tasks of backends that left, start those of backends that joined (the
        k-th of N joiners first probed at ``k * spread / N``)."""
        targets = self._targets
        current = {backend.url: backend for backend in backends}
        for url in [url for url in targets if url not in current]:
            task = targets.pop(url).task
            if task is not None:
                task.cancel()           # a probe in progress closes its own connection
            self.health_check.drop(url)
            self._ejected.discard(url)
            self._down.discard(url)
        joined = []
        for url, backend in current.items():
            target = targets.get(url)
            if target is None:
                targets[url] = target = _Target(backend)
                joined.append(target)
            else:
                target.backend = backend
        count = len(joined)
        for k, target in enumerate(joined):
            target.task = asyncio.get_running_loop().create_task(
                self._watch(target, k * spread / count), name=f"probe {target.backend.url}")

    async def _stop_all(self) -> None:
        targets, self._targets = self._targets, {}
        tasks = [target.task for target in targets.values() if target.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT)
            if pending:         # never seen: a probe swallowed its cancellation
                logger.error("%d health-check tasks did not stop within %g s: %s",
                             len(pending), STOP_WAIT,
                             ", ".join(sorted(task.get_name() for task in pending)[:5]))

    # -- one backend --------------------------------------------------------------------

    async def _watch(self, target: _Target, delay: float) -> None:
        """Probe ``target`` forever: the first probe after ``delay``, each next one an
        interval +- jitter after the previous one ended."""
        rng, interval, sleep = self._rng, self.interval, self._sleep
        await sleep(delay)
        while True:
            backend = target.backend
            try:
                ok, reason = await self._probe(backend)
            except Exception:
                # A fault of the prober, not of the backend: logged, never reported (it
                # would take healthy backends down).
                logger.exception("health check of %s failed to run", backend.url)
            else:
                self._report(backend, ok, reason)
            await sleep(interval * rng.uniform(1 - JITTER, 1 + JITTER))

    def _out(self, url: str) -> bool:
        """Whether a pass could bring ``url`` back: ejected by the pool or down."""
        return url in self._ejected or url in self._down

    async def _probe(self, backend: Backend) -> tuple[bool, str]:
        """One probe, on a new connection if the backend is out; made again at once on a
        new one if it passed on a kept connection while the pool ejected the backend."""
        url, health_check = backend.url, self.health_check
        if self._out(url):
            health_check.drop(url)
        kept = url in health_check.kept
        ok, reason = await self.check(backend)
        if ok and kept and self._out(url):
            # Ejected while this probe ran on a connection from before: its pass does not
            # show that the backend accepts new connections (clients' connects failed).
            health_check.drop(url)
            ok, reason = await self.check(backend)
        return ok, reason

    def _drop_ejected(self, url: str) -> None:
        """On the loop: close the connection kept for ``url``, ejected by the pool (a probe
        in progress on it finishes first, and :meth:`_probe` judges that one)."""
        if url in self._ejected:
            self.health_check.drop(url)

    def _report(self, backend: Backend, ok: bool, reason: str) -> None:
        try:
            self.pool.report_probe(backend, ok, reason)
        except Exception:
            logger.exception("reporting the health check of %s failed", backend.url)
