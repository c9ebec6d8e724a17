"""Back-off and refresh delays (discovery/backoff.py), with the randomness chosen by the test."""

from __future__ import annotations

import random

import pytest

from lbmiddleware.discovery.backoff import Backoff, refresh_delay


class FixedRandom(random.Random):
    """An rng whose ``random()`` always returns ``value`` (0 = the low edge of the jitter,
    0.5 = no jitter, 1 = the high edge)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_starts_at_one_second_and_grows_by_1_6_up_to_120():
    backoff = Backoff(rng=FixedRandom(0.5))
    delays = [backoff.next() for _ in range(14)]
    expected = [min(1.6 ** k, 120.0) for k in range(14)]
    assert delays == pytest.approx(expected)
    assert delays[:4] == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert delays[-3:] == pytest.approx([120.0, 120.0, 120.0])
    assert backoff.retries == 14


def test_backoff_jitter_is_plus_minus_20_percent_around_the_base_even_at_the_cap():
    low, high = Backoff(rng=FixedRandom(0.0)), Backoff(rng=FixedRandom(1.0))
    assert [low.next() for _ in range(3)] == pytest.approx([0.8, 1.28, 2.048])
    assert [high.next() for _ in range(3)] == pytest.approx([1.2, 1.92, 3.072])
    seeded = Backoff(rng=random.Random(7))
    delays = [seeded.next() for _ in range(200)]
    assert all(96.0 <= d <= 144.0 for d in delays[20:])      # gRPC: jitter after the cap
    assert len({round(d, 6) for d in delays[20:]}) > 100      # spread, not in step


def test_backoff_reset_starts_the_next_outage_at_one_second():
    backoff = Backoff(rng=FixedRandom(0.5))
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.retries == 0
    assert backoff.next() == pytest.approx(1.0)


@pytest.mark.parametrize(("ttl", "base"), [
    (None, 5.0),     # unknown TTL: every min_refresh
    (0, 5.0),        # TTL 0: every min_refresh
    (-3, 5.0),
    (1, 5.0),        # below the minimum: clamped up
    (30, 30.0),
    (86400, 300.0),  # above the maximum: clamped down
])
def test_refresh_delay_is_the_ttl_clamped_to_min_and_max(ttl, base):
    assert refresh_delay(ttl, 5.0, 300.0, FixedRandom(0.5)) == pytest.approx(base)
    assert refresh_delay(ttl, 5.0, 300.0, FixedRandom(0.0)) == pytest.approx(base * 0.9)
    assert refresh_delay(ttl, 5.0, 300.0, FixedRandom(1.0)) == pytest.approx(base * 1.1)


def test_refresh_delay_jitter_spreads_within_ten_percent():
    rng = random.Random(3)
    delays = [refresh_delay(60, 5.0, 300.0, rng) for _ in range(500)]
    assert min(delays) >= 54.0 and max(delays) <= 66.0
    assert min(delays) < 55.0 and max(delays) > 65.0
