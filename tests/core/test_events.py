"""Events: what each change of a pool sends, to whom, when (after the lock), and the log lines."""

import asyncio
import dataclasses
import logging
import random
import threading

import pytest

import lbmiddleware as lb
from lbmiddleware.core.events import (
    BackendEjected,
    BackendReturned,
    MembershipChanged,
    PanicEnded,
    PanicStarted,
    ProbationPassed,
    ReturnCause,
)

A, B, C, D = "http://a:1", "http://b:1", "http://c:1", "http://d:1"


def make(clock, backends=(A, B, C), **options):
    return lb.Balancer(list(backends), policy="round_robin", timer=clock, rng=random.Random(0),
                       **options)


def listen(pool):
    events = []
    pool.subscribe(events.append)
    return events


def only(url):
    return lambda pool: [b for b in pool.backends if b.url != url]


def fail(pool, url, times=1):
    for _ in range(times):
        backend = pool.pick(exclude=only(url)(pool))
        assert backend.url == url
        pool.report(backend, ok=False)


def succeed(pool, url):
    backend = pool.pick(exclude=only(url)(pool))
    assert backend.url == url
    pool.report(backend, ok=True, latency=0.01)


def test_ejection_return_and_probation_are_events_with_durations(clock):
    pool = make(clock)
    events = listen(pool)
    fail(pool, A, 3)
    assert events == [BackendEjected(lb.Backend(A), duration=10.0, until=clock.now + 10.0,
                                     consecutive_failures=3, in_a_row=1, ejections=1,
                                     on_probation=False)]
    assert events[0].reason == "3 consecutive failures"
    clock.advance(10.0)
    pool.stats()
    assert events[1:] == [BackendReturned(lb.Backend(A), ReturnCause.TIME_UP, ejected_for=10.0,
                                          on_probation=True)]
    fail(pool, A)                                      # one strike on probation: k = 2
    assert events[2] == BackendEjected(lb.Backend(A), duration=20.0, until=clock.now + 20.0,
                                       consecutive_failures=1, in_a_row=2, ejections=2,
                                       on_probation=True)
    assert events[2].reason == "failed on probation"
    clock.advance(20.0)
    succeed(pool, A)
    assert events[3:] == [
        BackendReturned(lb.Backend(A), ReturnCause.TIME_UP, ejected_for=20.0, on_probation=True),
        ProbationPassed(lb.Backend(A)),
    ]


def test_panic_starts_and_an_answer_ends_it(clock):
    pool = make(clock)
    events = listen(pool)
    for url in (A, B, C):
        fail(pool, url, 3)
    assert [type(e) for e in events] == [BackendEjected] * 3 + [PanicStarted]
    assert events[3] == PanicStarted((lb.Backend(A), lb.Backend(B), lb.Backend(C)))
    del events[:]
    clock.advance(4.0)
    held = [pool.pick() for _ in range(3)]
    pool.report(held[1], ok=True, latency=0.01)        # B answers: the outage is over
    returned = {e.backend.url: e for e in events if isinstance(e, BackendReturned)}
    assert set(returned) == {A, B, C}
    assert all(e.cause is ReturnCause.OUTAGE_OVER for e in returned.values())
    assert all(e.ejected_for == pytest.approx(4.0, abs=1e-9) for e in returned.values())
    assert {url: e.on_probation for url, e in returned.items()} == {A: True, B: False, C: True}
    assert events[-1] == PanicEnded(answered_by=held[1],
                                    returned=tuple(e.backend for e in events[:-1]))


def test_panic_ended_by_a_timer_names_no_backend(clock):
    pool = make(clock, backends=(A, B))
    fail(pool, A, 3)
    clock.advance(5.0)
    fail(pool, B, 3)
    events = listen(pool)
    clock.advance(5.0)
    pool.stats()
    assert events == [
        BackendReturned(lb.Backend(A), ReturnCause.TIME_UP, ejected_for=10.0, on_probation=True),
        PanicEnded(answered_by=None, returned=(lb.Backend(A),)),
    ]


def test_a_return_while_down_by_its_checks_says_what_keeps_it_out(clock):
    """The event is the return it always was (its ejection is over: equal to the plain
    event); ``still_down`` says its active checks keep it out, with their progress."""
    pool = make(clock, backends=(A, B), health_check="/h", health_check_rise=2, max_fails=1)
    fail(pool, A)
    pool.report_probe(A, False, "connection refused")
    fail(pool, B)
    events = listen(pool)
    clock.advance(10.0)
    pool.stats()
    assert events == [
        BackendReturned(lb.Backend(A), ReturnCause.TIME_UP, ejected_for=10.0, on_probation=True),
        BackendReturned(lb.Backend(B), ReturnCause.TIME_UP, ejected_for=10.0, on_probation=True),
        PanicEnded(answered_by=None, returned=(lb.Backend(A), lb.Backend(B))),
    ]
    assert [e.still_down for e in events[:2]] == ["DOWN 0/2", None]
    assert events[2].still_down == (lb.Backend(A),)


def test_a_return_while_up_is_not_still_down(clock):
    pool = make(clock, backends=(A, B), health_check="/h", max_fails=1)
    fail(pool, A)
    events = listen(pool)
    clock.advance(10.0)
    pool.stats()
    assert [(type(e), e.still_down) for e in events] == [(BackendReturned, None)]


def test_membership_changes_are_events_and_the_first_members_are_not(clock):
    pool = make(clock)
    events = listen(pool)
    assert events == []
    pool.update([lb.Backend(A, 4), C, D])
    assert events == [MembershipChanged(
        added=(lb.Backend(D),), removed=(lb.Backend(B),), reweighted=(lb.Backend(A, 4),),
        members=(lb.Backend(A, 4), lb.Backend(C), lb.Backend(D)))]


def test_an_update_that_adds_a_backend_ends_panic(clock):
    pool = make(clock, backends=(A,))
    fail(pool, A, 3)
    events = listen(pool)
    pool.update([A, B])
    assert [type(e) for e in events] == [MembershipChanged, PanicEnded]
    assert events[1] == PanicEnded(answered_by=None, returned=())


def test_events_are_frozen_values():
    event = ProbationPassed(lb.Backend(A))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.backend = lb.Backend(B)


def test_listeners_run_after_the_lock_is_released(clock):
    pool = make(clock)
    free = []

    def probe(event):
        acquired = pool._lock.acquire(blocking=False)
        free.append(acquired)
        if acquired:
            pool._lock.release()

    pool.subscribe(probe)
    fail(pool, A, 3)              # ejection, from report()
    clock.advance(10.0)
    pool.release(pool.pick())     # return, from pick()
    pool.update([A, B])           # membership, from update()
    assert free == [True, True, True]


def test_a_listener_that_raises_is_logged_once_and_breaks_nothing(clock, caplog):
    pool = make(clock)
    seen = []

    def broken(event):
        raise RuntimeError("metrics backend down")

    pool.subscribe(broken)
    pool.subscribe(seen.append)
    with caplog.at_level(logging.INFO, logger="lbmiddleware"):
        fail(pool, A, 3)
    assert [type(e) for e in seen] == [BackendEjected]      # the next listener still got it
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError
    assert "BackendEjected" in errors[0].getMessage()
    assert any(r.getMessage().startswith("ejected backend") for r in caplog.records)
    assert pool.pick().url in {B, C}                     # the balancer carries on


def test_unsubscribe(clock):
    pool = make(clock)
    events = []
    unsubscribe = pool.subscribe(events.append)
    fail(pool, A, 3)
    unsubscribe()
    unsubscribe()                                        # twice is harmless
    fail(pool, B, 3)
    assert [e.backend.url for e in events] == [A]


def test_each_unsubscribe_removes_its_own_subscription_once(clock):
    pool = make(clock, backends=(A, B, C, D))
    events = []
    first = pool.subscribe(events.append)
    second = pool.subscribe(events.append)          # the same listener, twice
    fail(pool, A, 3)
    assert len(events) == 2
    first()
    first()                                          # the second time: nothing left to remove
    fail(pool, B, 3)
    assert len(events) == 3                          # the second subscription still listens
    second()
    fail(pool, C, 3)
    assert len(events) == 3


def test_a_listener_raising_a_base_exception_in_a_pick_leaves_nothing_in_flight(clock):
    # A listener awaiting a cancelled future raises CancelledError while pick() delivers:
    # the caller never gets the backend, so the pick must not stay counted; the other
    # listeners still get that event, and the events after it go out with a later call.
    pool = make(clock)
    fail(pool, A, 3)
    fail(pool, B, 3)
    raised, seen = [], []

    def cancelled(event):
        if not raised:
            raised.append(event)
            raise asyncio.CancelledError

    pool.subscribe(cancelled)
    pool.subscribe(seen.append)
    clock.advance(10.0)                    # both ejections are over: the pick returns A and B
    with pytest.raises(asyncio.CancelledError):
        pool.pick()
    assert [e.backend.url for e in seen] == [A]          # the event it was delivering
    assert [row["in_flight"] for row in pool.stats()] == [0, 0, 0]
    assert [e.backend.url for e in seen] == [A, B]       # the rest, with the next call
    assert all(isinstance(e, BackendReturned) for e in seen)


def test_a_listener_raising_a_base_exception_in_a_report_loses_no_event(clock):
    pool = make(clock)
    seen = []

    def interrupted(event):
        raise KeyboardInterrupt

    unsubscribe = pool.subscribe(interrupted)
    pool.subscribe(seen.append)
    fail(pool, A, 2)
    backend = pool.pick(exclude=[B, C])
    with pytest.raises(KeyboardInterrupt):
        pool.report(backend, ok=False)                   # ejects A: its report is applied
    unsubscribe()
    assert [type(e) for e in seen] == [BackendEjected]
    assert [row["in_flight"] for row in pool.stats()] == [0, 0, 0]
    fail(pool, B, 3)                                     # delivery goes on as before
    assert [e.backend.url for e in seen] == [A, B]


def test_a_listener_may_call_back_into_the_pool(clock):
    pool = make(clock)
    events = []

    def listener(event):
        events.append(event)
        if isinstance(event, BackendEjected) and event.backend.url == A:
            fail(pool, B, 3)               # ejects B from inside the delivery of A's event
            events.append(pool.stats()[1]["state"])

    pool.subscribe(listener)
    fail(pool, A, 3)
    # B's ejection is delivered after A's, once the listener has returned: in order.
    assert [getattr(e, "backend", e) for e in events] == [lb.Backend(A), "ejected", lb.Backend(B)]


def test_events_keep_their_order_when_another_thread_is_delivering(clock):
    pool = make(clock)
    delivering, other_done = threading.Event(), threading.Event()
    order = []

    def slow(event):
        order.append(event.backend.url)
        if event.backend.url == A:
            delivering.set()
            assert other_done.wait(10)     # B is ejected meanwhile, by another thread

    pool.subscribe(slow)
    first = threading.Thread(target=fail, args=(pool, A, 3))
    first.start()
    assert delivering.wait(10)
    fail(pool, B, 3)                       # returns at once: the first thread delivers its event
    assert order == [A]
    other_done.set()
    first.join(10)
    assert order == [A, B]


def test_events_of_a_pick_that_raises_are_delivered_all_the_same(clock):
    pool = make(clock, backends=(A, B))
    fail(pool, A, 3)
    events = listen(pool)
    clock.advance(10.0)
    with pytest.raises(lb.NoHealthyBackend):
        pool.pick(exclude=[A, B])
    assert [type(e) for e in events] == [BackendReturned]


def test_report_later_under_the_lock_delivers_with_the_next_call(clock):
    pool = make(clock)
    events = listen(pool)
    held = [pool.pick(exclude=only(A)(pool)) for _ in range(3)]
    with pool._lock:                        # as when a finalizer runs inside pick()
        for backend in held:
            pool.report_later(backend, ok=False)
    assert events == []
    pool.stats()
    assert [type(e) for e in events] == [BackendEjected]


def test_the_log_lines_of_an_outage_show_each_way_out_at_the_level_of_the_way_in(clock, caplog):
    pool = make(clock)
    with caplog.at_level(logging.INFO, logger="lbmiddleware"):
        fail(pool, A, 3)
        clock.advance(10.0)
        fail(pool, A)
        fail(pool, B, 3)
        fail(pool, C, 3)
        held = pool.pick(exclude=[A, B])
        pool.report(held, ok=True, latency=0.01)
        pool.update([A, B, C, D])           # one INFO line for the membership
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "lbmiddleware"]
    ejected = "ejected backend {} for {}: {} (ejection {} in a row)"
    assert lines == [
        (logging.WARNING, ejected.format(A, "10s", "3 consecutive failures", 1)),
        (logging.WARNING, f"backend {A} returns on probation after 10s ejected"),
        (logging.WARNING, ejected.format(A, "20s", "failed on probation", 2)),
        (logging.WARNING, ejected.format(B, "10s", "3 consecutive failures", 1)),
        (logging.WARNING, ejected.format(C, "10s", "3 consecutive failures", 1)),
        (logging.WARNING, "every backend is ejected: panic mode, picking among all 3"),
        (logging.WARNING, f"backend {C} answered while every backend was ejected: 3 backends "
                          "return; panic mode over"),
        (logging.INFO, f"members changed by update(): added 1 ({D}); 4 now"),
    ]
