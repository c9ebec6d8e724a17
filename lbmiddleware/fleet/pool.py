"""The public :class:`Balancer`: the core's pool, plus the I/O that makes it follow the fleet.

The core's :class:`~lbmiddleware.core.balancer.Balancer` decides (pick, report, membership,
health) and does no I/O. This one adds what must run in the background: a watcher per
source among its backends (``dns+http://...``, ``srv+http://...``, ``etcd://...``: see
:mod:`lbmiddleware.discovery`), whose every new set goes through
``update(backends, source=source)`` and whose outage events go out through ``publish()``,
and a :class:`~lbmiddleware.probes.Prober` when ``health_check`` is set, which calls
``report_probe()``. They run as tasks on the fleet's loop (:mod:`.loop`): never on the
application's loop or threads, so a pick never waits for them.

A pool with static backends only and no health check starts nothing: no thread, no task,
and ``close()`` has nothing to stop. Discovery and probes are imported only by a pool that
uses them, so ``import lbmiddleware`` stays standard-library only, and a DNS source without
dnspython fails at construction with the extra to install.

First answers: a pool built where no event loop runs (a script, a WSGI or requests
program, a server's setup before its loop starts) waits in its constructor, up to
:data:`FIRST_ANSWER_TIMEOUT`, for each source's first answer, so that its first picks find
the members. A pool built inside a running loop (an async function; Starlette builds its
middleware inside the server's loop) returns at once, since waiting there would stop the
loop; async code awaits :meth:`Balancer.ready` before its first pick instead, as the ASGI
middleware does (at the lifespan's startup, else before its first request).

Lifetime: ``close()`` (or leaving ``with Balancer(...) as pool:``) stops the pool's tasks
and waits for them briefly; a pool dropped without ``close()`` stops them when it is
garbage-collected (the tasks hold it weakly). After a ``fork`` a child's pools start their
tasks again on the child's own loop: a pool built before a pre-forking server forks its
workers follows the fleet in each of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.util
import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.backend import Backend, Source
from ..core.balancer import Balancer as CoreBalancer
from ..core.events import Event, Listener
from ..core.settings import Settings
from ..errors import needs_extra

if TYPE_CHECKING:
    from ..discovery import Watcher

__all__ = ["Balancer", "Runner", "require_library", "FIRST_ANSWER_TIMEOUT", "CLOSE_TIMEOUT"]

#: Seconds a new pool waits for every source's first answer (a set, or a failure), so
#: that its first picks find the members (Envoy's cluster warming): its constructor where
#: no event loop runs, else :meth:`Balancer.ready` (never blocking a running loop).
FIRST_ANSWER_TIMEOUT = 5.0
#: Seconds ``close()`` waits for the pool's tasks to end (on the fleet's loop thread it
#: does not wait: they end right after).
CLOSE_TIMEOUT = 2.0
#: A watcher or prober that crashes (a bug: they handle their own errors) is logged and
#: started again after this many seconds, doubling up to :data:`RESTART_MAX`.
RESTART_DELAY = 1.0
RESTART_MAX = 60.0

logger = logging.getLogger("lbmiddleware")

# The third-party library a kind of source needs (an extra's: errors.EXTRAS).
_LIBRARIES = {"dns": "dns", "srv": "dns"}


def require_library(source: Source) -> None:
    """Raise ``ModuleNotFoundError`` naming ``source`` and the extra to install (``pip install
    'lbmiddleware[dns]'``) when the library its kind needs is not installed: the pool's
    constructor, and the gateway before its server starts (a bad setting, not a crashed
    worker)."""
    library = _LIBRARIES.get(source.kind)
    if library is not None and importlib.util.find_spec(library) is None:
        with needs_extra(f"source {source.url!r}"):
            raise ModuleNotFoundError(f"No module named {library!r}", name=library)


class Runner(Protocol):
    """What probes the members (:class:`lbmiddleware.probes.Prober`)."""

    def run(self) -> Awaitable[None]:
        """Run until cancelled, reporting each probe with ``pool.report_probe()``."""
        ...


class Balancer(CoreBalancer):
    """A pool of backends that follows the fleet: the core's Balancer (pick, report,
    ``update``, ``drain``, tiers, health) plus the watchers of its sources and its health
    checks, running in the background.

    ::

        with lb.Balancer(["dns+http://orders.internal:8080", "http://10.0.0.9:8080 backup"],
                         health_check="/healthz") as pool:
            backend = pool.pick()

    Takes what the core's Balancer takes. A backend entry may be a source
    (:class:`~lbmiddleware.Source`): its members join as it answers. The constructor waits
    up to :data:`FIRST_ANSWER_TIMEOUT` for each source's first answer when no event loop
    runs in the calling thread; in a running loop it returns at once, and ``await
    pool.ready()`` waits for them without blocking the loop. ``close()`` stops the
    sources and probes (idempotent, from any thread); a front-end closes the pool it built
    when it closes, never one it was given with ``balancer=``.

    Two steps may be overridden by a subclass: :meth:`watcher` (what follows a source)
    and :meth:`prober` (what probes the members).
    """

    def __init__(
        self,
        backends: Iterable[str | Backend | Source] | str | None = None,
        policy: str | None = None,
        *,
        settings: Settings | None = None,
        timer: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        super().__init__(backends, policy, settings=settings, timer=timer, rng=rng, **options)
        self._watchers: dict[Source, Watcher] = {}
        self._unsubscribes: dict[object, Callable[[], None]] = {}     # see _Held
        self._background: _Background | None = None
        self._first: _FirstAnswers | None = None
        sources: tuple[Source, ...] = self.settings.sources
        if not sources and not self.settings.health_check:
            return
        for source in sources:
            with needs_extra(f"source {source.url!r}"):     # dnspython: the dns extra
                self._watchers[source] = self.watcher(source)
        ref = weakref.ref(self)
        self._first = first = _FirstAnswers(len(sources), FIRST_ANSWER_TIMEOUT)
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (f"source {source.url}", _watching(ref, source, watcher, first.answered))
            for source, watcher in self._watchers.items()]
        if self.settings.health_check:
            self.prober()           # a bad setting fails here, not on the loop
            jobs.append(("health checks", functools.partial(_probing, ref)))
        self._background = background = _Background(jobs)
        weakref.finalize(self, background.stop, 0.0).atexit = False
        background.start()
        from .loop import restart_after_fork
        restart_after_fork(self)                # a forked child starts them on its own loop
        try:
            asyncio.get_running_loop()      # (the fleet's own loop too: it would answer)
        except RuntimeError:
            self.wait_ready()

    # -- the steps a subclass may replace -------------------------------------------------

    def watcher(self, source: Source) -> Watcher:
        """What follows ``source``: :func:`lbmiddleware.discovery.watcher_for`. A DNS source
        without dnspython raises ``ModuleNotFoundError`` naming the ``dns`` extra here, not
        later on the loop (the watcher imports it on its first question)."""
        require_library(source)
        from ..discovery import watcher_for
        return watcher_for(source, self.settings)

    def prober(self) -> Runner:
        """What probes the members when ``health_check`` is set: a
        :class:`lbmiddleware.probes.Prober` on this pool (held weakly, as every task is).
        A new one each time the probes start (after a fork, after a crash)."""
        from ..probes import Prober
        return Prober(_Held(self), self.settings)

    # -- what the pool adds ---------------------------------------------------------------

    def source_stats(self) -> list[dict[str, Any]]:
        """One row per source, in the settings' order: ``url``, ``kind`` (dns, srv, etcd),
        ``backends`` (members in its last good set), ``last_success``, ``last_error``,
        ``last_error_at``, ``next_refresh``, ``failing_since`` (times by the monotonic
        clock, None until they happen), the same as ages (seconds, None when they do not
        apply): ``last_success_ago``, ``last_error_ago``, ``next_refresh_in``,
        ``failing_for``; ``partial`` (what fails while the source still answers, a DNS
        name's AAAA question say; None when nothing does); and the lifetime counters
        ``updates_total`` (answers) and ``failures_total`` (failed asks)."""
        rows = []
        now = time.monotonic()          # the watchers' timer (see watcher_for)
        for watcher in self._watchers.values():
            status = watcher.status
            rows.append({"url": status.source, "kind": status.kind, "backends": status.backends,
                         "last_success": status.last_success, "last_error": status.last_error,
                         "last_error_at": status.last_error_at,
                         "next_refresh": status.next_refresh,
                         "failing_since": status.failing_since,
                         **status.ages(now),
                         "partial": status.partial,
                         "updates_total": status.updates_total,
                         "failures_total": status.failures_total})
        return rows

    async def ready(self, timeout: float | None = None) -> bool:
        """Wait, without blocking the running loop, until each source has answered once (a
        set, or a failure): up to ``timeout`` seconds, by default until
        :data:`FIRST_ANSWER_TIMEOUT` after the pool was built (at once after that). True when
        every source has answered; at once, with no waiting, when they have, or when the
        pool has no source. After a False the pool is used as it is: a pick from an empty
        pool raises :class:`~lbmiddleware.NoHealthyBackend`."""
        first = self._first
        if first is None or first.done.done():
            return True
        return await first.wait(first.remaining() if timeout is None else timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """:meth:`ready` for a thread: blocks it, so never call it on an event loop's thread
        (the constructor calls it where no loop runs)."""
        first = self._first
        if first is None or first.done.done():
            return True
        wait = first.remaining() if timeout is None else timeout
        concurrent.futures.wait((first.done,), wait)
        return first.done.done()

    def close(self) -> None:
        """Stop the pool's sources and health checks: idempotent, from any thread. Waits up
        to :data:`CLOSE_TIMEOUT` for them to end, except on the fleet's loop thread and on
        the thread that owns the pool (:meth:`own`: a source's last update may be waiting
        for that thread's loop); they end right after. The members and their state stay:
        picks go on working."""
        if self._background is not None:
            owner = self._owner
            owned_here = owner is not None and owner.thread == threading.get_ident()
            self._background.stop(0.0 if owned_here else CLOSE_TIMEOUT)
        super().close()

    async def aclose(self) -> None:
        """:meth:`close` for async code: waits for the tasks without blocking the caller's
        event loop."""
        done = self._background.cancel() if self._background is not None else None
        if done is not None:
            from .loop import in_loop_thread
            if not in_loop_thread():
                # (asyncio.wait, not wait_for: before 3.12 wait_for could swallow the
                # caller's cancellation when the future completed at the same moment)
                finished, _ = await asyncio.wait({asyncio.wrap_future(done)},
                                                 timeout=CLOSE_TIMEOUT)
                if not finished:
                    _still_running(CLOSE_TIMEOUT)
        super().close()

    def _restart_after_fork(self) -> None:
        if self._background is not None:
            self._background.restart()


def _watching(ref: weakref.ref[Balancer], source: Source, watcher: Watcher,
              first_answer: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    """The job that runs ``watcher``: its sets and events go to the pool while it lives;
    the first of them (a set or a failure) is the source's first answer."""
    answered = False

    def publish(backends: tuple[Backend, ...]) -> None:
        try:
            pool = ref()
            if pool is not None:
                pool.update(backends, source=source)
        finally:            # (after the update: a waiter woken by it finds the members)
            now_answered()

    def emit(event: Event) -> None:
        try:
            pool = ref()
            if pool is not None:
                pool.publish(event)
        finally:
            now_answered()

    def now_answered() -> None:
        nonlocal answered
        if not answered:
            answered = True
            first_answer()

    return lambda: watcher.run(publish, emit)


class _FirstAnswers:
    """Whether each of a pool's sources has answered once, waited for by a thread
    (``done``, a concurrent future) or by a coroutine on any loop (:meth:`wait`), until
    ``deadline`` by default."""

    def __init__(self, sources: int, timeout: float) -> None:
        self._waiting = sources
        self._lock = threading.Lock()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not sources:
            self.done.set_result(None)
        self.deadline = time.monotonic() + timeout

    def answered(self) -> None:
        """One more source answered (each source's job calls it once)."""
        with self._lock:
            self._waiting -= 1
            if self._waiting == 0 and not self.done.done():
                self.done.set_result(None)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds without blocking the running loop: True when
        every source has answered."""
        if timeout > 0 and not self.done.done():
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()

            def wake(_: object) -> None:    # on the fleet's loop thread, or at once
                try:
                    loop.call_soon_threadsafe(_resolve, woken)
                except RuntimeError:        # that loop is closed: nobody waits any more
                    pass

            # (woken is ours to cancel, unlike a wrap_future of done, whose cancellation
            # would cancel done for every waiter; asyncio.wait: see aclose)
            self.done.add_done_callback(wake)
            await asyncio.wait((woken,), timeout=timeout)
            woken.cancel()
        return self.done.done()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Held:
    """The pool as its prober sees it (``backends``, ``subscribe``, ``report_probe``), held
    weakly: a pool dropped without ``close()`` is collected, and its finalizer stops the
    probes. (The core's unsubscribe function holds its pool, so it is kept on the pool.)"""

    def __init__(self, pool: Balancer) -> None:
        self._ref = weakref.ref(pool)

    def _pool(self) -> Balancer:
        pool = self._ref()
        if pool is None:
            raise ReferenceError("the pool was garbage-collected")
        return pool

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self._pool().backends

    def report_probe(self, backend: Backend, ok: bool, reason: str = "") -> None:
        self._pool().report_probe(backend, ok, reason)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        pool, token = self._pool(), object()
        pool._unsubscribes[token] = pool.subscribe(listener)
        ref = self._ref

        def unsubscribe() -> None:
            pool = ref()
            if pool is not None:
                pool._unsubscribes.pop(token, _nothing)()

        return unsubscribe


def _nothing() -> None:
    pass


async def _probing(ref: weakref.ref[Balancer]) -> None:
    """The job that probes the pool's members, with a new prober each time it starts."""
    pool = ref()
    if pool is not None:
        runner = pool.prober()
        del pool
        await runner.run()


class _Background:
    """A pool's jobs as tasks on the fleet's loop; holds no reference to the pool."""

    def __init__(self, jobs: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        self._jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        from .loop import submit
        submit(self._start())

    async def _start(self) -> None:
        if not self._stopped:
            self._tasks = [asyncio.ensure_future(_supervised(name, job))
                           for name, job in self._jobs]

    def stop(self, timeout: float) -> None:
        """Cancel the tasks; wait up to ``timeout`` for them to end (not on the loop)."""
        from .loop import in_loop_thread
        done = self.cancel()
        if done is not None and timeout > 0 and not in_loop_thread():
            try:
                done.result(timeout)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                _still_running(timeout)

    def cancel(self) -> concurrent.futures.Future[None] | None:
        """Cancel the tasks (the first time only): done when they all ended."""
        with self._lock:
            if self._stopped:
                return None
            self._stopped = True
        from .loop import submit
        return submit(self._cancel())

    async def _cancel(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def restart(self) -> None:
        """In a forked child: the parent's tasks do not run here; start them again."""
        self._lock = threading.Lock()       # another thread may have held it at the fork
        if self._stopped:
            return
        self._tasks = []
        self.start()


def _still_running(timeout: float) -> None:
    logger.warning("lbmiddleware: sources or health checks still running %.3gs after close()",
                   timeout)


async def _supervised(name: str, job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job()`` until cancelled; a crash is logged and the job started again later."""
    delay = RESTART_DELAY
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("lbmiddleware: %s crashed; starting it again in %.3gs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_MAX)
