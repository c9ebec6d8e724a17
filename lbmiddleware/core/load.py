"""Peak-EWMA latency estimate (Finagle's ``PeakEwma``, Linkerd, tower's ``load::PeakEwma``).

Each backend carries an RTT estimate. A sample above the estimate replaces it at once (the
peak), so a backend that turns slow is avoided immediately; a lower sample pulls the estimate
down with weight ``exp(-elapsed / tau)``, so recovery is gradual. Between samples the estimate
decays towards zero (tower's ``update(0)`` on read), so an avoided backend is tried again in
time. A failure is recorded as a large sample (``failure_penalty``, Linkerd's 5 s), so a
backend that fails fast does not look fast; the k-th failure in a row counts k times the
penalty (see :meth:`PeakEwma.observe_failure`). The cost the policy compares is
``estimate * (in_flight + 1) / weight``.

Each backend's :class:`LatencyEstimate` is written only here.
"""

from __future__ import annotations

import math

__all__ = ["PeakEwma", "LatencyEstimate", "DEFAULT_TAU", "DEFAULT_RTT", "FAILURE_PENALTY"]

DEFAULT_TAU = 10.0        # seconds: decay time constant
DEFAULT_RTT = 0.030       # seconds: estimate of a backend with no sample yet
FAILURE_PENALTY = 5.0     # seconds: the sample a failure counts as


class LatencyEstimate:
    """One backend's RTT estimate (seconds; None before its first sample) at ``stamp``."""

    __slots__ = ("rtt", "stamp")

    def __init__(self) -> None:
        self.rtt: float | None = None
        self.stamp = 0.0


class PeakEwma:
    """The estimator's parameters and rules; the estimates live on each backend's state."""

    __slots__ = ("tau", "default_rtt", "failure_penalty")

    def __init__(self, tau: float = DEFAULT_TAU, default_rtt: float = DEFAULT_RTT,
                 failure_penalty: float = FAILURE_PENALTY) -> None:
        self.tau = tau
        self.default_rtt = default_rtt
        self.failure_penalty = failure_penalty

    def estimate(self, latency: LatencyEstimate, now: float) -> float:
        """The RTT estimate at ``now`` (decayed since the last sample)."""
        rtt = latency.rtt
        if rtt is None:
            return self.default_rtt
        elapsed = now - latency.stamp
        return rtt * math.exp(-elapsed / self.tau) if elapsed > 0 else rtt

    def observe(self, latency: LatencyEstimate, sample: float, now: float) -> None:
        """Fold one sample (seconds) into the estimate."""
        rtt = latency.rtt
        if rtt is None:
            latency.rtt = sample
        else:
            elapsed = now - latency.stamp
            decay = math.exp(-elapsed / self.tau) if elapsed > 0 else 1.0
            if sample > rtt * decay:
                latency.rtt = sample                              # the peak, at once
            else:
                latency.rtt = rtt * decay + sample * (1.0 - decay)
        latency.stamp = now

    def observe_failure(self, latency: LatencyEstimate, now: float, in_a_row: int) -> None:
        """Fold a failure in: the k-th failure in a row is a sample of k x failure_penalty.

        One fixed penalty is not "large" once the other backends carry many requests each:
        at 1,000 requests/s over 10 backends answering in 170 ms, their cost is about
        0.28 s x 18 = 5 s, so a backend refusing connections in 1 ms still drew its full
        tenth of the traffic. After k failures in a row the expected number of failures
        before the next success is k + 1 (Laplace's rule of succession), so the expected
        penalty grows linearly with k; a success ends the run and the scaling with it.
        ``in_a_row`` is k - 1: the failures in a row before this one (passive health's count).
        """
        self.observe(latency, self.failure_penalty * (in_a_row + 1), now)

    def cost(self, latency: LatencyEstimate, in_flight: int, weight: int, now: float) -> float:
        """Expected wait for one more request: estimate x (in_flight + 1) / weight.

        A backend with no sample yet and nothing in flight costs nothing, so a new backend
        gets one probe request at a time until its first sample arrives (with the default
        RTT alone it would never win against backends faster than that default).
        """
        if latency.rtt is None and not in_flight:
            return 0.0
        return self.estimate(latency, now) * (in_flight + 1) / weight
