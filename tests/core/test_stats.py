"""What stats() and pool_stats() show (the data the status page, the metrics and the logs read):
ages instead of timer readings, the state a person reads (slow start included), byte and
latency counters, the answered latency beside the policy's estimate, and the pool's row."""

from __future__ import annotations

import pytest

import lbmiddleware as lb
from lbmiddleware.core.attempts import Outcome
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.load import LATENCY_BUCKETS

A, B, C = "http://a:1", "http://b:1", "http://c:1"
DNS = "dns+http://svc.test:80"


def row(pool, url):
    return {r["url"]: r for r in pool.stats()}[url]


def fail(pool, url, times=1):
    for _ in range(times):
        backend = pool.pick(exclude=[u for u in pool.backends if u.url != url])
        assert backend.url == url
        pool.report(backend, ok=False)


# -- counters -------------------------------------------------------------------------------

def test_bytes_add_up_from_report_report_later_and_a_completion(clock):
    pool = Balancer([A], timer=clock)
    pool.report(pool.pick(), latency=0.01, bytes_sent=10, bytes_received=100)
    pool.report_later(pool.pick(), ok=False, bytes_sent=5, bytes_received=0)
    pool.begin().done(Outcome(ok=True, latency=0.01, status=200, bytes_sent=1,
                              bytes_received=2))
    pool.begin().done(Outcome(ok=True, latency=0.01, status=200, bytes_received=3), wait=False)
    assert (row(pool, A)["bytes_sent"], row(pool, A)["bytes_received"]) == (16, 105)


def test_a_draining_backends_failures_are_counted_but_never_judge_its_health(clock):
    # requests - failures is what the metrics call successes: a failure left out of
    # failures would be shown as a success.
    pool = Balancer([A, B], timer=clock, max_fails=2, drain_timeout=30.0)
    held = [pool.pick(exclude=[lb.Backend(A)]) for _ in range(5)]
    pool.drain(B)
    pool.report(held[0], ok=False)                           # refused
    pool.report(held[1], ok=False, latency=0.2, status=503)  # a failing status
    pool.report_later(held[2], ok=False)
    pool.report(held[3], latency=0.01, status=200)
    r = row(pool, B)
    assert (r["state"], r["requests"], r["failures"]) == ("draining", 4, 3)
    assert (r["consecutive_failures"], r["ejections"]) == (0, 0)   # no ejection while draining
    pool.undrain(B)                       # a member again before its drain ended: it counts on
    pool.report(held[4], ok=False)
    r = row(pool, B)
    assert (r["state"], r["requests"], r["failures"]) == ("healthy", 5, 4)
    assert r["consecutive_failures"] == 1


def test_a_removed_backends_failed_request_is_counted_in_failures(clock):
    pool = Balancer([A], timer=clock)
    pool.update([A, B])
    held = [pool.pick(exclude=[lb.Backend(A)]) for _ in range(2)]
    pool.update([A])                                          # B leaves: it drains
    pool.report(held[0], ok=False)
    r = row(pool, B)
    assert (r["requests"], r["failures"], r["ejections"]) == (1, 1, 0)
    pool.report(held[1], ok=False)                            # its last: it has left
    assert B not in {r["url"] for r in pool.stats()}


def test_report_later_under_the_lock_keeps_its_bytes_until_applied(clock):
    pool = Balancer([A], timer=clock)
    backend = pool.pick()
    with pool._lock:                  # a garbage collection inside a pick, say
        pool.report_later(backend, latency=0.2, bytes_sent=7, bytes_received=9, status=200)
    r = row(pool, A)
    assert (r["bytes_sent"], r["bytes_received"], r["latency"], r["in_flight"]) == (7, 9, 0.2, 0)


def test_the_histogram_counts_every_answered_latency_per_bound_cumulatively(clock):
    pool = Balancer([A], timer=clock)
    for latency, ok, status in ((0.001, True, 200), (0.0011, True, None), (0.3, False, 503),
                                (11.0, True, 200)):
        pool.report(pool.pick(), ok=ok, latency=latency, status=status)
    pool.report(pool.pick(), ok=False)                # no latency: not in the histogram
    r = row(pool, A)
    assert len(r["latency_buckets"]) == len(LATENCY_BUCKETS) == 13
    buckets = dict(zip(LATENCY_BUCKETS, r["latency_buckets"], strict=True))
    assert buckets[0.001] == 1                        # a bound is inclusive (le)
    assert buckets[0.0025] == 2                       # (a success is an answer, status or not)
    assert buckets[0.25] == 2 and buckets[0.5] == 3   # the failing status's latency counts too
    assert buckets[10.0] == 3                         # 11 s only in +Inf
    assert r["latency_count"] == 4 and r["requests"] == 5
    assert r["latency_sum"] == pytest.approx(0.001 + 0.0011 + 0.3 + 11.0)


def test_the_histogram_leaves_out_failures_without_a_response_head(clock):
    """SEMANTICS part four: the duration is the time to the response head. A refused or
    timed-out attempt has none: a backend refusing every connection in a fraction of a
    millisecond must not look like the fastest of the pool."""
    pool = Balancer([A], timer=clock, max_fails=0)
    pool.report(pool.pick(), latency=0.05, status=200)
    for _ in range(20):
        pool.report(pool.pick(), ok=False, latency=0.0002)         # refused
    pool.report(pool.pick(), ok=False, latency=2.0)                # read timed out
    r = row(pool, A)
    assert (r["requests"], r["failures"]) == (22, 21)
    assert (r["latency_count"], r["latency_buckets"][0]) == (1, 0)
    assert r["latency_sum"] == pytest.approx(0.05)
    backend = pool.pick()
    with pool._lock:                  # a report applied later (a finalizer's) alike
        pool.report_later(backend, ok=False, latency=0.0001)
    r = row(pool, A)
    assert (r["requests"], r["latency_count"]) == (23, 1)


# -- latency: answered mean and the policy's estimate -----------------------------------

def test_latency_is_the_answered_mean_and_a_failure_without_a_response_never_feeds_it(clock):
    pool = Balancer([A], timer=clock)
    assert (row(pool, A)["latency"], row(pool, A)["latency_estimate"]) == (None, None)
    pool.report(pool.pick(), ok=False, latency=4.0)           # refused: no response
    assert row(pool, A)["latency"] is None
    assert row(pool, A)["latency_estimate"] == pytest.approx(5.0)    # the failure penalty
    pool.report(pool.pick(), latency=0.02, status=200)
    pool.report(pool.pick(), ok=False, latency=0.04, status=503)    # a response all the same
    assert row(pool, A)["latency"] == pytest.approx(0.03)    # same instant: the plain mean
    assert row(pool, A)["latency_estimate"] == pytest.approx(5.0)  # the peak, not the 503


def test_the_answered_mean_forgets_old_samples_with_time_and_does_not_decay_on_read(clock):
    pool = Balancer([A], timer=clock)
    pool.report(pool.pick(), latency=1.0)
    clock.advance(10.0)                                       # one tau: weight 1/e
    pool.report(pool.pick(), latency=0.1)
    weight = 2.718281828 ** -1
    assert row(pool, A)["latency"] == pytest.approx((1.0 * weight + 0.1) / (weight + 1))
    before = row(pool, A)["latency"]
    clock.advance(600.0)                                      # quiet: shown as it was
    assert row(pool, A)["latency"] == before


def test_a_dead_backend_shows_no_latency_while_its_estimate_carries_the_penalty(clock):
    pool = Balancer([A, B], timer=clock, max_fails=100)
    pool.report(pool.pick(exclude=[lb.Backend(B)]), latency=0.01)
    fail(pool, A, times=3)
    r = row(pool, A)
    assert r["latency"] == pytest.approx(0.01)
    assert r["latency_estimate"] == pytest.approx(15.0)      # 3 x 5 s, the 3rd in a row


# -- state, ages, time left ---------------------------------------------------------------------

def test_ejection_shows_time_left_and_its_age_then_the_return_is_dated_when_the_time_was_up(clock):
    pool = Balancer([A, B], timer=clock, max_fails=1, fail_timeout=10.0)
    clock.advance(3.0)
    assert row(pool, A)["state_age"] == 3.0                   # since it joined
    fail(pool, A)
    clock.advance(4.0)
    r = row(pool, A)
    assert (r["state"], r["state_age"], r["ejection_left"]) == ("ejected", 4.0, 6.0)
    clock.advance(8.0)                                        # back at +10, read at +12
    r = row(pool, A)
    assert (r["state"], r["state_age"], r["ejection_left"]) == ("probation", 2.0, None)
    clock.advance(1.0)
    pool.report(pool.pick(exclude=[lb.Backend(B)]), latency=0.01)
    assert (row(pool, A)["state"], row(pool, A)["state_age"]) == ("healthy", 0.0)
    assert row(pool, B)["state_age"] == 16.0                  # untouched


def test_a_drain_shows_its_time_left_and_starts_a_new_age(clock):
    pool = Balancer([A], timer=clock, drain_timeout=30.0)
    pool.update([A, B])
    held = pool.pick(exclude=[lb.Backend(A)])
    clock.advance(5.0)
    pool.update([A])
    clock.advance(12.0)
    r = row(pool, B)
    assert (r["state"], r["state_age"], r["drain_left"]) == ("draining", 12.0, 18.0)
    assert row(pool, A)["drain_left"] is None
    pool.report(held)
    assert B not in {r["url"] for r in pool.stats()}


def test_slow_start_is_a_state_with_its_ramp_and_its_end_is_a_change(clock):
    pool = Balancer([A], timer=clock, slow_start=10.0)
    pool.update([A, B])                                       # B joins: it ramps
    clock.advance(4.0)
    r = row(pool, B)
    assert (r["state"], r["state_age"], r["ramp"]) == ("slow_start", 4.0, pytest.approx(0.4))
    assert r["effective_weight"] == pytest.approx(0.4)
    assert (row(pool, A)["state"], row(pool, A)["ramp"]) == ("healthy", None)
    clock.advance(9.0)                                        # ended at +10, read at +13
    r = row(pool, B)
    assert (r["state"], r["state_age"], r["ramp"]) == ("healthy", 3.0, None)


def test_slow_start_shows_over_probation_and_its_return_restarts_the_age(clock):
    pool = Balancer([A, B], timer=clock, slow_start=10.0, max_fails=1, fail_timeout=5.0)
    fail(pool, A)
    clock.advance(6.0)            # due at +5, returned on probation by this call: it ramps
    r = row(pool, A)
    assert (r["state"], r["state_age"], r["ramp"]) == ("slow_start", 0.0, pytest.approx(0.1))
    clock.advance(2.0)
    assert row(pool, A)["state_age"] == 2.0


def test_active_health_down_and_up_are_changes_with_probe_ages_and_totals(clock):
    pool = Balancer([A, B], timer=clock, health_check="/healthz", health_check_rise=2,
                    health_check_fall=1)
    clock.advance(2.0)
    pool.report_probe(A, False, "status 503")
    clock.advance(3.0)
    r = row(pool, A)
    assert (r["state"], r["state_age"]) == ("down", 3.0)
    check = r["health_check"]
    assert (check["checked_ago"], check["passes_total"], check["fails_total"],
            check["rise_needed"], check["fall_needed"]) == (3.0, 0, 1, 2, 1)
    pool.report_probe(A, True, "ok")
    clock.advance(1.0)
    pool.report_probe(A, True, "ok")                          # rise 2: up now
    clock.advance(0.5)
    r = row(pool, A)
    assert (r["state"], r["state_age"], r["health_check"]["passes_total"]) == ("healthy", 0.5, 2)
    assert row(pool, B)["health_check"]["checked_ago"] is None


def test_a_probe_that_ends_an_ejection_dates_the_return(clock):
    pool = Balancer([A, B], timer=clock, health_check="/healthz", max_fails=1)
    fail(pool, A)
    clock.advance(2.0)
    pool.report_probe(A, True, "ok")
    clock.advance(1.0)
    assert (row(pool, A)["state"], row(pool, A)["state_age"]) == ("healthy", 1.0)


def test_an_ejected_backend_down_by_its_checks_shows_both_and_no_ramp_until_it_is_up(clock):
    """Ejected and down (it died): the state is ejected, its checks say down. Once its
    ejection is over it is down, with no slow start: the ramp begins when it comes up, so
    its window is not spent while it gets no traffic (however long that is)."""
    pool = Balancer([A, B], timer=clock, health_check="/healthz", health_check_rise=2,
                    max_fails=1, fail_timeout=30.0, slow_start=60.0)
    fail(pool, A)
    pool.report_probe(A, False, "connection refused")
    r = row(pool, A)
    assert (r["state"], r["health_check"]["status"], r["ramp"]) == ("ejected", "down", None)
    clock.advance(31.0)
    r = row(pool, A)
    assert (r["state"], r["health_check"]["status"], r["ejection_left"]) == ("down", "down", None)
    assert (r["ramp"], r["effective_weight"], r["state_age"]) == (None, 1, 1.0)
    clock.advance(90.0)                                   # longer than the window
    pool.report_probe(A, True, "ok")
    assert (row(pool, A)["state"], row(pool, A)["ramp"]) == ("down", None)
    pool.report_probe(A, True, "ok")                      # rise 2: up, and usable
    clock.advance(6.0)
    r = row(pool, A)
    assert (r["state"], r["state_age"], r["ramp"]) == ("slow_start", 6.0, pytest.approx(0.1))
    assert r["effective_weight"] == pytest.approx(0.1)
    clock.advance(24.0)
    assert row(pool, A)["ramp"] == pytest.approx(0.5)


def test_a_ramping_backend_that_goes_down_stops_ramping_and_starts_again_when_up(clock):
    """Envoy: a host leaves slow start when it fails its active checks and enters it again
    when it passes them."""
    pool = Balancer([A], timer=clock, health_check="/healthz", health_check_rise=1,
                    health_check_fall=1, slow_start=10.0)
    pool.update([A, B])
    pool.report_probe(B, True, "ok")
    clock.advance(4.0)
    assert row(pool, B)["ramp"] == pytest.approx(0.4)
    pool.report_probe(B, False, "status 503")
    r = row(pool, B)
    assert (r["state"], r["ramp"], r["effective_weight"]) == ("down", None, 1)
    clock.advance(2.0)
    pool.report_probe(B, True, "ok")
    r = row(pool, B)
    assert (r["state"], r["ramp"]) == ("slow_start", pytest.approx(0.1))


def test_a_joiner_pending_its_first_probe_shows_no_ramp_until_it_passes(clock):
    pool = Balancer([A], timer=clock, health_check="/healthz", slow_start=10.0)
    pool.update([A, B])
    clock.advance(5.0)
    r = row(pool, B)
    assert (r["state"], r["ramp"], r["effective_weight"]) == ("down", None, 1)
    pool.report_probe(B, True, "ok")
    clock.advance(2.0)
    assert (row(pool, B)["state"], row(pool, B)["ramp"]) == ("slow_start", pytest.approx(0.2))


def test_an_ejection_ends_a_slow_start_and_the_return_starts_it_again(clock):
    pool = Balancer([A, B], timer=clock, slow_start=10.0, max_fails=1, fail_timeout=5.0)
    pool.update([A, B, C])
    clock.advance(3.0)
    fail(pool, C)
    r = row(pool, C)
    assert (r["state"], r["ramp"], r["effective_weight"]) == ("ejected", None, 1)
    clock.advance(5.0)
    r = row(pool, C)
    assert (r["state"], r["ramp"]) == ("slow_start", pytest.approx(0.1))


def test_a_joiner_pending_its_first_probe_is_down_and_dated_from_its_join(clock):
    pool = Balancer([A], timer=clock, health_check="/healthz")
    clock.advance(7.0)
    pool.update([A, B])
    clock.advance(2.0)
    assert (row(pool, B)["state"], row(pool, B)["state_age"]) == ("down", 2.0)


# -- the pool ------------------------------------------------------------------------------

def test_pool_stats_of_a_plain_pool(clock):
    pool = Balancer([A, B], timer=clock, policy="least_conn")
    assert pool.pool_stats() == {"policy": "least_conn", "panic": False, "panic_age": None,
                                 "members": 2, "usable": 2, "draining": 0, "retries": 0,
                                 "health_check": False, "slow_start": 0.0,
                                 "retry_budget": {"ratio": 0.2, "min_per_second": 10.0,
                                                  "ttl": 10.0, "requests": 0, "retries": 0,
                                                  "available": 100.0, "exhausted_total": 0},
                                 "hash_overflows_total": 0}


def test_retries_count_the_picks_that_exclude_a_tried_backend(clock):
    pool = Balancer([A, B, C], timer=clock)
    first = pool.pick()
    pool.report(first, ok=False)
    second = pool.pick(exclude=[first])
    pool.begin(exclude=[first, second]).release()
    pool.pick(exclude=())                             # an empty exclude is a first attempt
    with pytest.raises(lb.NoHealthyBackend):
        pool.pick(exclude=[lb.Backend(A), lb.Backend(B), lb.Backend(C)])   # no retry made
    assert pool.pool_stats()["retries"] == 2


def test_panic_shows_with_its_age_and_usable_counts_what_a_pick_would_choose(clock):
    pool = Balancer([A, B], timer=clock, max_fails=1, fail_timeout=10.0)
    fail(pool, A)
    assert pool.pool_stats()["usable"] == 1
    clock.advance(1.0)
    fail(pool, B)
    clock.advance(2.5)
    stats = pool.pool_stats()
    assert (stats["panic"], stats["panic_age"], stats["usable"]) == (True, 2.5, 0)
    clock.advance(7.0)                                # A's ejection is over
    stats = pool.pool_stats()
    assert (stats["panic"], stats["panic_age"], stats["usable"]) == (False, None, 1)


def test_pool_stats_counts_draining_and_shows_checks_and_slow_start(clock):
    pool = Balancer([A, B], timer=clock, health_check="/healthz", slow_start=30.0,
                    drain_timeout=10.0)
    pool.pick(exclude=[lb.Backend(A)])
    pool.update([A])
    stats = pool.pool_stats()
    assert (stats["members"], stats["draining"], stats["health_check"],
            stats["slow_start"]) == (1, 1, True, 30.0)
    assert Balancer([A], policy="ip_hash", slow_start=30.0).pool_stats()["slow_start"] == 0.0
