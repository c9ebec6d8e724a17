"""Slow start: a (re)joining backend's weight ramps up over a window (Envoy ``slow_start_config``).

A backend that just joined has cold caches, an unwarmed JIT, empty connection pools; given its
full share at once it answers slowly or fails, and the policies that favour the fast or the idle
(``least_conn``, ``latency``) would send it even more. So for ``window`` seconds after it
becomes usable (Envoy: when the host becomes healthy), having joined the pool (not at process
start for the initial list: HAProxy) or come back from an ejection or from active-down, its
weight is multiplied by::

    max(min_weight_percent / 100, (max(elapsed, 1) / window) ** (1 / aggression))

Envoy's formula: linear with the default aggression 1.0, faster early above 1, slower below;
never under ``min_weight_percent`` [10] so the newcomer gets some traffic to warm up with,
and time counted from 1 s so its first picks are not nothing. A window spent while the backend
gets no traffic would warm nothing: the balancer starts it only once the backend is usable (an
ejection ending while active checks say down starts nothing; the pass that brings it up does)
and ends it when the backend is ejected or goes down. The balancer applies it to every
weighted policy but ``ip_hash`` (moving sticky keys in and out as a weight grows would defeat
stickiness: nginx and Envoy exempt hashing too).
"""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["ramp_factor"]


def ramp_factor(elapsed: float, window: float, aggression: float = 1.0,
                min_weight_percent: float = 10.0) -> float:
    """The weight multiplier in (0, 1] ``elapsed`` seconds into a slow start of ``window``
    seconds; 1.0 once the window is over, or when it is 0 (slow start off)."""
    if not (math.isfinite(window) and window >= 0.0):
        raise ConfigError(f"slow_start has value {window!r}: not a finite duration (0 or more)")
    if not (math.isfinite(aggression) and aggression > 0.0):
        raise ConfigError(f"aggression has value {aggression!r}: not a finite number above 0")
    if not 0.0 < min_weight_percent <= 100.0:
        raise ConfigError(f"min_weight_percent has value {min_weight_percent!r}: "
                          f"not a percentage in (0, 100]")
    if elapsed >= window:
        return 1.0
    ramp = math.pow(max(elapsed, 1.0) / window, 1.0 / aggression)
    return min(1.0, max(min_weight_percent / 100.0, ramp))
