"""Tier loads by Envoy's overprovisioning rule (SEMANTICS part two, "Tiers"), and draws."""

import pytest

from lbmiddleware.core.tiers import draw_tier, tier_loads
from lbmiddleware.errors import ConfigError

F = 1.4


def test_one_tier_takes_everything_while_any_backend_is_usable():
    assert tier_loads([(10, 10)], F) == (100,)
    assert tier_loads([(10, 1)], F) == (100,)      # leftover goes back to the only tier


def test_half_of_the_primary_usable_splits_70_30():
    assert tier_loads([(10, 5), (4, 4)], F) == (70, 30)
    assert tier_loads([(2, 1), (1, 1)], F) == (70, 30)


def test_primary_takes_everything_from_one_over_f_usable():
    # 5/7 = 71.4% usable: 100 * 1.4 * 5 / 7 = 100 exactly (no float shortfall to 99).
    assert tier_loads([(7, 5), (3, 3)], F) == (100, 0)
    assert tier_loads([(100, 72), (3, 3)], F) == (100, 0)
    # Just below: 71% of 100 backends gives floor(99.4) = 99.
    assert tier_loads([(100, 71), (3, 3)], F) == (99, 1)


def test_a_factor_that_floats_cannot_hold_still_gives_the_exact_floor():
    # 100 * 2.3 * 2 / 5 is 91.99999999999999 in floats; the rule's value is 92.
    assert tier_loads([(5, 2), (1, 1)], 2.3) == (92, 8)


def test_loads_are_handed_out_in_priority_order():
    # tier 0: 1/10 usable -> 14; tier 1: 2/10 -> 28; tier 2: all -> the remaining 58.
    assert tier_loads([(10, 1), (10, 2), (10, 10)], F) == (14, 28, 58)
    # tier 1 healthy enough to take all the rest: tier 2 gets nothing.
    assert tier_loads([(10, 1), (10, 10), (10, 10)], F) == (14, 86, 0)


def test_leftover_after_the_last_tier_goes_to_the_first_tier_with_usable_backends():
    # 14 + 28 = 42: the 58 left over go to tier 0, the first with a usable backend.
    assert tier_loads([(10, 1), (10, 2)], F) == (72, 28)
    # tier 0 has no usable backend: the leftover goes to tier 1.
    assert tier_loads([(10, 0), (10, 2), (10, 1)], F) == (0, 86, 14)


def test_no_usable_backend_anywhere_is_panic_all_zero():
    assert tier_loads([(3, 0), (2, 0)], F) == (0, 0)
    assert tier_loads([(3, 0)], F) == (0,)


def test_a_tier_without_members_takes_nothing():
    # every backend of tier 0 is draining: it has no members and tier 1 takes it all.
    assert tier_loads([(0, 0), (2, 2)], F) == (0, 100)


def test_no_overprovisioning_means_loads_follow_the_usable_share():
    assert tier_loads([(10, 9), (10, 10)], 1.0) == (90, 10)


def test_loads_always_sum_to_100_or_0():
    for members in range(1, 9):
        for usable0 in range(members + 1):
            for usable1 in range(4):
                loads = tier_loads([(members, usable0), (3, usable1)], F)
                assert sum(loads) == (100 if usable0 or usable1 else 0)
                assert all(load >= 0 for load in loads)


@pytest.mark.parametrize("counts", [[(2, 3)], [(-1, 0)], [(1, -1)], [(1.5, 1)], [(True, 1)]])
def test_bad_counts_name_the_value(counts):
    with pytest.raises(ValueError, match="tier 0"):
        tier_loads(counts, F)


@pytest.mark.parametrize("factor", [0.9, 0.0, -1.0, float("nan"), float("inf")])
def test_bad_overprovisioning_names_the_value(factor):
    with pytest.raises(ConfigError, match=f"overprovisioning has value {factor!r}"):
        tier_loads([(1, 1)], factor)


def test_no_tier_is_an_error():
    with pytest.raises(ValueError, match="no tier"):
        tier_loads([], F)


def test_draw_by_point():
    loads = (70, 30)
    assert draw_tier(loads, 0.0) == 0
    assert draw_tier(loads, 69.999) == 0
    assert draw_tier(loads, 70.0) == 1
    assert draw_tier(loads, 99.999) == 1


def test_draw_skips_tiers_without_load():
    assert draw_tier((0, 100), 0.0) == 1
    assert draw_tier((0, 86, 14), 85.9) == 1
    assert draw_tier((0, 86, 14), 86.0) == 2
    assert draw_tier((100, 0, 0), 99.99) == 0


def test_draws_follow_the_loads():
    counts = [0, 0]
    for i in range(1000):
        counts[draw_tier((70, 30), i / 10)] += 1
    assert counts == [700, 300]


@pytest.mark.parametrize("point", [-0.1, 100.0, float("nan")])
def test_point_outside_0_to_100_names_the_value(point):
    with pytest.raises(ValueError, match=f"point {point!r}"):
        draw_tier((70, 30), point)


def test_panic_loads_have_no_tier_to_draw():
    with pytest.raises(ValueError, match="panic"):
        draw_tier((0, 0), 10.0)
