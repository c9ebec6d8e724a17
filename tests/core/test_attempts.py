"""The attempt loop (core/attempts.py) driven by itself: a fake balancer, fake outcomes, no I/O.

Every front-end (the requests adapter, the ASGI exchange, the simulator) runs this loop; what
is retried, on which backend, and which outcome each backend gets is decided here.
"""

from __future__ import annotations

import gc
import logging
import random
import threading

import pytest

import lbmiddleware as lb
from lbmiddleware.core.attempts import Attempts, Completion, Outcome, RetryRule, broken_body

A, B, C, D = (lb.Backend(f"http://{name}:1") for name in "abcd")

OK = Outcome(ok=True, latency=0.01, status=200)
REFUSED = Outcome(ok=False, latency=0.001, sent=False)
RESET = Outcome(ok=False, latency=0.02)
TIMED_OUT = Outcome(ok=False, latency=1.0, timeout=True)
UNAVAILABLE = Outcome(ok=False, latency=0.03, status=503)


class FakeBalancer:
    """Picks the listed backends in order (skipping excluded ones) and records every call."""

    def __init__(self, *backends: lb.Backend) -> None:
        self.backends = list(backends)
        self.calls: list[tuple] = []
        self.extras: list[tuple] = []     # per report: (bytes_sent, bytes_received, status)
        self.in_flight = 0
        self.refunds: list[bool] = []     # refund_retry(picked) calls

    budget = None        # retries the fake's budget still holds (None: no budget)
    usual: dict = {}     # url -> usual latency

    def spend_retry(self, tried=()):
        if self.budget is None:
            return True
        if self.budget <= 0:
            self.calls.append(("budget spent",))
            return False
        self.budget -= 1
        return True

    def usual_latency(self, backend):
        return self.usual.get(backend.url)

    def refund_retry(self, picked=False):
        self.refunds.append(picked)
        if self.budget is not None:
            self.budget += 1

    def begin(self, key=None, exclude=(), prefer=None):
        for backend in self.backends:
            if backend not in exclude:
                self.calls.append(("pick", backend.url[7], key))
                self.in_flight += 1
                return Completion(self, backend)
        self.calls.append(("none", key))
        raise lb.NoHealthyBackend("every backend was tried")

    def report(self, backend, ok=True, latency=None, *, bytes_sent=0, bytes_received=0,
               status=None):
        self.in_flight -= 1
        self.calls.append(("report", backend.url[7], ok, latency))
        self.extras.append((bytes_sent, bytes_received, status))

    def report_later(self, backend, ok=True, latency=None, *, bytes_sent=0, bytes_received=0,
                     status=None):
        self.in_flight -= 1
        self.calls.append(("report_later", backend.url[7], ok, latency))
        self.extras.append((bytes_sent, bytes_received, status))

    def release(self, backend):
        self.in_flight -= 1
        self.calls.append(("release", backend.url[7]))

    def release_later(self, backend):
        self.in_flight -= 1
        self.calls.append(("release_later", backend.url[7]))

    def ends(self):
        return [call for call in self.calls if call[0] not in ("pick", "none")]


def run(balancer, rule, method, outcomes, *, replayable=True, key=None):
    """Drive the loop as a front-end does: one outcome per attempt, in order; the last
    attempt (the client's answer) is ended after the loop. Returns the backends tried."""
    attempts = Attempts(balancer, rule, method, key=key)
    attempts.start()
    with attempts:
        for outcome in outcomes:
            if outcome.ok or attempts.retry(outcome, replayable=replayable) is None:
                break
        attempts.end(outcome)
    return [b.url[7] for b in attempts.tried]


# -- the retry rule --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST",
                                    "PATCH"])
def test_connect_failures_are_retried_for_every_method(method):
    assert RetryRule().allows(method, REFUSED, attempts=1, replayable=False)


def test_after_sending_only_idempotent_replayable_requests_are_retried():
    rule = RetryRule()
    assert rule.allows("GET", RESET, attempts=1)
    assert rule.allows("put", TIMED_OUT, attempts=1)
    assert rule.allows("DELETE", UNAVAILABLE, attempts=1)
    assert not rule.allows("PUT", RESET, attempts=1, replayable=False)
    assert not rule.allows("POST", RESET, attempts=1)
    assert not rule.allows("PATCH", UNAVAILABLE, attempts=1)
    opted = RetryRule(retry_non_idempotent=True)
    assert opted.allows("POST", RESET, attempts=1)
    assert not opted.allows("POST", RESET, attempts=1, replayable=False)


def test_the_rule_counts_retries_and_never_retries_a_success():
    rule = RetryRule(retries=2)
    assert rule.allows("GET", RESET, attempts=2)
    assert not rule.allows("GET", RESET, attempts=3)
    assert not RetryRule(retries=0).allows("GET", REFUSED, attempts=1)
    assert not rule.allows("GET", OK, attempts=1)


def test_the_rule_says_which_statuses_fail():
    rule = RetryRule(fail_statuses=[500, 503])
    assert rule.fail_statuses == frozenset({500, 503})
    assert rule.outcome(500, 0.2) == Outcome(ok=False, latency=0.2, status=500)
    assert rule.outcome(502, 0.2, bytes_sent=3, bytes_received=7) == Outcome(
        ok=True, latency=0.2, status=502, bytes_sent=3, bytes_received=7)
    assert RetryRule().outcome(404).ok and RetryRule().outcome(500).ok    # 4xx never; 500 if listed


def test_the_rule_is_an_immutable_value_with_a_compact_repr():
    rule = RetryRule()
    assert rule == RetryRule(2, frozenset({504, 503, 502}), False)
    assert hash(rule) == hash(RetryRule())
    with pytest.raises(AttributeError):
        rule.retries = 5
    assert repr(rule) == "RetryRule(retries=2, fail_statuses={502, 503, 504})"
    assert repr(RetryRule(0, {500}, True)) == (
        "RetryRule(retries=0, fail_statuses={500}, retry_non_idempotent=True)")
    for bad in (-1, True, "2"):
        with pytest.raises(lb.ConfigError, match="retries has value"):
            RetryRule(retries=bad)


def test_an_outcome_is_frozen_and_counts_bytes():
    outcome = Outcome(ok=True, latency=0.1, status=200, bytes_sent=10, bytes_received=20)
    with pytest.raises(AttributeError):
        outcome.ok = False
    assert (Outcome(ok=False).sent, Outcome(ok=False).timeout, Outcome(ok=False).bytes_sent) == (
        True, False, 0)
    assert Outcome(ok=False).error is None
    assert Outcome(ok=False, sent=False, error="connection refused").error == "connection refused"
    assert len(RetryRule().outcome(200)) == len(Outcome._fields) == 8


def test_a_completion_passes_the_outcomes_bytes_and_status_on_either_path():
    balancer = FakeBalancer(A)
    balancer.begin().done(Outcome(ok=True, latency=0.1, status=200, bytes_sent=10,
                                  bytes_received=20))
    balancer.begin().done(Outcome(ok=False, latency=0.2, status=503, bytes_sent=3), wait=False)
    assert balancer.extras == [(10, 20, 200), (3, 0, 503)]
    assert [call[0] for call in balancer.ends()] == ["report", "report_later"]


# -- the loop --------------------------------------------------------------------------------

def test_a_success_is_one_attempt_reported_once():
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(), "GET", [OK], key="k") == ["a"]
    assert balancer.calls == [("pick", "a", "k"), ("report", "a", True, 0.01)]


def test_retries_are_counted():
    balancer = FakeBalancer(A, B, C, D)
    assert run(balancer, RetryRule(retries=2), "GET", [RESET] * 4) == ["a", "b", "c"]
    assert balancer.ends() == [("report", url, False, 0.02) for url in "abc"]
    assert balancer.in_flight == 0
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(retries=0), "GET", [REFUSED, OK]) == ["a"]


def test_a_connect_failure_is_retried_for_post_but_a_sent_failure_is_not():
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(), "POST", [REFUSED, OK]) == ["a", "b"]
    assert balancer.ends() == [("report", "a", False, 0.001), ("report", "b", True, 0.01)]
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(), "POST", [RESET, OK]) == ["a"]
    assert balancer.ends() == [("report", "a", False, 0.02)]
    assert balancer.in_flight == 0


def test_a_failure_without_a_response_is_reported_before_the_next_pick():
    balancer = FakeBalancer(A, B)
    run(balancer, RetryRule(), "GET", [TIMED_OUT, OK])
    assert balancer.calls == [("pick", "a", None), ("report", "a", False, 1.0),
                              ("pick", "b", None), ("report", "b", True, 0.01)]


def test_a_failure_status_is_retried_then_returned_when_retries_run_out():
    balancer = FakeBalancer(A, B, C)
    attempts = Attempts(balancer, RetryRule(retries=1), "GET")
    attempts.start()
    assert attempts.retry(UNAVAILABLE) is B
    # A failure with a response is reported once the next backend is picked...
    assert balancer.calls == [("pick", "a", None), ("pick", "b", None),
                              ("report", "a", False, 0.03)]
    # ...and when no attempt follows, it stays open: the client gets it, then it ends.
    assert attempts.retry(UNAVAILABLE) is None
    assert attempts.completion.backend is B and not attempts.completion.ended
    assert balancer.in_flight == 1
    attempts.end(UNAVAILABLE)
    assert balancer.ends()[-1] == ("report", "b", False, 0.03)
    assert balancer.in_flight == 0


def test_a_failure_status_stays_open_when_the_pool_runs_out():
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(retries=5), "GET")
    attempts.start()
    assert attempts.retry(UNAVAILABLE) is B
    assert attempts.retry(UNAVAILABLE) is None
    assert balancer.calls[-1] == ("none", None)
    assert not attempts.completion.ended
    attempts.end(UNAVAILABLE, wait=False)       # e.g. from a streamed body's finalizer
    assert balancer.ends() == [("report", "a", False, 0.03), ("report_later", "b", False, 0.03)]


def test_a_failure_without_a_response_is_reported_even_when_the_pool_runs_out():
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(retries=5), "GET", [RESET, REFUSED, OK]) == ["a", "b"]
    assert balancer.ends() == [("report", "a", False, 0.02), ("report", "b", False, 0.001)]
    assert balancer.in_flight == 0          # end() after the loop found it ended: ignored


def test_never_the_same_backend_twice():
    picks = []

    class Recording(FakeBalancer):
        def begin(self, key=None, exclude=(), prefer=None):
            picks.append(list(exclude))
            return super().begin(key, exclude)

    balancer = Recording(A, B, C)
    run(balancer, RetryRule(retries=9), "GET", [RESET] * 9)
    assert picks == [[], [A], [A, B], [A, B, C]]


def test_no_healthy_backend_on_the_first_pick_surfaces():
    balancer = FakeBalancer()
    attempts = Attempts(balancer, RetryRule(), "GET")
    with pytest.raises(lb.NoHealthyBackend):
        attempts.start()
    assert attempts.tried == []
    with pytest.raises(RuntimeError, match="start"):
        attempts.completion
    attempts.end(OK)                     # nothing to end: ignored
    attempts.release()
    assert balancer.ends() == []


def test_a_body_that_cannot_be_sent_again_is_not_retried_after_sending():
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(), "PUT", [RESET, OK], replayable=False) == ["a"]
    balancer = FakeBalancer(A, B)
    assert run(balancer, RetryRule(), "PUT", [REFUSED, OK], replayable=False) == ["a", "b"]


def test_never_retried_once_the_client_got_a_byte():
    """An attempt ended by its front-end (its response went on to the client) is never tried
    again, even after a failure that the rule alone would retry (the request not sent, a
    GET, a replayable body); nor one released (given up)."""
    assert RetryRule().allows("GET", REFUSED, attempts=1, replayable=True)
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    attempts.end(Outcome(ok=False, status=200))     # the body broke off after the head
    assert attempts.retry(REFUSED, replayable=True) is None
    assert attempts.tried == [A] and balancer.ends() == [("report", "a", False, None)]
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    attempts.release()
    assert attempts.retry(REFUSED, replayable=True) is None
    assert attempts.tried == [A] and balancer.ends() == [("release", "a")]


def test_an_exception_releases_the_open_attempt():
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    with pytest.raises(KeyboardInterrupt), attempts:
        attempts.retry(UNAVAILABLE)
        raise KeyboardInterrupt     # a cancellation while b's answer is awaited
    assert balancer.ends() == [("report", "a", False, 0.03), ("release", "b")]
    assert balancer.in_flight == 0


def test_a_clean_exit_leaves_the_open_attempt_to_its_owner():
    balancer = FakeBalancer(A)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    with attempts:
        pass
    assert balancer.in_flight == 1
    held = attempts.completion
    held.done(OK)
    assert balancer.in_flight == 0


def test_retry_before_start_is_a_mistake():
    with pytest.raises(RuntimeError, match="start"):
        Attempts(FakeBalancer(A), RetryRule()).retry(RESET)


def test_the_loop_has_a_readable_repr():
    attempts = Attempts(FakeBalancer(A), RetryRule(retries=1), "GET", key="k")
    attempts.start()
    assert repr(attempts) == ("<Attempts GET key='k' tried=[http://a:1] "
                              "RetryRule(retries=1, fail_statuses={502, 503, 504})>")
    assert repr(attempts.completion) == "<Completion http://a:1 in flight>"


# -- the completion handle ----------------------------------------------------------------------

def test_a_completion_ends_exactly_once():
    balancer = FakeBalancer(A)
    handle = balancer.begin()
    handle.done(RESET)
    handle.done(OK)
    handle.release()
    handle.done(OK, wait=False)
    assert balancer.ends() == [("report", "a", False, 0.02)]
    assert handle.ended and repr(handle) == "<Completion http://a:1 ended>"


def test_a_released_completion_is_not_reported_later():
    balancer = FakeBalancer(A)
    handle = balancer.begin()
    handle.release()
    handle.done(OK)
    assert balancer.ends() == [("release", "a")]


def test_a_completion_as_a_context_manager_ends_on_every_exit_as_attempt_does():
    # As Balancer.attempt(): an exception is a failure, a cancellation a release; a block
    # that ends without an outcome releases at once (nothing is left to a finalizer).
    balancer = FakeBalancer(A)
    with pytest.raises(ValueError), balancer.begin():
        raise ValueError
    with pytest.raises(KeyboardInterrupt), balancer.begin():
        raise KeyboardInterrupt
    with balancer.begin() as handle:
        handle.done(OK)
    with balancer.begin():
        pass
    assert balancer.ends() == [("report", "a", False, None), ("release", "a"),
                               ("report", "a", True, 0.01), ("release", "a")]
    assert balancer.in_flight == 0


def test_a_generator_closed_inside_an_attempt_ends_it_on_the_lock_free_path():
    # GeneratorExit: a coroutine or generator being closed, perhaps by a garbage collection
    # that runs inside the balancer's lock. The release must not wait for that lock.
    balancer = FakeBalancer(A, B)

    def request(open_attempt):
        with open_attempt():
            yield

    def with_attempts():
        attempts = Attempts(balancer, RetryRule(), "GET")
        attempts.start()
        return attempts

    for open_attempt in (balancer.begin, with_attempts):
        suspended = request(open_attempt)
        next(suspended)
        suspended.close()
    assert balancer.ends() == [("release_later", "a"), ("release_later", "a")]
    assert balancer.in_flight == 0


def test_a_dropped_completion_is_released_by_its_finalizer():
    balancer = FakeBalancer(A, B)
    balancer.begin()                           # dropped at once, never ended
    gc.collect()
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    del attempts                               # a front-end that lost its request
    gc.collect()
    assert balancer.ends() == [("release_later", "a"), ("release_later", "a")]
    assert balancer.in_flight == 0


def test_many_threads_end_one_completion_once():
    balancer = FakeBalancer(A)
    for _ in range(50):
        handle = balancer.begin()
        start = threading.Barrier(4)

        def end(handle=handle, start=start):
            start.wait()
            handle.done(OK) if random.random() < 0.5 else handle.release()

        threads = [threading.Thread(target=end) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(balancer.ends()) == 50 and balancer.in_flight == 0


# -- with the real Balancer ------------------------------------------------------------------

def test_balancer_begin_counts_in_flight_until_the_end():
    pool = lb.Balancer([A, B], policy="least_conn")
    first = pool.begin()
    second = pool.begin(exclude=[first.backend])
    assert {first.backend, second.backend} == {A, B}
    assert [row["in_flight"] for row in pool.stats()] == [1, 1]
    first.done(Outcome(ok=False, latency=0.5))
    first.done(OK)
    second.release()
    rows = pool.stats()
    assert [row["in_flight"] for row in rows] == [0, 0]
    assert sum(row["failures"] for row in rows) == 1


def test_balancer_begin_raises_when_nothing_is_left():
    pool = lb.Balancer([A])
    with pytest.raises(lb.NoHealthyBackend):
        pool.begin(exclude=[A])


def test_a_dropped_completion_is_released_inside_the_balancers_lock():
    # A garbage collection may run the finalizer while this thread holds the lock (inside
    # pick): the release is deferred to the next call instead of deadlocking.
    pool = lb.Balancer([A])
    handle = pool.begin()
    with pool._lock:
        del handle
        gc.collect()
    assert pool.stats()[0]["in_flight"] == 0


def test_a_dropped_completion_in_a_reference_cycle_is_released_by_the_collector():
    balancer = FakeBalancer(A)
    holder = [balancer.begin()]
    holder.append(holder)                      # a cycle: only the collector frees it
    del holder
    gc.collect()
    assert balancer.ends() == [("release_later", "a")]


def test_the_loop_on_a_real_balancer_reports_each_backend_once():
    pool = lb.Balancer([A, B, C], policy="round_robin", max_fails=0)
    attempts = Attempts(pool, RetryRule(retries=5), "GET")
    attempts.start()
    assert attempts.retry(RESET) is not None
    assert attempts.retry(UNAVAILABLE) is not None
    assert attempts.retry(UNAVAILABLE) is None     # every backend tried
    attempts.end(UNAVAILABLE)
    rows = pool.stats()
    assert [(r["requests"], r["failures"], r["in_flight"]) for r in rows] == [(1, 1, 0)] * 3


# -- the failed attempt's log line -----------------------------------------------------------

def attempt_lines(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "lbmiddleware.attempts"]


@pytest.mark.parametrize(("outcome", "reason"), [
    (Outcome(ok=False, latency=0.001, sent=False, error="connection refused"),
     "connection refused"),
    (UNAVAILABLE, "status 503"),
    (TIMED_OUT, "timed out"),
    (Outcome(ok=False, sent=False, timeout=True), "timed out"),
    (REFUSED, "connect failed"),
    (RESET, "failed after sending"),
    (Outcome(ok=False, latency=2.0, timeout=True, error="read timed out after 2s"),
     "read timed out after 2s"),
])
def test_a_retried_attempt_is_one_info_line_with_its_reason(caplog, outcome, reason):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    assert run(FakeBalancer(A, B), RetryRule(), "GET", [outcome, OK]) == ["a", "b"]
    assert attempt_lines(caplog) == [
        (logging.INFO, f"GET attempt 1 on http://a:1 failed: {reason}; retrying on http://b:1")]


@pytest.mark.parametrize(("rule", "method", "outcomes", "replayable", "line"), [
    (RetryRule(retries=1), "GET", [RESET, UNAVAILABLE], True,
     "GET attempt 2 on http://b:1 failed: status 503; not retried: no retries left (1 used)"),
    (RetryRule(retries=0), "GET", [REFUSED], True,
     "GET attempt 1 on http://a:1 failed: connect failed; not retried: no retries left "
     "(0 used)"),
    (RetryRule(), "POST", [RESET, OK], True,
     "POST attempt 1 on http://a:1 failed: failed after sending; not retried: POST is not "
     "idempotent"),
    (RetryRule(), "PUT", [RESET, OK], False,
     "PUT attempt 1 on http://a:1 failed: failed after sending; not retried: the body "
     "cannot be sent again"),
    (RetryRule(), "GET", [RESET, TIMED_OUT], True,
     "GET attempt 2 on http://b:1 failed: timed out; not retried: every backend was tried"),
])
def test_an_attempt_not_retried_says_why(caplog, rule, method, outcomes, replayable, line):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    run(FakeBalancer(A, B), rule, method, outcomes, replayable=replayable)
    assert attempt_lines(caplog)[-1] == (logging.INFO, line)


def test_the_lines_of_a_request_name_each_attempt_in_turn(caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    run(FakeBalancer(A, B, C), RetryRule(retries=1), "DELETE", [UNAVAILABLE, TIMED_OUT, OK])
    assert [line for _, line in attempt_lines(caplog)] == [
        "DELETE attempt 1 on http://a:1 failed: status 503; retrying on http://b:1",
        "DELETE attempt 2 on http://b:1 failed: timed out; not retried: no retries left "
        "(1 used)"]


def test_a_retry_of_an_ended_attempt_is_logged_as_not_retried(caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    attempts = Attempts(FakeBalancer(A, B), RetryRule(), "GET")
    attempts.start()
    attempts.end(Outcome(ok=False, status=200))
    attempts.retry(REFUSED)
    assert attempt_lines(caplog) == [(logging.INFO, (
        "GET attempt 1 on http://a:1 failed: connect failed; not retried: the attempt had "
        "already ended (its answer went to the client, or it was given up)"))]


def test_a_failure_after_the_answer_began_ends_the_attempt_with_its_line(caplog):
    """A response body that breaks off once its head reached the client: a failure no retry
    can follow. end_failed reports it and logs the failed-attempt line every other failure
    gets, whatever the front-end."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    answered = Outcome(ok=True, latency=0.01, status=200, bytes_sent=7)
    broke = broken_body(answered, 512, "the backend closed the connection")
    assert broke == Outcome(ok=False, latency=0.01, status=200, bytes_sent=7,
                            bytes_received=512, error="the response body broke off after 512 "
                            "bytes (the backend closed the connection)")
    attempts.end_failed(broke)
    attempts.end(OK)                                # already ended: ignored
    assert balancer.ends() == [("report", "a", False, 0.01)]
    assert balancer.extras == [(7, 512, 200)]
    assert attempt_lines(caplog) == [(logging.INFO, (
        "GET attempt 1 on http://a:1 failed: the response body broke off after 512 bytes (the "
        "backend closed the connection); not retried: its response had begun to reach the "
        "client"))]
    assert broken_body(answered, 0, "read timed out after 2s", timeout=True).timeout


def test_failed_attempts_log_nothing_at_the_default_level(caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    run(FakeBalancer(A, B), RetryRule(), "GET", [REFUSED, RESET])
    assert caplog.records == []


def test_the_rule_says_why_not_exactly_when_it_does_not_allow():
    rule = RetryRule(retries=1)
    for method in ("GET", "POST"):
        for outcome in (OK, REFUSED, RESET, UNAVAILABLE, TIMED_OUT):
            for attempts in (1, 2):
                for replayable in (True, False):
                    allowed = rule.allows(method, outcome, attempts=attempts,
                                          replayable=replayable)
                    why = rule.why_not(method, outcome, attempts=attempts,
                                       replayable=replayable)
                    assert (why is None) == (allowed or outcome.ok), (method, outcome, why)


# -- the deadline (LB_TIMEOUT) ---------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


CUT_OFF = Outcome(ok=False, latency=0.5, timeout=True, error="read timed out after 500ms")


def test_without_a_timeout_there_is_no_deadline():
    attempts = Attempts(FakeBalancer(A), RetryRule(), "GET")
    assert attempts.deadline is None and attempts.time_left() is None
    assert not attempts.expired
    assert attempts.cut(5.0, 60.0) == (5.0, 60.0)


def test_each_attempts_timeouts_are_cut_to_the_time_left():
    clock = Clock()
    attempts = Attempts(FakeBalancer(A, B), RetryRule(), "GET", timeout=1.0, timer=clock)
    assert attempts.time_left() == 1.0
    assert attempts.cut(5.0, 60.0) == (1.0, 1.0)
    assert attempts.cut(0.25, 60.0) == (0.25, 1.0)
    clock.now += 0.7
    assert attempts.cut(5.0, 60.0) == pytest.approx((0.3, 0.3))
    clock.now += 5.0
    assert attempts.expired and attempts.time_left() == pytest.approx(-4.7)
    assert attempts.cut(5.0, 60.0) == (0.001, 0.001)      # never zero: a timeout of 0 is none
    assert attempts.deadline_text() == "the request's 1s deadline (LB_TIMEOUT) ran out"


def test_no_retry_once_the_deadline_has_passed(caplog):
    clock = Clock()
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(retries=2), "GET", timeout=0.5, timer=clock)
    attempts.start()
    clock.now += 0.5
    with caplog.at_level(logging.INFO, logger="lbmiddleware.attempts"):
        assert attempts.retry(CUT_OFF) is None
    assert [b.url for b in attempts.tried] == ["http://a:1"]
    assert balancer.ends() == [("report", "a", False, 0.5)]
    assert "not retried: the request's 500ms deadline (LB_TIMEOUT) has passed" in caplog.text


def test_no_retry_when_the_next_backend_usually_takes_longer_than_the_time_left(caplog):
    clock = Clock()
    balancer = FakeBalancer(A, B)
    balancer.usual = {"http://b:1": 0.3}
    attempts = Attempts(balancer, RetryRule(retries=2), "GET", timeout=1.0, timer=clock)
    attempts.start()
    clock.now += 0.8                                        # 200 ms left, b needs 300
    with caplog.at_level(logging.INFO, logger="lbmiddleware.attempts"):
        assert attempts.retry(CUT_OFF) is None
    assert balancer.ends() == [("report", "a", False, 0.5), ("release", "b")]
    assert balancer.in_flight == 0
    assert balancer.refunds == [True]           # the budget and the retries' count take it back
    assert ("not retried: 200ms left of the 1s deadline (LB_TIMEOUT), less than http://b:1's "
            "usual 300ms") in caplog.text


@pytest.mark.parametrize("usual", [None, 0.1])
def test_a_retry_goes_ahead_when_the_time_left_is_enough_or_unknown(usual):
    clock = Clock()
    balancer = FakeBalancer(A, B)
    balancer.usual = {} if usual is None else {"http://b:1": usual}
    attempts = Attempts(balancer, RetryRule(retries=2), "GET", timeout=1.0, timer=clock)
    attempts.start()
    clock.now += 0.8
    assert attempts.retry(CUT_OFF) == B
    assert attempts.cut(5.0, 60.0) == pytest.approx((0.2, 0.2))


def test_the_budget_refuses_before_a_pick_is_made():
    balancer = FakeBalancer(A, B)
    balancer.budget = 0
    attempts = Attempts(balancer, RetryRule(retries=2), "GET")
    attempts.start()
    assert attempts.retry(UNAVAILABLE) is None
    assert [c for c in balancer.calls if c[0] == "pick"] == [("pick", "a", None)]
    assert ("budget spent",) in balancer.calls
    attempts.end(UNAVAILABLE)
    assert balancer.in_flight == 0


def test_a_sticky_value_goes_to_the_first_pick_only():
    seen = []

    class Recording(FakeBalancer):
        def begin(self, key=None, exclude=(), prefer=None):
            seen.append(prefer)
            return super().begin(key, exclude)

    attempts = Attempts(Recording(A, B), RetryRule(retries=1), "GET", prefer="cafe")
    attempts.start()
    attempts.retry(UNAVAILABLE)
    assert seen == ["cafe", None]


# -- what every front-end does around the loop (one wording: the ASGI and fast exchanges) ----

class Failed:
    """A front-end's failed attempt without a response (an upstream client's error)."""

    def __init__(self, sent=True, timeout=False, deadline=False, bytes_sent=0):
        self.sent, self.timeout, self.deadline, self.bytes_sent = (sent, timeout, deadline,
                                                                   bytes_sent)


def test_a_failure_without_a_response_is_the_front_ends_words_or_the_deadlines():
    attempts = Attempts(FakeBalancer(A, B), RetryRule(), "GET", timeout=2.0)
    refused = attempts.failed(Failed(sent=False), 0.001, "connection refused")
    assert refused == Outcome(ok=False, latency=0.001, sent=False, error="connection refused")
    cut = attempts.failed(Failed(timeout=True, deadline=True, bytes_sent=9), 2.0,
                          "read timed out after 60s")
    assert cut == Outcome(ok=False, latency=2.0, timeout=True, bytes_sent=9,
                          error="the request's 2s deadline (LB_TIMEOUT) ran out")
    assert Attempts.answer_status(refused) == 502
    assert Attempts.answer_status(cut) == 504
    assert Attempts.answer_status(UNAVAILABLE) == 502


def test_a_delivered_answer_ends_its_attempt_with_the_bytes():
    balancer = FakeBalancer(A)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    answered = RetryRule().outcome(200, 0.01, bytes_sent=5)
    attempts.delivered(answered, 1000, bytes_sent=70)       # more went up after the head
    attempts.delivered(answered, 2000)                      # ended: ignored
    assert balancer.ends() == [("report", "a", True, 0.01)]
    assert balancer.extras == [(70, 1000, 200)]
    balancer = FakeBalancer(A)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    attempts.delivered(RetryRule().outcome(503, 0.02, bytes_sent=5), 12)   # the last answer
    assert balancer.ends() == [("report", "a", False, 0.02)]
    assert balancer.extras == [(5, 12, 503)]


@pytest.mark.parametrize("status", [200, 404, 503])
def test_a_delivered_answer_of_fields_ends_its_attempt_as_its_outcome_would(status):
    """delivered_answer(status, latency, ...) is delivered() of rule.outcome(status, ...),
    without the outcome: the same end, ok by the rule's failing statuses."""
    rule = RetryRule(fail_statuses={404, 503})
    ends = []
    for deliver in (lambda a: a.delivered(rule.outcome(status, 0.01, 7), 30),
                    lambda a: a.delivered_answer(status, 0.01, 30, 7)):
        balancer = FakeBalancer(A)
        attempts = Attempts(balancer, rule, "GET")
        attempts.start()
        deliver(attempts)
        deliver(attempts)                                   # ended: ignored
        ends.append((balancer.ends(), balancer.extras))
    assert ends[0] == ends[1] == ([("report", "a", status == 200, 0.01)], [(7, 30, status)])


def test_a_client_gone_ends_an_answered_attempt_and_releases_one_not_answered_yet():
    balancer = FakeBalancer(A)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    attempts.client_left(None, 0)
    assert balancer.ends() == [("release", "a")] and balancer.in_flight == 0
    balancer = FakeBalancer(A)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    attempts.client_left(RetryRule().outcome(200, 0.01, bytes_sent=3), 4096)
    assert balancer.ends() == [("report", "a", True, 0.01)]
    assert balancer.extras == [(3, 4096, 200)]


def test_a_body_that_broke_off_is_a_failure_with_its_line(caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    balancer = FakeBalancer(A, B)
    attempts = Attempts(balancer, RetryRule(), "GET")
    attempts.start()
    answered = RetryRule().outcome(200, 0.01, bytes_sent=7)
    attempts.broke_off(answered, 512, "read timed out after 2s", timeout=True)
    assert balancer.ends() == [("report", "a", False, 0.01)]
    assert balancer.extras == [(7, 512, 200)]
    assert attempt_lines(caplog) == [(logging.INFO, (
        "GET attempt 1 on http://a:1 failed: the response body broke off after 512 bytes (read "
        "timed out after 2s); not retried: its response had begun to reach the client"))]
    assert attempts.retry(REFUSED) is None                  # never tried again
