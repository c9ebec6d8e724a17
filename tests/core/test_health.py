"""Passive health on a fake clock: ejection, growing ejection time, probation, panic, logs."""

import logging
import random

import pytest

import lbmiddleware as lb

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def make(clock, backends=(A, B, C), **options):
    return lb.Balancer(list(backends), policy="round_robin", timer=clock, rng=random.Random(0),
                       **options)


def fail(pool, url, times=1):
    for _ in range(times):
        backend = pool.pick(exclude=[b for b in pool.backends if b.url != url])
        assert backend.url == url
        pool.report(backend, ok=False)


def succeed(pool, url):
    backend = pool.pick(exclude=[b for b in pool.backends if b.url != url])
    assert backend.url == url
    pool.report(backend, ok=True, latency=0.01)


def state(pool, url):
    return next(s for s in pool.stats() if s["url"] == url)


def picks(pool, n=30):
    out = set()
    for _ in range(n):
        with pool.attempt() as backend:
            out.add(backend.url)
    return out


def test_ejected_after_max_fails_consecutive(clock):
    pool = make(clock)
    fail(pool, A, 2)
    assert state(pool, A)["state"] == "healthy"
    assert state(pool, A)["consecutive_failures"] == 2
    fail(pool, A)
    assert state(pool, A)["state"] == "ejected"
    assert state(pool, A)["ejected_until"] == clock.now + 10.0
    assert picks(pool) == {B, C}


def test_success_resets_the_count(clock):
    pool = make(clock)
    fail(pool, A, 2)
    succeed(pool, A)
    fail(pool, A, 2)
    assert state(pool, A)["state"] == "healthy"
    assert state(pool, A)["failures"] == 4


def test_ejection_times_grow_10_20_30_then_cap(clock):
    pool = make(clock, max_ejection_time=45.0)
    fail(pool, A, 3)
    expected = [10.0, 20.0, 30.0, 40.0, 45.0, 45.0]
    for duration in expected:
        start = clock.now
        assert state(pool, A)["ejected_until"] == pytest.approx(start + duration)
        clock.advance(duration - 0.001)
        assert A not in picks(pool)                      # still out just before the end
        clock.advance(0.001)
        assert state(pool, A)["state"] == "probation"    # back exactly on time
        fail(pool, A)                                    # the first failure on probation
        assert state(pool, A)["state"] == "ejected"
    assert state(pool, A)["ejections"] == len(expected) + 1


def test_probation_success_ends_it(clock):
    pool = make(clock)
    fail(pool, A, 3)
    clock.advance(10.0)
    assert state(pool, A)["state"] == "probation"
    succeed(pool, A)
    assert state(pool, A)["state"] == "healthy"
    fail(pool, A, 2)                                    # no longer one-strike
    assert state(pool, A)["state"] == "healthy"


def test_multiplier_falls_one_step_per_fail_timeout_in_rotation(clock):
    pool = make(clock)
    fail(pool, A, 3)                     # k=1: 10 s
    clock.advance(10.0)
    fail(pool, A)                        # k=2: 20 s
    clock.advance(20.0)
    succeed(pool, A)
    clock.advance(10.0)                  # one fail_timeout in rotation: k 2 -> 1
    fail(pool, A, 3)
    assert state(pool, A)["ejected_until"] == pytest.approx(clock.now + 20.0)   # k back to 2
    clock.advance(20.0)
    succeed(pool, A)
    clock.advance(45.0)                  # four fail_timeouts: k 2 -> 0
    fail(pool, A, 3)
    assert state(pool, A)["ejected_until"] == pytest.approx(clock.now + 10.0)


def test_panic_when_all_ejected_then_heals_at_once(clock, caplog):
    pool = make(clock)
    with caplog.at_level(logging.WARNING, logger="lbmiddleware"):
        for url in (A, B, C):
            fail(pool, url, 3)
    assert all(s["state"] == "ejected" for s in pool.stats())
    assert any("panic" in r.getMessage() for r in caplog.records)
    # Every backend is ejected: the balancer still picks among all of them.
    held = [pool.pick() for _ in range(3)]
    assert {b.url for b in held} == {A, B, C}
    assert {s["state"] for s in pool.stats()} == {"ejected"}
    pool.report(held[1], ok=False)        # a failure in panic heals nothing
    assert {s["state"] for s in pool.stats()} == {"ejected"}
    # The first answer ends the outage at once: it is healthy, the others on probation.
    pool.report(held[0], ok=True, latency=0.01)
    assert {s["url"]: s["state"] for s in pool.stats()} == {
        A: "healthy", B: "probation", C: "probation"}
    pool.release(held[2])
    assert picks(pool) == {A, B, C}
    assert {s["state"] for s in pool.stats()} == {"healthy"}


def test_one_log_line_per_ejection_and_return(clock, caplog):
    pool = make(clock)
    with caplog.at_level(logging.INFO, logger="lbmiddleware"):
        fail(pool, A, 3)
        fail(pool, A, 2)                 # late failures while ejected: no new line
        clock.advance(10.0)
        picks(pool, 5)
        picks(pool, 5)
    lines = [r for r in caplog.records if r.name == "lbmiddleware"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert "passed its probation" in lines[2].getMessage()
    assert A in lines[0].getMessage() and "10s" in lines[0].getMessage()
    assert "3 consecutive failures" in lines[0].getMessage()
    assert A in lines[1].getMessage() and "probation" in lines[1].getMessage()


def test_failures_while_ejected_do_not_extend(clock):
    pool = make(clock)
    held = [pool.pick(exclude=[lb.Backend(B), lb.Backend(C)]) for _ in range(5)]
    for backend in held[:3]:
        pool.report(backend, ok=False)
    until = state(pool, A)["ejected_until"]
    clock.advance(1.0)
    for backend in held[3:]:
        pool.report(backend, ok=False)
    assert state(pool, A)["ejected_until"] == until
    assert state(pool, A)["in_flight"] == 0


def test_max_fails_zero_never_ejects(clock):
    pool = make(clock, max_fails=0)
    fail(pool, A, 50)
    assert state(pool, A)["state"] == "healthy"


def test_all_excluded_raises_but_ejected_are_tried_before(clock):
    pool = make(clock)
    fail(pool, A, 3)
    # B and C tried already: the ejected A is still better than giving up.
    assert pool.pick(exclude=[lb.Backend(B), lb.Backend(C)]).url == A
    with pytest.raises(lb.NoHealthyBackend):
        pool.pick(exclude=[lb.Backend(A), lb.Backend(B), lb.Backend(C)])


def test_attempt_reports_exception_as_failure(clock):
    pool = make(clock, backends=[A])
    for _ in range(3):
        with pytest.raises(OSError):
            with pool.attempt():
                raise OSError("connection refused")
    assert state(pool, A)["state"] == "ejected"
    assert state(pool, A)["in_flight"] == 0


def test_a_request_sent_before_the_return_cannot_re_eject(clock):
    pool = make(clock)
    old = pool.pick(exclude=[lb.Backend(B), lb.Backend(C)])      # sent before the ejection
    fail(pool, A, 3)
    clock.advance(10.0)
    assert state(pool, A)["state"] == "probation"
    clock.advance(5.0)                                           # it times out only now
    pool.report(old, ok=False, latency=15.0)
    assert state(pool, A)["state"] == "probation"                # stale: not ejected again
    assert state(pool, A)["failures"] == 4
    fail(pool, A)                                                # a fresh failure still is
    assert state(pool, A)["ejected_until"] == pytest.approx(clock.now + 20.0)


def test_multiplier_stops_at_the_cap(clock):
    pool = make(clock, fail_timeout=10.0, max_ejection_time=30.0)
    fail(pool, A, 3)
    for _ in range(10):                      # ten more ejections in a row, all capped at 30 s
        clock.advance(30.0)
        fail(pool, A)
    clock.advance(30.0)
    succeed(pool, A)
    clock.advance(30.0)                      # three fail_timeouts in rotation: k 3 -> 0
    fail(pool, A, 3)
    assert state(pool, A)["ejected_until"] == pytest.approx(clock.now + 10.0)


def test_log_lines_are_written_after_the_lock_is_released(clock):
    pool = make(clock)
    free = []

    class Probe(logging.Handler):
        def emit(self, record):
            acquired = pool._lock.acquire(blocking=False)
            free.append(acquired)
            if acquired:
                pool._lock.release()

    handler = Probe(level=logging.INFO)
    log = logging.getLogger("lbmiddleware")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        fail(pool, A, 3)                 # ejection, written by report()
        clock.advance(10.0)
        pool.stats()                     # return, written by stats()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert free == [True, True]
