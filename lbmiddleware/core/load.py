"""Peak-EWMA latency estimate (Finagle's ``PeakEwma``, Linkerd, tower's ``load::PeakEwma``).

Each backend carries an RTT estimate. A sample above the estimate replaces it at once (the
peak), so a backend that turns slow is avoided immediately; a lower sample pulls the estimate
down with weight ``exp(-elapsed / tau)``, so recovery is gradual. Between samples the estimate
decays towards zero (tower's ``update(0)`` on read), so an avoided backend is tried again in
time. A failure is recorded as a large sample (``failure_penalty``, Linkerd's 5 s), so a
backend that fails fast does not look fast; the k-th failure in a row counts k times the
penalty (see :meth:`PeakEwma.observe_failure`). The cost the policy compares is
``estimate * (in_flight + share + 1) / weight``, where ``share`` is the backend's part of
the requests the pool keeps in flight as a rule (:class:`UsualInFlight`): with many
requests per backend the estimate weighs more than a few requests more or less.

Each backend's :class:`LatencyEstimate` is written only here.

What operators read is another number: :class:`AnsweredLatency`, the plain time-decayed mean
of the latencies of the attempts that got a response head (no penalty, no decay on read, no
peak), and the histogram counts per :data:`LATENCY_BUCKETS` bound that ``stats()`` shows.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

__all__ = ["PeakEwma", "LatencyEstimate", "UsualInFlight", "AnsweredLatency", "fold_latencies",
           "LATENCY_BUCKETS", "FOLD_STEP", "FOLD_BATCH", "DEFAULT_TAU", "DEFAULT_RTT",
           "FAILURE_PENALTY", "USUAL_TAU"]

DEFAULT_TAU = 10.0        # seconds: decay time constant
DEFAULT_RTT = 0.030       # seconds: estimate of a backend with no sample yet
FAILURE_PENALTY = 5.0     # seconds: the sample a failure counts as
USUAL_TAU = 30.0          # seconds: how slowly the usual in-flight count rises

#: Upper bounds (seconds, inclusive: Prometheus ``le``) of the latency histogram each backend
#: keeps; one more count holds what is above the last. Prometheus client's default buckets
#: with 1 ms and 2.5 ms added below: a pool on a LAN answers in milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a backend's answered latencies wait in a batch before they are counted and folded
#: into its mean (and at every read): each batch is one time for the mean (its start), off
#: by at most this against tau's 10 s.
FOLD_STEP = 1.0
#: A backend whose batch grew beyond this many gets a shorter step in proportion: sorting
#: costs least per sample from a few hundred to about a thousand (more: cache misses).
FOLD_BATCH = 1024
#: Batches this long are sorted and bisected per bound; shorter ones are bisected per sample.
SORT_FROM = 24


class LatencyEstimate:
    """One backend's RTT estimate (seconds; None before its first sample) at ``stamp``."""

    __slots__ = ("rtt", "stamp")

    def __init__(self) -> None:
        self.rtt: float | None = None
        self.stamp = 0.0


class UsualInFlight:
    """How many requests a backend keeps in flight as a rule: the low-water mark of its
    in-flight count, which falls to a lower count at once and rises towards a higher one
    with time constant ``USUAL_TAU``. The pool's usual concurrency is the sum of these
    marks per unit of weight, and a backend's ``share`` of it is that times its weight.

    Why: ``rtt * (in_flight + 1)`` reads every request in flight as one more in a queue.
    That is right for a backend serving one request at a time, and wrong for one serving
    many at once: by Little's law a backend holds its throughput times its latency, and
    its latency estimate was measured with those requests in flight. At 1,000 requests/s
    over 11 backends answering in 170 ms each holds about 18, a healthy one cost 0.28 s x
    19 = 5.3 s, and one that turned 2 s slow, holding the few requests it still drew, cost
    2 s x (k + 1) and kept winning with k <= 1 (balance benchmark, scenario 1: 57 of
    60,000 requests over 1 s, 38 of them sent after its first 2 s answer). Charging every
    backend its share of what the pool keeps in flight besides its own requests, about 9
    here, makes the latency count: 2 s x (k + 10) against 0.28 s x 28 (21-23 requests over
    1 s). The share is the same for every backend per unit of weight, so backends of
    equal latency still balance their in-flight counts by weight. A single-worker queue
    empties often, its mark stays near 0, and a pool of them keeps the classic cost. The
    low-water mark rather than the mean: a pool of such queues at 90% load holds 2.4 each
    on average, and a share of 2.4 blurs which queue is the shorter.
    """

    __slots__ = ("level", "stamp")

    def __init__(self, now: float = 0.0) -> None:
        self.level = 0.0
        self.stamp = now

    def held(self, count: int, now: float, tau: float = USUAL_TAU) -> float:
        """The backend held ``count`` requests in flight since the last call, until ``now``:
        called at each of its picks with the count before it (the mark is sampled where
        requests arrive, which sees the time average: PASTA); returns the change of the
        mark."""
        level = self.level
        elapsed = now - self.stamp
        self.stamp = now
        if count <= level:
            self.level = count
            return count - level
        if elapsed <= 0.0:
            return 0.0
        x = elapsed / tau
        # 1 - exp(-x) ~ x - x^2/2 for small x (the usual case: calls come ms apart and tau
        # is 30 s); exact to 1e-12 relative below 1e-4.
        rise = (count - level) * (x - x * x * 0.5 if x < 1e-4 else 1.0 - math.exp(-x))
        self.level = level + rise
        return rise


class AnsweredLatency:
    """The time-decayed mean latency of one backend's answered attempts (seconds; None
    before the first answer): each sample weighs ``exp(-age / tau)``.

    A decayed sum and a decayed count rather than ``mean += (sample - mean) * (1 - decay)``:
    that form ignores a sample taken at the same clock reading as the previous one (decay
    1), so a burst within one tick of a coarse clock (15 ms on Windows) would count once;
    here every sample counts and the old ones fade alike. Samples come in batches
    (:func:`fold_latencies`), each at one time. Written only by the balancer, under its lock.
    """

    __slots__ = ("total", "weight", "stamp")

    def __init__(self) -> None:
        self.total = 0.0          # sum of samples x exp(-age / tau) at ``stamp``
        self.weight = 0.0         # sum of exp(-age / tau) at ``stamp``
        self.stamp = 0.0

    def add(self, total: float, count: int, at: float, tau: float = DEFAULT_TAU) -> None:
        """Fold in ``count`` samples summing to ``total`` seconds, taken at ``at``."""
        elapsed = at - self.stamp
        if elapsed > 0.0:
            decay = math.exp(-elapsed / tau)
            self.total = self.total * decay + total
            self.weight = self.weight * decay + count
            self.stamp = at
        else:
            self.total += total
            self.weight += count

    @property
    def mean(self) -> float | None:
        """The decayed mean (not decayed further on read: a quiet backend keeps its value)."""
        return self.total / self.weight if self.weight else None


def fold_latencies(counts: list[int], batch: list[float]) -> float:
    """Count ``batch`` (latencies, seconds) into ``counts`` (one per bound of
    :data:`LATENCY_BUCKETS`, then one above: not cumulative), empty it, return its sum.

    The balancer batches the answered latencies of each backend for up to
    :data:`FOLD_STEP` and counts them here, not one by one on report(): pick + report is the
    inner loop, and a batch sorted once (``list.sort`` compares floats natively) is counted
    with one bisection per bound instead of one per sample (about 25 ns a sample instead of
    75 from a few hundred on).
    """
    total = sum(batch)
    if len(batch) < SORT_FROM:
        for sample in batch:
            counts[bisect_left(LATENCY_BUCKETS, sample)] += 1
    else:
        batch.sort()
        below = 0
        for index, bound in enumerate(LATENCY_BUCKETS):
            upto = bisect_right(batch, bound, below)      # samples <= bound: le
            counts[index] += upto - below
            below = upto
        counts[-1] += len(batch) - below
    batch.clear()
    return total


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
        if rtt is None or sample > rtt:
            latency.rtt = sample        # (a peak whatever the decay, which is at most 1)
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
        at 1,000 requests/s over 10 backends answering in 170 ms, their cost was about
        0.28 s x 18 = 5 s (before the pool's share entered the cost), so a backend refusing
        connections in 1 ms still drew its full tenth of the traffic. After k failures in a
        row the expected number of failures before the next success is k + 1 (Laplace's
        rule of succession), so the expected penalty grows linearly with k; a success ends
        the run and the scaling with it.
        ``in_a_row`` is k - 1: the failures in a row before this one (passive health's count).
        """
        self.observe(latency, self.failure_penalty * (in_a_row + 1), now)

    def forget(self, latency: LatencyEstimate) -> None:
        """Drop the estimate: the backend starts over as one with no sample yet."""
        latency.rtt = None

    def cost(self, latency: LatencyEstimate, in_flight: int, weight: int, now: float,
             share: float = 0.0) -> float:
        """Expected wait for one more request:
        estimate x (in_flight + share + 1) / weight.

        ``share``: the backend's part of the requests the pool keeps in flight as a rule
        (see :class:`UsualInFlight`; 0 for the classic cost). A backend with no sample yet
        and nothing in flight costs nothing, so a new backend gets one probe request at a
        time until its first sample arrives (with the default RTT alone it would never win
        against backends faster than that default).
        """
        if latency.rtt is None and not in_flight:
            return 0.0
        return self.estimate(latency, now) * (in_flight + share + 1) / weight
