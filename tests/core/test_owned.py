"""The owned path (``Balancer.own``, its ``Lane``) against the locked one: the same calls, on
the same clock and chance, give the same picks, ``stats()``, ``pool_stats()`` and events,
for every policy and with retries, the retry budget, slow start, drain, active health, tiers,
ejections and panic; other threads' calls are handed to the owner's loop.

Four ways through one script: the pool's methods (the locked path, reading the timer); the
same with the caller's reading (``now=``); the owner's lane with ``now=``; the lane without.
The owned pool's updates, drains, probes and reads come from another thread (the fleet's, the
admin listener's in the gateway), so each of them goes through the hand-off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import json
import os
import random
import select
import signal
import threading
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import lbmiddleware as lb
from lbmiddleware.core.attempts import Attempts, Outcome, RetryRule
from lbmiddleware.core.balancer import Balancer, Lane
from lbmiddleware.core.events import SourceFailed, SourceRecovered
from lbmiddleware.errors import ConfigError, NoHealthyBackend

A, B, C, D, E = "http://a:1", "http://b:1", "http://c:1", "http://d:1", "http://e:1"
DNS = "dns+http://orders:8080"
RULE = RetryRule(retries=2)
#: What every scenario shares: ejections, the retry budget, slow start, drain timeouts.
COMMON: dict[str, Any] = {"max_fails": 2, "fail_timeout": 4.0, "max_ejection_time": 20.0,
                          "retry_budget": 0.25, "retry_budget_min_per_second": 1.0,
                          "slow_start": 8.0, "drain_timeout": 3.0}
SCENARIOS: dict[str, tuple[list[Any], dict[str, Any]]] = {
    **{policy: ([A, B, C, D], {"policy": policy}) for policy in lb.POLICIES},
    "ip_hash bounded": ([A, B, C, D], {"policy": "ip_hash", "hash_balance_factor": 125}),
    "tiers": ([A, B, lb.Backend(C, priority=1), lb.Backend(D, priority=1)],
              {"policy": "round_robin"}),
    "health least_conn": ([A, B, C, D], {"policy": "least_conn", "health_check": "/h",
                                         "health_check_rise": 1, "health_check_fall": 2}),
    "health ip_hash": ([A, B, C, D], {"policy": "ip_hash", "health_check": "/h",
                                      "health_check_rise": 2, "health_check_fall": 1}),
    "health latency tiers": ([A, B, lb.Backend(C, priority=1), D],
                             {"policy": "latency", "health_check": "/h"}),
    "source": ([A, lb.Source(DNS)], {"policy": "least_conn"}),
    "source ip_hash health": ([lb.Source(DNS)], {"policy": "ip_hash", "health_check": "/h"}),
}
#: The sets the script's updates give (a join, a leave, a new weight).
SETS = ([A, B, C, D], [A, B, C], [A, lb.Backend(B, weight=3), C, D, E], [B, D], [A, C, D, E])
STEPS = 360


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def world(url: str, step: int, attempt: int) -> Outcome:
    """How an attempt on ``url`` ends at ``step``: in some phases some backends fail (all of
    them in the last: a panic), in three ways (refused, a 503, a read timeout)."""
    digest = zlib.crc32(f"{url} {step} {attempt}".encode())
    bad = {0: (), 1: (C,), 2: (B, C, E), 3: (A, B, C, D, E), 4: (D,)}[step // 30 % 5]
    if url in bad and digest % 4:
        kind = digest % 3
        if kind == 0:
            return Outcome(ok=False, sent=False, error="connection refused")
        if kind == 1:
            return RULE.outcome(503, 0.05 + digest % 100 / 1000, bytes_received=12)
        return Outcome(ok=False, timeout=True, error="read timed out")
    return RULE.outcome(200, 0.001 + digest % 50 / 1000, bytes_sent=digest % 7 * 100,
                        bytes_received=digest % 13 * 1000)


def script(seed: int) -> list[tuple[Any, ...]]:
    """The operations, drawn once: the same list for every path."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for step in range(STEPS):
        roll = rng.random()
        key = f"198.51.100.{rng.randrange(40)}"
        if roll < 0.45:
            ops.append(("request", step, key, rng.random() < 0.15, rng.random() < 0.1))
        elif roll < 0.55:
            ops.append(("hold", step, key))
        elif roll < 0.65:
            ops.append(("finish", step, rng.random() < 0.2))
        elif roll < 0.70:
            ops.append(("pick", step, key, rng.random() < 0.5))
        elif roll < 0.82:
            ops.append(("advance", rng.choice((0.0, 0.01, 0.3, 1.0, 2.5, 6.0))))
        elif roll < 0.85:
            ops.append(("update", rng.randrange(len(SETS)), rng.random() < 0.5))
        elif roll < 0.86:
            ops.append(("publish", rng.random() < 0.5))
        elif roll < 0.87:
            ops.append(("drain", rng.choice((A, B, C, D, E)), rng.random() < 0.5))
        elif roll < 0.93:
            ops.append(("probe", rng.choice((A, B, C, D, E)), rng.random() < 0.6))
        elif roll < 0.96:
            ops.append(("lookup", key))
        else:
            ops.append(("read", rng.random() < 0.5))
    ops.append(("read", True))
    ops.append(("read", False))
    return ops


class Path:
    """One way through the script: which object picks and reports, whether it gets the
    clock's reading, and how another thread's call is made."""

    def __init__(self, pool: Balancer, clock: Clock, *, lane: Lane | None = None,
                 timed: bool = False,
                 foreign: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.picker: Balancer | Lane = lane if lane is not None else pool
        self.timed = timed
        self._foreign = foreign

    def now(self) -> dict[str, float]:
        return {"now": self.clock()} if self.timed else {}

    async def elsewhere(self, call: Callable[[], Any]) -> Any:
        """``call()`` as another thread makes it (for the owned pool: a thread of its own)."""
        return call() if self._foreign is None else await self._foreign(call)


def attempts(path: Path, key: str | None, prefer: str | None = None) -> Attempts:
    return Attempts(path.picker, RULE, "GET", key, prefer=prefer, timeout=30.0,
                    timer=path.clock, **path.now())


def outcome_of(call: Callable[[], Any]) -> Any:
    """The call's result, or the error it raised (as words: the same on every path)."""
    try:
        return call()
    except (NoHealthyBackend, ConfigError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def run(path: Path, ops: list[tuple[Any, ...]]) -> list[Any]:
    """What the path observes along the script: picks, errors, reads, events."""
    pool, clock = path.pool, path.clock
    seen: list[Any] = []
    events: list[Any] = []
    pool.subscribe(events.append)
    held: list[tuple[Attempts, str]] = []
    for op in ops:
        kind = op[0]
        if kind == "request":
            _, step, key, sticky, give_up = op
            prefer = pool.sticky_value(B) if sticky else None
            tries = attempts(path, key, prefer)
            try:
                backend = tries.start()
            except NoHealthyBackend as exc:
                seen.append(("none", str(exc)))
                continue
            picked = [backend.url]
            while True:
                outcome = world(backend.url, step, len(picked))
                if outcome.ok:
                    break
                following = tries.retry(outcome, **path.now())
                if following is None:
                    break
                backend = following
                picked.append(backend.url)
            if give_up:
                tries.release()
            else:
                tries.end(outcome, **path.now())
            seen.append(("request", picked))
        elif kind == "hold":
            _, step, key = op
            tries = attempts(path, key)
            try:
                held.append((tries, tries.start().url))
                seen.append(("hold", held[-1][1]))
            except NoHealthyBackend as exc:
                seen.append(("none", str(exc)))
        elif kind == "finish":
            if held:
                tries, url = held.pop(0)
                if op[2]:
                    tries.completion.release()
                else:
                    tries.end(world(url, 0, 1), **path.now())
        elif kind == "pick":
            _, step, key, exclude = op
            tried = [lb.Backend(A)] if exclude else []
            try:
                backend = path.picker.pick(key, tried, None, **path.now())
            except NoHealthyBackend as exc:
                seen.append(("none", str(exc)))
                continue
            seen.append(("pick", backend.url))
            result = world(backend.url, step, 7)
            path.picker.report(backend, result.ok, result.latency, bytes_sent=result.bytes_sent,
                               bytes_received=result.bytes_received, status=result.status,
                               **path.now())
        elif kind == "advance":
            clock.now += op[1]
        elif kind == "update":
            backends, source = SETS[op[1]], DNS if op[2] else None
            await path.elsewhere(lambda backends=backends, source=source: pool.update(
                backends, source=source))
        elif kind == "publish":
            event = SourceFailed(DNS, "timeout", 5.0) if op[1] else SourceRecovered(DNS, 3.0)
            await path.elsewhere(lambda event=event: pool.publish(event))
        elif kind == "drain":
            call = pool.drain if op[2] else pool.undrain
            seen.append(("drain", await path.elsewhere(
                lambda call=call, url=op[1]: outcome_of(lambda: call(url)))))
        elif kind == "probe":
            await path.elsewhere(lambda url=op[1], ok=op[2]: pool.report_probe(
                url, ok, "" if ok else "status 503"))
        elif kind == "lookup":
            if pool.policy == "ip_hash":
                seen.append(("lookup", await path.elsewhere(
                    lambda key=op[1]: outcome_of(lambda: pool.lookup(key).url))))
        elif kind == "read":
            if op[1]:       # by another thread (handed over), else by the owner's
                seen.append(await path.elsewhere(lambda: (pool.stats(), pool.pool_stats())))
            else:
                seen.append((pool.stats(), pool.pool_stats()))
            seen.append(("usual", [outcome_of(lambda url=url: path.picker.usual_latency(url))
                                   for url in (A, B, C, D, E)]))
    for tries, _ in held:
        tries.end(RULE.outcome(200, 0.002), **path.now())
    seen.append((pool.stats(), pool.pool_stats()))
    seen.append(("events", [repr(event) for event in events], events))
    return seen


def make_pool(name: str, clock: Clock) -> Balancer:
    backends, options = SCENARIOS[name]
    return Balancer(backends, timer=clock, rng=random.Random(7), **{**COMMON, **options})


@functools.cache
def locked(name: str, timed: bool) -> list[Any]:
    """The script on a pool's locked methods (cached: the same every time)."""
    clock = Clock()
    path = Path(make_pool(name, clock), clock, timed=timed)
    return asyncio.run(run(path, script(zlib.crc32(name.encode()))))


def owned(name: str, timed: bool) -> tuple[list[Any], set[int]]:
    """The script on an owned pool; also the threads that delivered its events."""
    clock = Clock()
    pool = make_pool(name, clock)
    threads: set[int] = set()
    pool.subscribe(lambda event: threads.add(threading.get_ident()))

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        lane = pool.own(loop)
        with concurrent.futures.ThreadPoolExecutor(1) as other:
            def foreign(call: Callable[[], Any]) -> Awaitable[Any]:
                return loop.run_in_executor(other, call)
            seen = await run(Path(pool, clock, lane=lane, timed=timed, foreign=foreign),
                             script(zlib.crc32(name.encode())))
        pool.disown()
        return seen

    return asyncio.run(main()), threads


@pytest.mark.parametrize("name", SCENARIOS)
def test_owned_path_sees_what_the_locked_path_sees(name: str) -> None:
    reference = locked(name, timed=False)
    assert locked(name, timed=True) == reference
    lane_timed, threads = owned(name, timed=True)
    assert lane_timed == reference
    assert threads == {threading.get_ident()}        # every event, on the owner thread
    assert owned(name, timed=False)[0] == reference


def test_the_script_reaches_what_it_is_for() -> None:
    """Each scenario goes through retries, ejections, panics, drains and membership changes,
    and together they go through refusals of the budget, slow starts, health checks and
    source outages (or the comparison above proves little)."""
    everywhere = ("BackendEjected", "BackendReturned", "PanicStarted", "PanicEnded",
                  "DrainStarted", "DrainEnded", "MembershipChanged")
    somewhere = ("BackendDown", "BackendUp", "SourceFailed", "SourceRecovered",
                 "slow_start")
    seen, exhausted = "", 0
    for name in SCENARIOS:
        observed = locked(name, timed=False)
        events = " ".join(observed[-1][1])
        rows, totals = observed[-2]
        for word in everywhere:
            assert word in events, (name, word)
        assert totals["retries"] > 10, name
        exhausted += totals["retry_budget"]["exhausted_total"]
        seen += events + " ".join(repr(item) for item in observed)
    assert exhausted > 0
    for word in somewhere:
        assert word in seen, word


# -- ownership itself ---------------------------------------------------------------------

def in_thread(call: Callable[[], Any]) -> Any:
    """``call()`` on a thread of its own, while this one waits (the owner's loop not
    running: only for calls that need no hand-off)."""
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        return other.submit(call).result()


async def elsewhere(call: Callable[[], Any]) -> Any:
    """``call()`` on another thread, this loop running meanwhile (to serve a hand-off)."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        return await loop.run_in_executor(other, call)


def test_own_again_is_the_same_lane_and_another_owner_is_refused() -> None:
    pool = Balancer([A, B])
    assert pool.lane is None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lane = pool.own(loop)
        assert pool.own(loop) is lane and pool.lane is lane
        with pytest.raises(RuntimeError, match="owned by another thread"):
            await elsewhere(lambda: pool.own(loop))
        with pytest.raises(RuntimeError, match="owned by another thread"):
            pool.own(asyncio.new_event_loop())
        pool.disown()
        assert pool.lane is None
        pool.disown()                          # nothing: not owned

    asyncio.run(main())


def test_other_threads_calls_run_on_the_owner_and_raise_there_for_the_caller() -> None:
    pool = Balancer([A, B])
    ran: list[int] = []
    pool.subscribe(lambda event: ran.append(threading.get_ident()))

    async def main() -> None:
        pool.own(asyncio.get_running_loop())
        await elsewhere(lambda: pool.update([A, B, C]))
        assert ran == [threading.get_ident()]           # its event, on the owner thread
        with pytest.raises(ConfigError, match="no such backend"):
            await elsewhere(lambda: pool.drain(D))
        backend = await elsewhere(pool.pick)
        assert [row["in_flight"] for row in pool.stats()] == [1, 0, 0]
        await elsewhere(lambda: pool.release(backend))  # queued: applied by the next call
        assert [row["in_flight"] for row in await elsewhere(pool.stats)] == [0, 0, 0]

    asyncio.run(main())


def test_a_lane_after_disown_takes_the_lock() -> None:
    clock = Clock()
    pool = Balancer([A, B], timer=clock)

    async def main() -> Lane:
        lane = pool.own(asyncio.get_running_loop())
        assert lane.pick().url == A
        pool.disown()
        return lane

    lane = asyncio.run(main())
    assert lane.pick(now=clock()).url == B            # on the locked path now
    in_thread(lambda: pool.update([A]))                 # no owner: no hand-off
    assert "ownership ended" in repr(lane)
    assert [row["in_flight"] for row in pool.stats()] == [1, 1]


def test_a_closed_loop_ends_ownership_for_the_next_caller() -> None:
    pool = Balancer([A, B])
    loop = asyncio.new_event_loop()
    lane = loop.run_until_complete(_own(pool))
    loop.close()                                        # without disown()
    assert in_thread(lambda: pool.pool_stats()["members"]) == 2
    assert pool.lane is None
    assert lane.pick().url == A                         # the lock from now on


async def _own(pool: Balancer) -> Lane:
    return pool.own(asyncio.get_running_loop())


def test_finalizer_ends_are_queued_for_the_owner() -> None:
    pool = Balancer([A, B])

    async def main() -> None:
        lane = pool.own(asyncio.get_running_loop())
        completion = lane.begin()
        del completion                              # dropped without an end
        gc.collect()
        assert pool._deferred                       # queued, not applied
        assert [row["in_flight"] for row in pool.stats()] == [0, 0]   # applied first
        backend = lane.pick()
        await elsewhere(lambda: pool.report_later(backend, ok=False))
        assert pool._deferred                       # another thread's end: queued too
        lane.pick()                                 # the owner's next call applies it
        assert {row["url"]: row["failures"] for row in pool.stats()}[backend.url] == 1

    asyncio.run(main())


def test_attempts_take_one_reading_for_the_deadline_and_the_first_pick() -> None:
    clock = Clock()
    pool = Balancer([A, B], timer=clock, policy="latency", rng=random.Random(1))
    reads = 0

    def counting() -> float:
        nonlocal reads
        reads += 1
        return clock.now

    async def main() -> None:
        lane = pool.own(asyncio.get_running_loop())
        pool._timer = counting                    # what the pool reads from now on
        for policy in (pool._policy,):
            policy.timer = counting
        tries = Attempts(lane, RULE, "GET", None, timeout=5.0, timer=counting, now=clock.now)
        tries.start()
        tries.end(RULE.outcome(200, 0.01), now=clock.now)
        assert tries.deadline == clock.now + 5.0

    asyncio.run(main())
    assert reads == 0


@dataclasses.dataclass
class _Loop:
    """A loop that is never run: what own() needs of one."""

    closed: bool = False

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> object:
        if self.closed:
            raise RuntimeError("Event loop is closed")
        return None

    def is_closed(self) -> bool:
        return self.closed


def test_a_loop_closed_while_a_caller_waits_lets_it_run_the_call() -> None:
    pool = Balancer([A, B])
    loop = _Loop()
    pool.own(loop)
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        waiting = other.submit(pool.pool_stats)
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.result(0.05)                   # queued for a loop that does not run
        loop.closed = True
        assert waiting.result(5)["members"] == 2   # the caller saw it closed and ran it
    assert pool.lane is None


class _OwnedBetweenCheckAndLock:
    """The pool's lock, but the first try-lock from another thread lets the owner thread
    own the pool first (and queue an end of its own): the moment between a finalizer's
    look at the owner and its try-lock (``Balancer._apply_later``)."""

    def __init__(self, lock: Any, owner_side: Callable[[], None]) -> None:
        self._lock = lock
        self._owner_side = owner_side
        self._thread = threading.get_ident()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and threading.get_ident() != self._thread:
            owner_side, self._owner_side = self._owner_side, lambda: None
            owner_side()
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_an_end_from_another_thread_racing_own_leaves_the_owners_queue_to_the_owner() -> None:
    # Another thread's release_later() saw no owner; before its try-lock, the owner thread
    # owned the pool and queued an end of its own (a dropped lane handle). That thread must
    # not apply the queue once it has the lock: the owner's lane changes the pool without the
    # lock, so two threads would change it at once.
    pool = Balancer([A, B])
    loop = _Loop()
    checked, owned_now = threading.Event(), threading.Event()
    held = pool.pick()

    def owner_side() -> None:               # on the other thread: hand over, wait
        checked.set()
        assert owned_now.wait(5)

    pool._lock = _OwnedBetweenCheckAndLock(pool._lock, owner_side)
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        ending = other.submit(pool.release_later, held)
        assert checked.wait(5)
        lane = pool.own(loop)               # this thread owns the pool now (held ends)
        lane.release_later(lane.pick())     # an end queued for the owner
        owned_now.set()
        ending.result(5)
    assert len(pool._deferred) == 1         # left to the owner's next call
    lane.pick()
    assert not pool._deferred
    assert [row["in_flight"] for row in pool.stats()] == [1, 0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_owns_nothing_and_reads_without_waiting() -> None:
    # The child has no owner thread (nor the owner's loop: here a loop that never runs, so a
    # call handed to it would wait for good): every ownership ends at the fork, a read from
    # another thread of the child takes the lock, the old lane takes it too, and the child
    # may own the pool on a loop of its own.
    pool = Balancer([A, B])
    lane = pool.own(_Loop())
    held = lane.pick()
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child
        seen: dict[str, Any] = {}
        try:
            os.close(readable)
            seen["lane"] = repr(pool.lane)
            seen["in_flight"] = [row["in_flight"] for row in in_thread(pool.stats)]
            seen["old lane"] = lane.pick().url
            seen["owned again"] = pool.own(_Loop()) is pool.lane is not None
        except BaseException as exc:                        # told to the parent
            seen["error"] = repr(exc)
        finally:
            os.write(writable, json.dumps(seen).encode())
            os._exit(0)
    os.close(writable)
    try:
        ready, _, _ = select.select([readable], [], [], 10.0)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        answer = os.read(readable, 65536) if ready else b""
    finally:
        os.close(readable)
        os.waitpid(pid, 0)
    assert ready, "the child still waits after 10 s: its read was handed to the parent's owner"
    assert json.loads(answer) == {"lane": "None", "in_flight": [1, 0], "old lane": B,
                                  "owned again": True}
    assert pool.lane is lane                                # the parent's own: unchanged
    lane.release(held)


def test_a_lane_handle_ends_once_through_the_lane_or_after_disown_through_the_lock() -> None:
    clock = Clock()
    pool = Balancer([A, B], timer=clock)
    lane = pool.own(_Loop())
    first, second, dropped = lane.begin(now=clock()), lane.begin(), lane.begin()
    assert repr(first) == f"<Completion {A} in flight>"
    first.done(RULE.outcome(200, 0.01), now=clock())
    first.done(RULE.outcome(503, 0.01))                 # ended: ignored
    first.release()
    del first
    gc.collect()
    assert not pool._deferred                           # ended: its finalizer does nothing
    del dropped
    gc.collect()
    assert len(pool._deferred) == 1                     # queued for the owner's next call
    pool.disown()
    second.done(RULE.outcome(503, 0.02))               # ownership over: the locked report
    rows = {row["url"]: row for row in pool.stats()}
    assert [(rows[url]["requests"], rows[url]["failures"], rows[url]["in_flight"])
            for url in (A, B)] == [(1, 0, 0), (1, 1, 0)]
