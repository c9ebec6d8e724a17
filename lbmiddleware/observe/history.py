"""A pool's recent past: each backend's counters sampled every few seconds, so the status page
can draw request rate and latency over the last minutes and say which replica is slow or
flapping (HAProxy's and Traefik's dashboards show rates too; the long history is Prometheus's
job, when it scrapes ``/metrics``).

A :class:`History` keeps a ring of samples, one every ``interval`` (5 s) over the last ``keep``
(10 minutes): per backend URL the cumulative ``requests``, ``failures``, ``latency_sum``,
``latency_count`` and bytes (``bytes_sent`` + ``bytes_received``) of ``stats()``. Rates and
mean latencies per interval come from the deltas of consecutive samples, as Prometheus's
``rate()`` does: a counter that went down (the URL left and came back as a new member)
restarted from zero.

Sampling runs as a task on the fleet's loop (:mod:`lbmiddleware.fleet.loop`), never a thread of
its own. It holds the pool weakly and ends when the pool is closed or garbage-collected, and it
starts again in a forked child (the parent's loop does not run there), as the pool's own tasks
do. Tests call :meth:`History.sample` with a fake clock's reading instead.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from ..core.balancer import Balancer
from ..errors import ConfigError

__all__ = ["History", "BackendHistory", "history_of", "INTERVAL", "KEEP", "TASK_NAME"]

#: Seconds between two samples.
INTERVAL = 5.0
#: Seconds of samples kept (10 minutes: 120 intervals).
KEEP = 600.0
#: The name of the sampling task on the fleet's loop.
TASK_NAME = "lbmiddleware-history"

logger = logging.getLogger("lbmiddleware")

# url -> (requests, failures, latency_sum, latency_count, bytes sent + received), cumulative
# as stats() gives them
_Counters = dict[str, tuple[int, int, float, int, int]]


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    counters: _Counters


@dataclass(frozen=True, slots=True)
class BackendHistory:
    """One backend's intervals, oldest first, one value per interval between two samples:
    requests and failures per second (None where it was not a member at the interval's end)
    and the mean latency in milliseconds of the attempts answered in it, from the histogram's
    sum and count: the time to the response head, so a refused attempt is not in it (None
    where none was answered); and the body bytes sent and received per second, counted as
    each attempt ended (what the bandwidth policy weighs; None where it was not a member)."""

    interval: float
    requests_per_second: tuple[float | None, ...]
    failures_per_second: tuple[float | None, ...]
    latency_ms: tuple[float | None, ...]
    bytes_per_second: tuple[float | None, ...] = ()

    @property
    def last_rates(self) -> tuple[float | None, float | None]:
        """(requests, failures) per second over the last interval; None before two samples."""
        if not self.requests_per_second:
            return None, None
        return self.requests_per_second[-1], self.failures_per_second[-1]


class History:
    """Samples of one pool's backends over the last ``keep`` seconds, one every ``interval``.

    ``History(pool)`` records nothing by itself: :meth:`sample` takes one sample (tests drive
    it with a fake clock's reading), :meth:`start` samples on the fleet's loop until the pool is
    closed or collected, or :meth:`stop`. :func:`history_of` gives a pool's one started History.
    """

    def __init__(self, pool: Balancer, *, interval: float = INTERVAL, keep: float = KEEP,
                 timer: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(pool, Balancer):
            raise TypeError(f"History needs a Balancer, not {pool!r} ({type(pool).__name__})")
        _check_seconds("interval", interval)
        _check_seconds("keep", keep)
        if keep < interval:
            raise ConfigError(f"keep has value {keep!r}: shorter than interval ({interval!r})")
        self.interval = float(interval)
        self.keep = float(keep)
        self._timer = timer
        self._pool = weakref.ref(pool)
        self._samples: collections.deque[_Sample] = collections.deque(
            maxlen=math.ceil(keep / interval) + 1)
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[None] | None = None
        self._finalizer: weakref.finalize | None = None     # type: ignore[type-arg]
        self._stopped = False

    # -- recording ------------------------------------------------------------------------

    def sample(self, now: float | None = None) -> bool:
        """Take one sample of the pool's counters at ``now`` (the timer's reading by default);
        False, taking none, once the pool is gone. A reading not later than the last sample's
        is ignored (no interval of length zero)."""
        pool = self._pool()
        if pool is None:
            return False
        rows = pool.stats()
        del pool
        at = self._timer() if now is None else now
        counters: _Counters = {
            row["url"]: (row["requests"], row["failures"], row["latency_sum"],
                         row["latency_count"], row["bytes_sent"] + row["bytes_received"])
            for row in rows}
        with self._lock:
            samples = self._samples
            if samples and at <= samples[-1].at:
                return True
            samples.append(_Sample(at, counters))
            # (a stalled loop leaves gaps: what is older than keep goes whatever the count)
            while len(samples) > 1 and samples[0].at < at - self.keep - self.interval / 2:
                samples.popleft()
        return True

    # -- reading --------------------------------------------------------------------------

    def backends(self) -> dict[str, BackendHistory]:
        """Every backend seen in the samples kept, by URL, with its intervals (all of equal
        length, aligned on the same samples)."""
        with self._lock:
            samples = list(self._samples)
        urls: dict[str, None] = {}
        for sample in samples:
            urls.update(dict.fromkeys(sample.counters))
        return {url: self._of(url, samples) for url in urls}

    def of(self, url: str) -> BackendHistory:
        """One backend's intervals (all None for a URL never sampled)."""
        with self._lock:
            samples = list(self._samples)
        return self._of(url, samples)

    def _of(self, url: str, samples: list[_Sample]) -> BackendHistory:
        requests: list[float | None] = []
        failures: list[float | None] = []
        latency: list[float | None] = []
        transferred: list[float | None] = []
        none = (0, 0, 0.0, 0, 0)            # joined in the interval: counted from 0
        for before, after in zip(samples, samples[1:], strict=False):
            now = after.counters.get(url)
            if now is None:
                requests.append(None)
                failures.append(None)
                latency.append(None)
                transferred.append(None)
                continue
            r1, f1, s1, c1, b1 = now
            r0, f0, s0, c0, b0 = before.counters.get(url, none)
            per_second = 1 / (after.at - before.at)
            # (a counter that went down restarted from 0: the URL left and came back)
            requests.append(round((r1 - r0 if r1 >= r0 else r1) * per_second, 3))
            failures.append(round((f1 - f0 if f1 >= f0 else f1) * per_second, 3))
            count = c1 - c0 if c1 >= c0 else c1
            mean = (s1 - s0 if c1 >= c0 else s1) / count * 1000 if count else math.nan
            latency.append(round(mean, 3) if math.isfinite(mean) else None)
            transferred.append(round((b1 - b0 if b1 >= b0 else b1) * per_second, 3))
        return BackendHistory(self.interval, tuple(requests), tuple(failures), tuple(latency),
                              tuple(transferred))

    # -- running on the fleet's loop ------------------------------------------------------

    def start(self) -> History:
        """Sample now and every ``interval`` on the fleet's loop, until the pool is closed or
        collected or :meth:`stop` (idempotent; returns the History)."""
        with self._lock:
            if self._future is not None or self._stopped:
                return self
            pool = self._pool()
            if pool is None:
                return self
            self._finalizer = weakref.finalize(pool, self.stop)
            self._finalizer.atexit = False
            del pool
            self._future = self._submit()
        from ..fleet.loop import restart_after_fork
        restart_after_fork(self)                # a forked child samples on its own loop
        return self

    def stop(self) -> None:
        """End the sampling task (from any thread; idempotent). The samples stay readable."""
        with self._lock:
            self._stopped = True
            future, self._future = self._future, None
            finalizer, self._finalizer = self._finalizer, None
        if future is not None:
            future.cancel()
        if finalizer is not None:
            finalizer.detach()

    @property
    def running(self) -> bool:
        """Whether the sampling task is running (not stopped, and the pool still open)."""
        future = self._future
        return future is not None and not future.done()

    def _submit(self) -> concurrent.futures.Future[None]:
        from ..fleet.loop import submit
        return submit(self._run())

    async def _run(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.set_name(TASK_NAME)
        while not self._stopped:
            pool = self._pool()
            if pool is None or pool.closed:
                return
            del pool
            try:
                self.sample()
            except Exception:       # a bug: said once, not every interval
                logger.exception("lbmiddleware: sampling the status history failed; "
                                 "its charts stop here")
                return
            await asyncio.sleep(self.interval)

    def _restart_after_fork(self) -> None:
        """In a forked child: the parent's task does not run here; start it again."""
        self._lock = threading.Lock()       # another thread may have held it at the fork
        if self._future is not None and not self._stopped:
            self._future = self._submit()

    def __repr__(self) -> str:
        return (f"<History interval={self.interval:g}s keep={self.keep:g}s "
                f"samples={len(self._samples)} running={self.running}>")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} has value {value!r}: not a number of seconds above 0")


# -- one History per pool -----------------------------------------------------------------

_histories: weakref.WeakKeyDictionary[Balancer, History] = weakref.WeakKeyDictionary()
_registry = threading.Lock()


def history_of(pool: Balancer) -> History:
    """The one :class:`History` of ``pool``, made and started on the first call (the status
    apps call it when they are built, so their charts fill from then on)."""
    if not isinstance(pool, Balancer):
        raise TypeError(f"history_of needs a Balancer, not {pool!r} ({type(pool).__name__})")
    with _registry:
        history = _histories.get(pool)
        if history is None:
            history = _histories[pool] = History(pool)
            made = True
        else:
            made = False
    return history.start() if made else history
