"""Slow start's weight factor (Envoy ``slow_start_config``; SEMANTICS part two, "Slow start")."""

import math

import pytest

from lbmiddleware.core.slow_start import ramp_factor
from lbmiddleware.errors import ConfigError


def test_linear_over_the_window_by_default():
    assert ramp_factor(5.0, 10.0) == pytest.approx(0.5)
    assert ramp_factor(2.5, 10.0) == pytest.approx(0.25)
    assert ramp_factor(9.0, 10.0) == pytest.approx(0.9)


def test_full_weight_once_the_window_is_over():
    assert ramp_factor(10.0, 10.0) == 1.0
    assert ramp_factor(1e6, 10.0) == 1.0


def test_off_when_the_window_is_zero():
    assert ramp_factor(0.0, 0.0) == 1.0
    assert ramp_factor(3.0, 0.0) == 1.0


def test_never_below_min_weight_percent():
    assert ramp_factor(1.0, 60.0) == pytest.approx(0.10)      # 1/60 < 10%
    assert ramp_factor(6.0, 60.0) == pytest.approx(0.10)
    assert ramp_factor(12.0, 60.0) == pytest.approx(0.20)
    assert ramp_factor(1.0, 60.0, min_weight_percent=1.0) == pytest.approx(1 / 60)
    assert ramp_factor(30.0, 60.0, min_weight_percent=75.0) == pytest.approx(0.75)


def test_time_counts_from_one_second():
    # t >= 1 s: right after joining (or a clock that went back) the factor is that of 1 s.
    assert ramp_factor(0.0, 4.0) == ramp_factor(1.0, 4.0) == pytest.approx(0.25)
    assert ramp_factor(-5.0, 4.0) == pytest.approx(0.25)


def test_a_window_shorter_than_a_second_never_exceeds_full_weight():
    assert ramp_factor(0.2, 0.5) == 1.0


def test_aggression_bends_the_curve():
    # factor = (t / window) ** (1 / aggression): > 1 favours the newcomer early, < 1 holds it back.
    assert ramp_factor(25.0, 100.0, aggression=2.0) == pytest.approx(0.5)
    assert ramp_factor(50.0, 100.0, aggression=0.5) == pytest.approx(0.25)
    assert ramp_factor(20.0, 100.0, aggression=0.5) == pytest.approx(0.10)   # 0.04 -> the floor
    assert ramp_factor(50.0, 100.0, aggression=1.0) == pytest.approx(0.5)


def test_the_factor_grows_over_the_window_and_stays_in_0_1():
    for aggression in (0.5, 1.0, 3.0):
        values = [ramp_factor(t / 2, 30.0, aggression) for t in range(0, 70)]
        assert values == sorted(values)
        assert all(0.0 < value <= 1.0 for value in values)
        assert values[-1] == 1.0


@pytest.mark.parametrize(("keyword", "value", "name"), [
    ({"window": -1.0}, -1.0, "slow_start"),
    ({"window": math.inf}, math.inf, "slow_start"),
    ({"window": math.nan}, math.nan, "slow_start"),
    ({"aggression": 0.0}, 0.0, "aggression"),
    ({"aggression": -1.0}, -1.0, "aggression"),
    ({"aggression": math.inf}, math.inf, "aggression"),
    ({"min_weight_percent": 0.0}, 0.0, "min_weight_percent"),
    ({"min_weight_percent": 101.0}, 101.0, "min_weight_percent"),
])
def test_bad_values_are_named(keyword, value, name):
    arguments = {"elapsed": 1.0, "window": 10.0, **keyword}
    with pytest.raises(ConfigError, match=f"{name} has value {value!r}"):
        ramp_factor(**arguments)
