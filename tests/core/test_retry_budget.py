"""The retry budget (SEMANTICS part three; Finagle's RetryBudget): retries over the last ttl
seconds stay within ratio x requests + min_per_second x ttl, one budget per Balancer,
shared by every attempt loop on it; on a fake clock."""

from __future__ import annotations

import logging
import math

import pytest

import lbmiddleware as lb
from lbmiddleware.core.attempts import Attempts, Outcome, RetryRule
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.retry_budget import RetryBudget

URLS = ["http://a", "http://b", "http://c"]
UNAVAILABLE = Outcome(ok=False, latency=0.01, status=503)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rule, alone -----------------------------------------------------------------------

def test_the_reserve_alone_allows_min_per_second_times_ttl_retries():
    budget = RetryBudget(0.2, 10.0, 10.0)
    assert sum(budget.try_spend(5.0) for _ in range(150)) == 100
    assert budget.exhausted == 50


def test_each_request_deposits_ratio_of_a_retry():
    budget = RetryBudget(0.2, 0.0, 10.0)
    for _ in range(50):
        budget.deposit(3.0)
    assert budget.available(3.0) == pytest.approx(10.0)
    assert sum(budget.try_spend(3.5) for _ in range(20)) == 10
    assert budget.stats(3.5) == {"ratio": 0.2, "min_per_second": 0.0, "ttl": 10.0,
                                 "requests": 50, "retries": 10, "available": 0.0,
                                 "exhausted_total": 10}


def test_deposits_and_retries_leave_the_window_after_ttl():
    budget = RetryBudget(1.0, 0.0, 3.0)
    for _ in range(4):
        budget.deposit(10.2)
    assert budget.try_spend(10.9) and budget.try_spend(11.5)
    assert budget.available(12.9) == pytest.approx(2.0)   # 10, 11, 12: all in the window
    # second 10 left the window with its 4 requests and 1 retry: the retry of second 11
    # overdraws it (available() may go below 0; stats() shows 0)
    assert budget.available(13.0) == pytest.approx(-1.0)
    assert budget.stats(13.0)["retries"] == 1 and budget.stats(13.0)["available"] == 0.0
    assert not budget.try_spend(13.5)
    assert budget.available(14.0) == pytest.approx(0.0)   # second 11 left too: nothing
    budget.deposit(100.0)                                  # long after: a fresh window
    assert budget.stats(100.0)["requests"] == 1 and budget.available(100.0) == pytest.approx(1)


def test_a_clock_going_back_starts_a_fresh_window():
    budget = RetryBudget(1.0, 0.0, 10.0)
    budget.deposit(50.0)
    budget.deposit(40.0)
    assert budget.stats(40.0)["requests"] == 1


@pytest.mark.parametrize("args, word", [((-0.1, 10, 10), "ratio"), ((math.inf, 10, 10), "ratio"),
                                        ((0.2, -1, 10), "min_per_second"),
                                        ((0.2, 10, 0.5), "ttl")])
def test_bad_parameters_are_refused_by_name(args, word):
    with pytest.raises(ValueError, match=word):
        RetryBudget(*args)


# -- in the balancer and the attempt loop -----------------------------------------------------

def storm(pool: Balancer, requests: int, clock: Clock, step: float = 0.001) -> int:
    """Requests that every backend answers with 503, through the attempt loop; returns the
    attempts made."""
    made = 0
    for _ in range(requests):
        attempts = Attempts(pool, RetryRule(retries=2), "GET", timer=clock)
        attempts.start()
        made += 1
        with attempts:
            while attempts.retry(UNAVAILABLE) is not None:
                made += 1
            attempts.end(UNAVAILABLE)
        clock.now += step
    return made


def refused(made_per_request: list[int]) -> int:
    """Requests whose loop asked for a retry and was refused by the budget: those that made
    fewer than the rule's three attempts (every backend fails)."""
    return sum(1 for made in made_per_request if made < 3)


def test_a_pool_shedding_load_gets_at_most_the_budgets_share_of_retries():
    clock = Clock()
    pool = Balancer(URLS, max_fails=0, timer=clock)
    made = [storm(pool, 1, clock, step=0.001) for _ in range(2000)]   # 2,000 requests in 2 s
    assert sum(made) - 2000 == 100 + 400                 # the reserve + 20% of 2,000
    assert max(made) == 3 and made[:50] == [3] * 50      # the reserve first: 50 x 2 retries
    stats = pool.pool_stats()
    assert stats["retry_budget"]["exhausted_total"] == refused(made)
    assert stats["retry_budget"]["requests"] == 2000 and stats["retry_budget"]["retries"] == 500
    assert stats["retries"] == 500


def test_without_a_budget_every_request_tries_every_backend():
    clock = Clock()
    pool = Balancer(URLS, max_fails=0, timer=clock, retry_budget="off")
    assert storm(pool, 500, clock) == 1500
    assert pool.pool_stats()["retry_budget"] is None


def test_front_ends_on_one_balancer_share_its_budget():
    clock = Clock()
    pool = Balancer(URLS, max_fails=0, timer=clock, retry_budget=0, retry_budget_min_per_second=1,
                    retry_budget_ttl=2)
    assert storm(pool, 1, clock) == 3        # 2 of the 2 reserve retries
    assert storm(pool, 1, clock) == 1        # another loop on the same pool: none left
    clock.now += 2.0
    assert storm(pool, 1, clock) == 3        # the window moved on


def test_a_refused_retry_says_why_and_the_client_gets_the_failure(caplog):
    clock = Clock()
    pool = Balancer(URLS, max_fails=0, timer=clock, retry_budget=0,
                    retry_budget_min_per_second=0)
    attempts = Attempts(pool, RetryRule(retries=2), "GET", timer=clock)
    first = attempts.start()
    with caplog.at_level(logging.INFO, logger="lbmiddleware.attempts"):
        assert attempts.retry(UNAVAILABLE) is None
    attempts.end(UNAVAILABLE)
    assert attempts.tried == [first]
    assert "not retried: the retry budget is spent" in caplog.text
    assert [s["in_flight"] for s in pool.stats()] == [0, 0, 0]
    assert pool.pool_stats()["retry_budget"]["exhausted_total"] == 1


def test_the_budget_is_configured_from_lb_variables():
    pool = lb.Balancer.from_env({"LB_BACKENDS": "http://a", "LB_RETRY_BUDGET": "50%",
                                 "LB_RETRY_BUDGET_MIN_PER_SECOND": "2",
                                 "LB_RETRY_BUDGET_TTL": "5s"})
    try:
        budget = pool.pool_stats()["retry_budget"]
        assert (budget["ratio"], budget["min_per_second"], budget["ttl"]) == (0.5, 2.0, 5.0)
        assert budget["available"] == 10.0
    finally:
        pool.close()


# -- retries that are not made spend nothing (found by attacking the budget) --------------------

def one_request(pool: Balancer, clock: Clock, retries: int = 2, timeout: float = 0.0) -> int:
    """A GET whose every attempt answers 503: the number of attempts made."""
    attempts = Attempts(pool, RetryRule(retries=retries), "GET", timer=clock, timeout=timeout)
    attempts.start()
    with attempts:
        while attempts.retry(UNAVAILABLE) is not None:
            pass
        attempts.end(UNAVAILABLE)
    return len(attempts.tried)


def test_a_retry_with_no_backend_left_to_try_spends_nothing():
    clock = Clock()
    pool = Balancer(URLS[:2], max_fails=0, timer=clock, retry_budget=0,
                    retry_budget_min_per_second=1, retry_budget_ttl=10)    # a reserve of 10
    assert [one_request(pool, clock) for _ in range(10)] == [2] * 10
    budget = pool.pool_stats()["retry_budget"]
    assert (budget["retries"], budget["exhausted_total"]) == (10, 0)
    assert pool.pool_stats()["retries"] == 10


def test_a_retry_the_deadline_leaves_no_time_for_is_given_back():
    clock = Clock()
    pool = Balancer(URLS[:2], max_fails=0, timer=clock, retry_budget=0,
                    retry_budget_min_per_second=0.1, retry_budget_ttl=10)  # a reserve of 1
    for backend in pool.backends:       # both usually take 2 s to answer
        pool.report(pool.pick(exclude=[b for b in pool.backends if b != backend]), True, 2.0)
    before = pool.pool_stats()
    attempts = Attempts(pool, RetryRule(retries=2), "GET", timer=clock, timeout=1.0)
    attempts.start()
    clock.now += 0.5                    # 0.5 s left, less than 2 s
    assert attempts.retry(UNAVAILABLE) is None
    attempts.end(UNAVAILABLE)
    after = pool.pool_stats()
    assert after["retry_budget"]["retries"] == before["retry_budget"]["retries"]
    assert after["retries"] == before["retries"]
    assert [s["in_flight"] for s in pool.stats()] == [0, 0]


def test_a_refund_comes_from_the_latest_slot_that_holds_a_retry():
    budget = RetryBudget(0.0, 1.0, 3.0)
    assert budget.try_spend(10.0)
    budget.refund(11.5)                 # spent in second 10, refunded in second 11
    assert budget.stats(11.5)["retries"] == 0
    budget.refund(11.6)                 # nothing left to give back: nothing changes
    assert budget.stats(11.6)["retries"] == 0 and budget.available(11.6) == 3.0
