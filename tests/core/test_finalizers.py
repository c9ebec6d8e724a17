"""Ends of attempts that a garbage collection runs: a lost request's coroutine closed, an
entered ``attempt()`` dropped, a streamed body's finalizer. None may deadlock, even when the
collection runs inside the balancer's own lock (a pick allocates under it, and any allocation
may start a collection), and none may run an event listener inside the finalizer (the code
that dropped the object may hold a lock the listener takes).

A deadlock would stop its thread for good: each scenario runs in a daemon thread joined with a
timeout, so a regression fails an assertion instead of hanging the suite.
"""

from __future__ import annotations

import threading
import weakref

import lbmiddleware as lb
from lbmiddleware.core.attempts import Outcome
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


def in_flight(pool):
    return [row["in_flight"] for row in pool.stats()]


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
