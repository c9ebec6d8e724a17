"""A retry that has tried every usable backend widens to the ejected ones (contract,
"Retries"); the snapshot it picks from must never pass for the usable one, which the
policies cache per generation (found by attacking the bandwidth policy: a KeyError, and
round_robin sending an ejected backend a quarter of the traffic); on a fake clock."""

from __future__ import annotations

import collections
import random

import pytest

from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.settings import POLICIES

URLS = ["http://h0", "http://h1", "http://h2", "http://h3"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eject(pool: Balancer, url: str) -> None:
    pool.report(pool.pick(exclude=[b for b in pool.backends if b.url != url]), ok=False)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_retry_widens_to_the_ejected_backends(policy):
    pool = Balancer(URLS, policy=policy, timer=Clock(), rng=random.Random(1), max_fails=1)
    eject(pool, "http://h0")
    eject(pool, "http://h1")
    pool.report(pool.pick(key="k"), True, 0.01, bytes_received=100)
    assert pool.pick(key="k", exclude=["http://h2", "http://h3"]).url in ("http://h0",
                                                                          "http://h1")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_widened_first_pick_leaves_the_other_picks_to_the_usable_backends(policy):
    clock = Clock()
    pool = Balancer(URLS, policy=policy, timer=clock, rng=random.Random(1), max_fails=1,
                    fail_timeout=100, max_ejection_time=100)
    for n in range(300):
        clock.now += 0.001
        pool.report(pool.pick(key=str(n)), True, 0.01, bytes_received=1000)
    eject(pool, "http://h0")                            # a new generation of snapshots
    widened = pool.pick(exclude=URLS[1:])               # its first pick: widened to h0
    assert widened.url == "http://h0"
    counts: collections.Counter[str] = collections.Counter()
    for n in range(3000):
        clock.now += 0.001
        backend = pool.pick(key=str(n))
        counts[backend.url] += 1
        pool.report(backend, True, 0.01, bytes_received=1000)
    pool.report(widened, ok=False)
    assert counts["http://h0"] == 0
    assert all(600 < counts[url] < 1400 for url in URLS[1:]), counts
