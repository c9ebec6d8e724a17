"""The pool's log lines (core/events.py's log_event): one per event, each way back at the level
of its way out, every end of a panic, and nothing on stderr for an application that
configured no logging (the package's NullHandler)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import (
    BackendDown,
    BackendEjected,
    BackendReturned,
    BackendUp,
    DrainEnded,
    DrainStarted,
    MembershipChanged,
    PanicEnded,
    PanicStarted,
    ProbationPassed,
    ReturnCause,
    SourceFailed,
    SourceRecovered,
    log_event,
)

A, B, C, D = (lb.Backend(f"http://{name}:1") for name in "abcd")
DNS = "dns+http://orders:8080"


def lines(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "lbmiddleware"]


@pytest.mark.parametrize(("event", "level", "text"), [
    (BackendEjected(A, 10.0, 1010.0, 3, 1, 1, False), logging.WARNING,
     "ejected backend http://a:1 for 10s: 3 consecutive failures (ejection 1 in a row)"),
    (BackendReturned(A, ReturnCause.TIME_UP, 10.0, True), logging.WARNING,
     "backend http://a:1 returns on probation after 10s ejected"),
    (BackendReturned(A, ReturnCause.PROBE_PASSED, 4.0, False), logging.WARNING,
     "backend http://a:1 returns after 4s ejected: an active health check passed"),
    (BackendReturned(A, ReturnCause.OUTAGE_OVER, 3.0, False, in_panic=True), logging.WARNING,
     "backend http://a:1 returns after 3s ejected: it answered in panic mode (still on: no "
     "backend is usable yet)"),
    (BackendReturned(A, ReturnCause.OUTAGE_OVER, 3.0, True, in_panic=True), logging.WARNING,
     "backend http://a:1 returns on probation after 3s ejected: a backend answered in panic "
     "mode (still on: no backend is usable yet)"),
    (BackendReturned(A, ReturnCause.TIME_UP, 30.0, True, still_down="DOWN 0/2"),
     logging.WARNING, "backend http://a:1: ejection over after 30s, still down by its health "
     "checks (DOWN 0/2): out until they pass"),
    (BackendReturned(A, ReturnCause.PROBE_PASSED, 4.0, False, still_down="DOWN 1/2"),
     logging.WARNING, "backend http://a:1: ejection over after 4s (an active health check "
     "passed), still down by its health checks (DOWN 1/2): out until they pass"),
    (BackendReturned(A, ReturnCause.TIME_UP, 10.0, True, still_down="pending"),
     logging.WARNING, "backend http://a:1: ejection over after 10s, still waiting for its first "
     "health check: out until one passes"),
    (BackendReturned(A, ReturnCause.OUTAGE_OVER, 3.0, False, in_panic=True,
                     still_down="DOWN 0/1"), logging.WARNING,
     "backend http://a:1: ejection over after 3s (it answered in panic mode), still down by its "
     "health checks (DOWN 0/1); panic mode goes on: no backend is usable yet"),
    (BackendReturned(A, ReturnCause.OUTAGE_OVER, 3.0, True, in_panic=True,
                     still_down="DOWN 0/1"), logging.WARNING,
     "backend http://a:1: ejection over after 3s (a backend answered in panic mode), still down "
     "by its health checks (DOWN 0/1); panic mode goes on: no backend is usable yet"),
    (ProbationPassed(A), logging.INFO, "backend http://a:1 passed its probation: healthy again"),
    (PanicStarted((A, B), ejected=(A, B)), logging.WARNING,
     "every backend is ejected: panic mode, picking among all 2"),
    (PanicEnded(A, (A, B)), logging.WARNING,
     "backend http://a:1 answered while every backend was ejected: 2 backends return; "
     "panic mode over"),
    (PanicEnded(None, (A, B, C, D)), logging.WARNING,
     "panic mode over: 4 backends return, their ejection time over "
     "(http://a:1, http://b:1, http://c:1 +1 more)"),
    (PanicEnded(A, (A,)), logging.WARNING,
     "backend http://a:1 answered while every backend was ejected: 1 backend returns; "
     "panic mode over"),
    (PanicEnded(A, (A, B, C), still_down=(B,)), logging.WARNING,
     "backend http://a:1 answered while every backend was ejected: 2 backends return, 1 still "
     "down by its health checks; panic mode over"),
    (PanicEnded(None, (A, B, C), still_down=(B, C)), logging.WARNING,
     "panic mode over: 1 backend returns, its ejection time over (http://a:1); 2 still down by "
     "their health checks"),
    (PanicEnded(None, ()), logging.WARNING, "panic mode over: a backend is usable again"),
    (BackendDown(A, "status 503"), logging.WARNING,
     "backend http://a:1 is down: health check failed (status 503)"),
    (BackendUp(A, "status 200"), logging.WARNING,
     "backend http://a:1 is up: health check passed (status 200)"),
    (DrainStarted(A, 2, "removed"), logging.INFO,
     "backend http://a:1 is draining (removed): 2 requests in flight"),
    (DrainEnded(A, False, 0), logging.INFO, "backend http://a:1 drained and left"),
    (DrainEnded(A, True, 1), logging.INFO,
     "backend http://a:1 left after its drain timeout, 1 requests still in flight"),
    (MembershipChanged((B,), (), (), (A, B), DNS), logging.INFO,
     "members changed by source dns+http://orders:8080: added 1 (http://b:1); 2 now"),
    (SourceFailed(DNS, "SERVFAIL", 1.6, kept=2), logging.WARNING,
     "source dns+http://orders:8080 failed: SERVFAIL (keeping its last 2 backends; "
     "retry in 1.6s)"),
    (SourceFailed(DNS, "timeout", 0.5, kept=1), logging.WARNING,
     "source dns+http://orders:8080 failed: timeout (keeping its last backend; retry in 0.5s)"),
    (SourceRecovered(DNS, 12.0), logging.WARNING,
     "source dns+http://orders:8080 answers again after 12s"),
])
def test_each_event_is_one_line_at_its_level(caplog, event, level, text):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    log_event(event)
    assert lines(caplog) == [(level, text)]


def test_an_outage_ended_by_time_logs_its_end(clock, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    pool = Balancer([A, B], timer=clock, max_fails=1, fail_timeout=10.0)
    for backend in (A, B):
        pool.report(pool.pick(exclude=[b for b in (A, B) if b != backend]), ok=False)
    clock.advance(10.0)
    pool.pick()
    logged = lines(caplog)
    assert logged[2] == (logging.WARNING, "every backend is ejected: panic mode, picking among "
                                          "all 2")
    assert logged[3:] == [
        (logging.WARNING, "backend http://a:1 returns on probation after 10s ejected"),
        (logging.WARNING, "backend http://b:1 returns on probation after 10s ejected"),
        (logging.WARNING, "panic mode over: 2 backends return, their ejection time over "
                          "(http://a:1, http://b:1)"),
    ]


def test_an_outage_ended_by_a_probe_logs_its_end(clock, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    pool = Balancer([A], timer=clock, health_check="/healthz", health_check_rise=1)
    pool.report_probe(A, False, "status 503")
    pool.report_probe(A, True, "status 200")
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1 is down: health check failed (status 503)"),
        (logging.WARNING, "every backend is down by its health checks: panic mode, picking "
                          "among all 1"),
        (logging.WARNING, "backend http://a:1 is up: health check passed (status 200)"),
        (logging.WARNING, "panic mode over: a backend is usable again"),
    ]


def test_an_ejection_ended_by_an_answer_while_the_panic_goes_on_logs_its_end(clock, caplog):
    """A is ejected and both backends are down by their checks: panic. A answers a pick made
    in panic, which ends every ejection at once; but the panic goes on (both still down), so
    no PanicEnded line says they returned: the returns say it themselves."""
    pool = Balancer([A, B], timer=clock, health_check="/h", health_check_fall=1, max_fails=1,
                    policy="round_robin")
    for backend in (A, B):
        pool.report_probe(backend, True, "status 200")
    pool.report(pool.pick(exclude=[B]), ok=False)           # A ejected
    clock.advance(1.0)
    pool.report(pool.pick(exclude=[A]), ok=False)           # B ejected
    pool.report_probe(A, False, "status 503")
    pool.report_probe(B, False, "status 503")               # and both down: panic
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(2.0)
    pool.report(pool.pick(exclude=[B]), latency=0.01)       # A answers: ejections over
    assert pool.pool_stats()["panic"]
    assert [row["ejection_left"] for row in pool.stats()] == [None, None]
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1: ejection over after 3s (it answered in panic "
                          "mode), still down by its health checks (DOWN 0/2); panic mode goes "
                          "on: no backend is usable yet"),
        (logging.WARNING, "backend http://b:1: ejection over after 2s (a backend answered in "
                          "panic mode), still down by its health checks (DOWN 0/2); panic mode "
                          "goes on: no backend is usable yet"),
    ]


# -- an ejection that ends while the backend is down by its active checks ------------------------

def checked_pool(clock, backends=(A, B), **options):
    """A pool with active checks (rise 2) whose first failure ejects, for 30 s."""
    return Balancer(list(backends), timer=clock, health_check="/h", health_check_rise=2,
                    max_fails=1, fail_timeout=30.0, policy="round_robin", **options)


def eject(pool, backend):
    others = [b for b in pool.backends if b != backend]
    picked = pool.pick(exclude=others)
    assert picked == backend
    pool.report(picked, ok=False)


def test_an_ejection_over_while_down_by_its_checks_is_no_return_and_the_up_line_is(
        clock, caplog):
    """A died: ejected by its failures and down by its probes. When its ejection time runs out
    it is still down and gets no traffic, so the line says the ejection is over and what keeps
    it out; its return to traffic is the up line that comes when its checks pass."""
    pool = checked_pool(clock)
    eject(pool, A)
    pool.report_probe(A, False, "connection refused")
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(30.0)
    assert {pool.pick().url for _ in range(4)} == {B.url}
    pool.report_probe(A, True, "status 200")
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1: ejection over after 30s, still down by its health "
                          "checks (DOWN 0/2): out until they pass"),
    ]
    pool.report_probe(A, True, "status 200")
    assert lines(caplog)[1:] == [
        (logging.WARNING, "backend http://a:1 is up: health check passed (status 200)"),
    ]
    assert {pool.pick().url for _ in range(4)} == {A.url, B.url}


def test_a_pass_that_ends_an_ejection_short_of_rise_says_it_is_still_down(clock, caplog):
    pool = checked_pool(clock)
    eject(pool, A)
    pool.report_probe(A, False, "connection refused")
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(4.0)
    pool.report_probe(A, True, "status 200")          # 1 of the 2 passes rise needs
    pool.report_probe(A, True, "status 200")
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1: ejection over after 4s (an active health check "
                          "passed), still down by its health checks (DOWN 1/2): out until they "
                          "pass"),
        (logging.WARNING, "backend http://a:1 is up: health check passed (status 200)"),
    ]


def test_an_ejection_over_while_pending_its_first_check_says_so(clock, caplog):
    """B joined (pending its first probe) and was ejected by a retry's pick, which reaches
    the backends that are out once every usable one was tried."""
    pool = checked_pool(clock, backends=(A, C))
    pool.update([A, B, C])
    pool.report_probe(A, False, "connection refused")
    pool.report(pool.pick(exclude=[A, C]), ok=False)
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(30.0)
    pool.stats()
    assert lines(caplog) == [
        (logging.WARNING, "backend http://b:1: ejection over after 30s, still waiting for its "
                          "first health check: out until one passes"),
    ]


def test_a_pool_of_joiners_only_picks_a_pending_one_back_on_probation(clock, caplog):
    """While every member waits for its first probe they are all picked: an ejection of one
    that ends then is a return (it is picked again)."""
    pool = Balancer(DNS, timer=clock, health_check="/h", max_fails=1, fail_timeout=10.0)
    pool.update([], source=DNS)
    pool.update([A, B], source=DNS)
    eject(pool, A)
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(10.0)
    assert {pool.pick().url for _ in range(4)} == {A.url, B.url}
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1 returns on probation after 10s ejected")]


def test_a_panic_ended_by_ejections_over_counts_apart_those_still_down(clock, caplog):
    pool = checked_pool(clock)
    eject(pool, A)
    eject(pool, B)                                    # every backend ejected: panic
    pool.report_probe(B, False, "connection refused")
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(30.0)
    pool.stats()
    assert lines(caplog) == [
        (logging.WARNING, "backend http://a:1 returns on probation after 30s ejected"),
        (logging.WARNING, "backend http://b:1: ejection over after 30s, still down by its health "
                          "checks (DOWN 0/2): out until they pass"),
        (logging.WARNING, "panic mode over: 1 backend returns, its ejection time over "
                          "(http://a:1); 1 still down by its health checks"),
    ]


def test_a_panic_ended_by_an_answer_counts_apart_those_still_down(clock, caplog):
    pool = checked_pool(clock)
    eject(pool, A)
    eject(pool, B)
    pool.report_probe(B, False, "connection refused")
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    caplog.clear()
    clock.advance(5.0)
    pool.report(pool.pick(exclude=[B]), latency=0.01)    # A answers in panic
    assert lines(caplog) == [
        (logging.WARNING, "backend http://b:1: ejection over after 5s (a backend answered in "
                          "panic mode), still down by its health checks (DOWN 0/2): out until "
                          "they pass"),
        (logging.WARNING, "backend http://a:1 answered while every backend was ejected: 1 "
                          "backend returns, 1 still down by its health checks; panic mode over"),
    ]


def test_the_package_logger_has_a_null_handler():
    handlers = logging.getLogger("lbmiddleware").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_an_application_without_logging_configured_sees_nothing_on_stderr():
    # Without the NullHandler, Python's last resort printed a bare "ejected backend ..." line.
    script = ("import lbmiddleware as lb\n"
              "pool = lb.Balancer(['http://a:1', 'http://b:1'], max_fails=1)\n"
              "for _ in range(2):\n"
              "    pool.report(pool.pick(), ok=False)\n"
              "assert pool.pool_stats()['panic']\n"
              "print('done')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "done\n", "")
