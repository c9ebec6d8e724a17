"""The latency histogram and the answered mean, counted in batches (core/load.py and the
balancer's _fold): the same counts as one bisection per sample, at the step they promise."""

from __future__ import annotations

import math
import random
from bisect import bisect_left

import pytest

from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.load import (
    FOLD_BATCH,
    FOLD_STEP,
    LATENCY_BUCKETS,
    AnsweredLatency,
    fold_latencies,
)

A = "http://a:1"


def one_by_one(samples):
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for sample in samples:
        counts[bisect_left(LATENCY_BUCKETS, sample)] += 1
    return counts


@pytest.mark.parametrize("size", [0, 1, 5, 23, 24, 100, 3000])
def test_a_batch_counts_as_one_bisection_per_sample_would(size):
    rng = random.Random(size)
    samples = [rng.choice(LATENCY_BUCKETS) if rng.random() < 0.3 else rng.lognormvariate(-4, 2)
               for _ in range(size)]
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    batch = list(samples)
    total = fold_latencies(counts, batch)
    assert counts == one_by_one(samples)          # bounds inclusive (le) on either path
    assert total == pytest.approx(sum(samples)) and batch == []


def test_the_decayed_mean_weighs_each_batch_by_its_age():
    mean = AnsweredLatency()
    assert mean.mean is None
    mean.add(3.0, 3, 100.0)                       # three samples averaging 1 s
    mean.add(0.5, 1, 110.0)                       # one tau later
    weight = math.exp(-1.0)
    assert mean.mean == pytest.approx((3.0 * weight + 0.5) / (3 * weight + 1))
    mean.add(0.5, 1, 110.0)                       # the same time: plain addition
    assert mean.mean == pytest.approx((3.0 * weight + 1.0) / (3 * weight + 2))


def test_the_balancer_counts_a_batch_at_its_step_and_whatever_is_pending_when_read(clock):
    pool = Balancer([A], timer=clock)
    state = pool._states[A]
    pool.report(pool.pick(), latency=0.2)
    pool.report(pool.pick(), latency=0.4)
    assert (state.answers, state.latency_counts[-1], state.latency_sum) == ([0.2, 0.4], 0, 0.0)
    clock.advance(FOLD_STEP)
    pool.report(pool.pick(), latency=20.0)        # the step is over: the batch is counted
    assert state.answers == [20.0] and sum(state.latency_counts) == 2
    (row,) = pool.stats()                         # a read counts the rest
    assert (row["latency_count"], row["latency_sum"]) == (3, pytest.approx(20.6))
    assert state.answers == []
    # the first batch is one sample time (its start), the second another, FOLD_STEP later
    weight = math.exp(-FOLD_STEP / 10.0)
    assert row["latency"] == pytest.approx((0.6 * weight + 20.0) / (2 * weight + 1))


def test_a_busy_backend_gets_a_shorter_step(clock):
    pool = Balancer([A], timer=clock)
    state = pool._states[A]
    for _ in range(FOLD_BATCH * 2):
        pool.report(pool.pick(), latency=0.01)
    clock.advance(FOLD_STEP)
    pool.report(pool.pick(), latency=0.01)
    assert state.fold_at - clock.now == pytest.approx(FOLD_STEP / 2)
