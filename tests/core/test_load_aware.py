"""least_conn and latency: the rules the balance benchmark led to (benchmarks/README.md)."""

import math
import random
from collections import Counter

import pytest

import lbmiddleware as lb
from lbmiddleware.core.load import USUAL_TAU, LatencyEstimate, PeakEwma, UsualInFlight

A, B, C, D, E = (f"http://{name}:1" for name in "abcde")


def make(policy, backends, clock, **options):
    return lb.Balancer(backends, policy=policy, rng=random.Random(1), timer=clock, **options)


def only(pool, url):
    """Pick ``url`` (the others excluded), as a retry would."""
    return pool.pick(exclude=[b for b in pool.backends if b.url != url])


def state(pool, url):
    return next(row for row in pool.stats() if row["url"] == url)


# -- least_conn: a doubted backend takes one request at a time -------------------------------

def hold(pool, url, count):
    return [only(pool, url) for _ in range(count)]


def test_least_conn_gives_a_backend_that_just_failed_one_request_at_a_time(clock):
    pool = make("least_conn", [A, B, C], clock)
    hold(pool, B, 5)
    hold(pool, C, 5)
    pool.report(only(pool, A), ok=False)            # A refuses: nothing in flight, 1 failure
    trial = pool.pick()
    assert trial.url == A                           # the least loaded still gets one...
    following = Counter(pool.pick().url for _ in range(6))
    assert following[A] == 0                        # ...and no more while that one is out
    pool.report(trial, ok=False)                    # it failed too: one more trial
    assert pool.pick().url == A
    assert pool.pick().url != A


def test_least_conn_takes_a_doubted_backend_back_when_its_trial_succeeds(clock):
    pool = make("least_conn", [A, B, C], clock)
    hold(pool, B, 5)
    hold(pool, C, 5)
    pool.report(only(pool, A), ok=False)
    trial = pool.pick()
    assert trial.url == A
    pool.report(trial, ok=True, latency=0.01)       # answered: no longer doubted
    assert [pool.pick().url for _ in range(3)] == [A, A, A]


def test_least_conn_old_requests_of_a_failing_backend_do_not_open_it_again(clock):
    # A still finishes requests it had before it began to fail (stale successes): they
    # say nothing of it since, so they do not let a second request in beside the trial.
    pool = make("least_conn", [A, B, C], clock)
    old = hold(pool, A, 3)
    hold(pool, B, 8)
    hold(pool, C, 8)
    clock.advance(1.0)
    pool.report(only(pool, A), ok=False, latency=0.001)
    trial = pool.pick()
    assert trial.url == A
    clock.advance(0.1)
    pool.report(old.pop(), ok=True, latency=1.1)    # sent before the failure: stale
    assert state(pool, A)["consecutive_failures"] == 1
    assert Counter(pool.pick().url for _ in range(4))[A] == 0


def test_least_conn_gives_a_backend_on_probation_one_request_at_a_time(clock):
    pool = make("least_conn", [A, B, C], clock)
    for _ in range(3):
        pool.report(only(pool, A), ok=False)
    assert state(pool, A)["state"] == "ejected"
    hold(pool, B, 5)
    hold(pool, C, 5)
    clock.advance(pool.settings.fail_timeout)
    trial = pool.pick()
    assert trial.url == A and state(pool, A)["state"] == "probation"
    assert Counter(pool.pick().url for _ in range(6))[A] == 0


def test_least_conn_picks_a_doubted_backend_when_nothing_else_is_left(clock):
    pool = make("least_conn", [A, B], clock)
    hold(pool, B, 1)
    pool.report(only(pool, A), ok=False)
    trial = pool.pick()
    assert trial.url == A
    assert pool.pick(exclude=[lb.Backend(B)]).url == A      # a retry that tried B


def test_least_conn_busy_ties_go_to_the_most_recently_active_backend(clock):
    # All three busy with one request each: the next request goes to the backend that
    # started or ended a request last, not to A, whose request is the oldest (the
    # likeliest to be on a slow backend). Idle ties keep the weighted rotation.
    pool = make("least_conn", [A, B, C], clock)
    first = [pool.pick() for _ in range(3)]
    assert [b.url for b in first] == [A, B, C]
    assert pool.pick().url == C
    pool.report(first[1], ok=True, latency=0.01)     # B: 0 in flight, A 1, C 2
    assert pool.pick().url == B                      # the least loaded, as always
    assert pool.pick().url == B                      # A, B at 1: B was active last


def test_least_conn_idle_ties_keep_the_exact_weighted_rotation(clock):
    backends = [lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)]
    pool = make("least_conn", backends, clock)
    seen = Counter()
    for _ in range(1000):
        backend = pool.pick()
        seen[backend.url] += 1
        pool.report(backend, ok=True, latency=0.01)
    assert (seen[A], seen[B], seen[C]) == (500, 300, 200)


# -- latency: the pool's usual concurrency, and a fresh start after an outage -----------------

def test_usual_in_flight_falls_at_once_and_rises_slowly():
    usual = UsualInFlight(0.0)
    assert usual.held(20, 0.0) == 0.0               # no time held: no rise
    assert usual.held(20, USUAL_TAU) == pytest.approx(20 * (1 - math.exp(-1)))
    assert usual.level == pytest.approx(12.64, abs=0.01)
    assert usual.held(3, USUAL_TAU + 0.001) == pytest.approx(3 - 12.64, abs=0.01)
    assert usual.level == 3.0                       # a lower count: at once


def test_cost_adds_the_share_to_the_requests_in_flight():
    load = PeakEwma()
    estimate = LatencyEstimate()
    load.observe(estimate, 0.2, 0.0)
    assert load.cost(estimate, 4, 1, 0.0) == pytest.approx(0.2 * 5)
    assert load.cost(estimate, 4, 2, 0.0, share=9.0) == pytest.approx(0.2 * 14 / 2)
    assert load.cost(LatencyEstimate(), 0, 1, 0.0, share=9.0) == 0.0     # a newcomer


def steady(pool, clock, counts, latency, seconds=60.0):
    """Each backend holds ``counts[url]`` requests for ``seconds``, then each of them is
    answered in ``latency[url]`` and replaced by a new one on the same backend: the marks
    rise to most of the counts. Returns the requests held."""
    held = {url: hold(pool, url, count) for url, count in counts.items()}
    clock.advance(seconds)
    for url, backends in held.items():
        for i, backend in enumerate(backends):
            pool.report(backend, ok=True, latency=latency[url])
            backends[i] = only(pool, url)
    return held


def test_latency_a_slow_backend_holding_few_requests_is_not_cheap(clock):
    # Five backends answering in 0.2 s hold 20 requests each, as a busy pool of
    # concurrent backends does. Then A's requests come back after 2 s and it holds none.
    # Counted as a queue, A would cost 2 s x 1 against 0.2 s x 21 and draw the next
    # requests until it held two; its share of what the pool keeps in flight (about 14
    # per backend) makes it 2 s x 15 against 0.2 s x 35.
    urls = [A, B, C, D, E]
    pool = make("latency", urls, clock)
    held = steady(pool, clock, dict.fromkeys(urls, 20), dict.fromkeys(urls, 0.2))
    for backend in held[A]:
        pool.report(backend, ok=True, latency=2.0)
    assert state(pool, A)["in_flight"] == 0
    assert state(pool, A)["latency_estimate"] == pytest.approx(2.0)
    assert Counter(pool.pick().url for _ in range(40))[A] == 0


def test_latency_weights_keep_their_shares_beside_the_share(clock):
    # Equal latencies, weights 2 and 1, many requests in flight: new requests go 2:1, as
    # with the classic cost (the share is per unit of weight).
    pool = make("latency", [lb.Backend(A, 2), lb.Backend(B, 1)], clock)
    steady(pool, clock, {A: 20, B: 10}, {A: 0.2, B: 0.2})
    picks = Counter(pool.pick().url for _ in range(300))
    assert picks[A] / picks[B] == pytest.approx(2.0, rel=0.1)


def test_latency_a_backend_back_from_ejection_starts_over_one_request_at_a_time(clock):
    # A's failures count as slow samples (15 s after three in a row): without a fresh
    # start it would be shunned for tens of seconds after it returned. Back on probation
    # it has no estimate: it gets a request, and no other until that one is answered.
    pool = make("latency", [A, B], clock)
    pool.report(only(pool, B), ok=True, latency=0.01)
    for _ in range(3):
        pool.report(only(pool, A), ok=False)
    assert state(pool, A)["state"] == "ejected"
    assert state(pool, A)["latency_estimate"] == pytest.approx(15.0)
    clock.advance(pool.settings.fail_timeout)
    probe = pool.pick()
    assert probe.url == A
    assert state(pool, A)["latency_estimate"] is None
    assert {pool.pick().url for _ in range(5)} == {B}
    pool.report(probe, ok=True, latency=0.01)
    assert state(pool, A)["state"] == "healthy"
    assert state(pool, A)["latency_estimate"] == pytest.approx(0.01)


def test_latency_keeps_the_estimate_of_a_backend_that_never_left(clock):
    pool = make("latency", [A, B, C], clock)
    for url in (A, B):
        pool.report(only(pool, url), ok=True, latency=0.05)
    for _ in range(3):
        pool.report(only(pool, C), ok=False)            # C's ejection: a new generation
    clock.advance(1.0)
    pool.report(pool.pick(), ok=True, latency=0.05)
    assert state(pool, A)["latency_estimate"] is not None
    assert state(pool, B)["latency_estimate"] is not None


def test_latency_a_new_backend_shares_by_weight_before_its_first_answer(clock):
    # A brand-new pool has no estimate at all: picks held open still follow the weights
    # (the one-at-a-time rule is for a backend back from an outage only).
    pool = make("latency", [lb.Backend(A, 3), lb.Backend(B, 1)], clock)
    held = Counter(pool.pick().url for _ in range(400))
    assert held[A] / 400 == pytest.approx(0.75, abs=0.05)
