"""Ends of attempts that a garbage collection runs: a lost request's coroutine closed, an
entered ``attempt()`` dropped, a streamed body's finalizer. None may deadlock, even when the
collection runs inside the balancer's own lock (a pick allocates under it, and any allocation
may start a collection), and none may run an event listener inside the finalizer (the code
that dropped the object may hold a lock the listener takes).

A deadlock would stop its thread for good: each scenario runs in a daemon thread joined with a
timeout, so a regression fails an assertion instead of hanging the suite.
"""

from __future__ import annotations

import gc
import threading
import types
import weakref

import pytest

import lbmiddleware as lb
from lbmiddleware.core.attempts import Attempts, Outcome, RetryRule
from lbmiddleware.core.events import BackendEjected

A, B = "http://a:1", "http://b:1"
ELSEWHERE = lb.Backend("http://elsewhere:1")      # no member: excluding it changes nothing
TIMEOUT = 5.0


def finishes(call, timeout=TIMEOUT):
    """``call()`` in a daemon thread: its result, or a failure if it has not returned in time."""
    result, error = [], []

    def run():
        try:
            result.append(call())
        except BaseException as exc:        # handed to the test's thread
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout}s: deadlocked"
    if error:
        raise error[0]
    return result[0]


@pytest.fixture
def collector_paused():
    """No collection runs but the test's own (an automatic one would pick its own moment)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if enabled:
        gc.enable()


class CollectingExclude(tuple):
    """An ``exclude`` that runs a garbage collection when pick() reads it, under the lock."""

    def __new__(cls, pool):
        self = super().__new__(cls, (ELSEWHERE,))
        self.pool = pool
        self.collected_under_lock = []
        return self

    def __iter__(self):
        self.collected_under_lock.append(self.pool._lock.locked())
        gc.collect()
        return super().__iter__()


def leak(thing):
    """Drop ``thing`` into a reference cycle: only the cyclic collector frees it."""
    holder = [thing]
    holder.append(holder)


def in_flight(pool):
    return [row["in_flight"] for row in pool.stats()]


@types.coroutine
def forever():
    yield                 # suspended for good: a client that never takes the response


async def lost_attempts(pool):
    attempts = Attempts(pool, RetryRule(), "GET")
    attempts.start()
    with attempts:        # as the ASGI exchange does
        await forever()


async def lost_completion(pool):
    with pool.begin():
        await forever()


async def lost_release_in_finally(pool):
    backend = pool.pick()         # a user's own code: no context manager of ours
    try:
        await forever()
    finally:
        pool.release(backend)


def lost_attempt(pool):
    context = pool.attempt()
    context.__enter__()           # entered, never exited
    return context


def started(coroutine_function):
    def start(pool):
        coroutine = coroutine_function(pool)
        coroutine.send(None)      # runs to its first suspension, the attempt open
        return coroutine
    start.__name__ = coroutine_function.__name__
    return start


LOST = [lost_attempt, started(lost_attempts), started(lost_completion),
        started(lost_release_in_finally)]


@pytest.mark.parametrize("lose", LOST, ids=lambda f: f.__name__)
def test_an_open_attempt_collected_inside_a_pick_is_released_without_deadlock(
        lose, collector_paused):
    pool = lb.Balancer([A, B], policy="round_robin")
    leak(lose(pool))
    assert sorted(in_flight(pool)) == [0, 1]
    exclude = CollectingExclude(pool)
    picked = finishes(lambda: pool.pick(exclude=exclude))
    assert exclude.collected_under_lock == [True]      # the scenario: collected inside pick()
    pool.report(picked, ok=True)
    assert in_flight(pool) == [0, 0]                   # the lost attempt too, by the next call


@pytest.mark.parametrize("lose", LOST, ids=lambda f: f.__name__)
def test_an_open_attempt_collected_while_the_lock_is_held_is_released_by_the_next_call(
        lose, collector_paused):
    pool = lb.Balancer([A])
    leak(lose(pool))

    def collect_holding_the_lock():
        with pool._lock:               # as a collection inside any of the pool's calls
            gc.collect()

    finishes(collect_holding_the_lock)
    assert in_flight(pool) == [0]


@pytest.mark.parametrize("lose", LOST[1:3], ids=lambda f: f.__name__)
def test_an_attempt_closed_by_the_collector_runs_no_listener(lose, collector_paused):
    # Its release may apply an end deferred earlier (here an ejecting failure): the event
    # goes out with the next call, not from inside the collection.
    pool = lb.Balancer([A, B], policy="round_robin", max_fails=1)
    events = []
    pool.subscribe(events.append)
    failing = pool.pick(exclude=[B])
    leak(lose(pool))
    with pool._lock:
        pool.report_later(failing, ok=False)      # deferred: the lock is taken
    finishes(gc.collect)                          # the lock is free: applied, not delivered
    assert events == []
    assert in_flight(pool) == [0, 0]              # the next call delivers
    assert [type(e) for e in events] == [BackendEjected]


def test_the_lock_free_ends_apply_at_once_but_run_no_listener():
    pool = lb.Balancer([A, B], policy="round_robin", max_fails=2)
    events = []
    pool.subscribe(events.append)
    held = [pool.pick(exclude=[B]) for _ in range(3)]
    pool.report_later(held[0], ok=False)
    pool.report_later(held[1], ok=False)          # the lock is free: applied now, ejecting A
    pool.release_later(held[2])
    assert events == []
    assert pool._deferred == type(pool._deferred)()      # nothing left for later: applied
    rows = pool.stats()                                  # a normal call delivers
    assert (rows[0]["state"], rows[0]["in_flight"]) == ("ejected", 0)
    assert [type(e) for e in events] == [BackendEjected]


def test_a_streamed_body_dropped_under_the_listeners_lock_does_not_deadlock():
    # The adapter ends a streamed attempt from its body's finalizer (weakref.finalize ->
    # Completion.done(wait=False)); the code dropping the body may hold a metrics lock.
    pool = lb.Balancer([A, B], policy="round_robin", max_fails=1)
    metrics_lock = threading.Lock()
    events = []

    def listener(event):
        with metrics_lock:
            events.append(event)

    pool.subscribe(listener)

    class Body:
        pass

    bodies = [Body()]
    weakref.finalize(bodies[0], pool.begin().done, Outcome(ok=False), wait=False)

    def drop_holding_the_metrics_lock():
        with metrics_lock:
            bodies.clear()                # the finalizer reports: A is ejected

    finishes(drop_holding_the_metrics_lock)
    assert events == []
    finishes(pool.stats)
    assert [type(e) for e in events] == [BackendEjected]


def test_a_release_never_waits_for_the_lock():
    # It has no outcome: applied now if the lock is free, else by the next call (which
    # applies it before it reads anything), so it cannot deadlock whoever calls it.
    pool = lb.Balancer([A])
    backend = pool.pick()

    def release_holding_the_lock():
        with pool._lock:
            pool.release(backend)

    finishes(release_holding_the_lock)
    assert in_flight(pool) == [0]
    pool.release(pool.pick())                     # the lock free: at once
    assert pool._deferred == type(pool._deferred)() and in_flight(pool) == [0]
