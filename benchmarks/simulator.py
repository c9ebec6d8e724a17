"""A discrete-event simulator that drives a real :class:`lbmiddleware.Balancer`.

Requests arrive as a Poisson process. Each one is sent where the balancer's pick says, using
only what a real client knows (its own in-flight counts and the outcomes it has reported), and
the outcome is reported through the attempt's completion handle when the attempt ends. The
balancer's ``timer`` is the simulated clock and its ``rng`` is seeded, so a run is a pure
function of its seed.

Each simulated backend is a FIFO queue with its own service-time distribution and a number of
workers (``None``: unlimited, a pure delay). A :class:`Fault` changes a backend for a while:

* ``slow``: every request arriving in the window takes ``delay`` seconds;
* ``refuse``: connection refused, the attempt fails after ``delay`` seconds;
* ``blackhole``: accepted and never answered; the client's read timeout ends the attempt.

Retries are the front-ends' own: each request runs the library's attempt loop
(:class:`lbmiddleware.core.attempts.Attempts` with a ``RetryRule``), so a connect failure is
retried on another backend for any method, a read timeout (the request was sent) only for an
idempotent one, at most ``retries`` times, each on a backend not yet tried.

Active health checks, when ``probe_interval`` is given, are the prober's rules on the simulated
clock: the first probe of backend k of N at k * interval / N, the next one interval +-10% after
the previous one was sent (never before its result: probes of one backend never overlap), each
result handed to ``pool.report_probe``. A probe fails while the backend refuses (after the
fault's delay), black-holes or is slower than ``probe_timeout`` (after the timeout); otherwise
it passes after 1 ms. The probes' jitter has its own seeded generator, so turning probes on
does not change the arrivals or service times.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence

import lbmiddleware as lb
from lbmiddleware.core.attempts import Attempts, Outcome, RetryRule
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import Event

__all__ = [
    "Fault", "Server", "SimClock", "RunResult", "simulate", "percentile",
    "exponential", "lognormal", "constant", "backend_urls",
]

Sampler = Callable[[random.Random], float]

_ARRIVAL, _END, _PROBE, _PROBED = 0, 1, 2, 3
PROBE_TIME = 0.001             # seconds: a passing probe's answer
_FAULT_KINDS = ("slow", "refuse", "blackhole")

READ_TIMEOUT = 60.0            # seconds: the front-ends' default read timeout
_REFUSED = Outcome(ok=False, latency=None, sent=False)         # never reached the backend
_TIMED_OUT = Outcome(ok=False, latency=None, timeout=True)     # sent, never answered


def exponential(mean: float) -> Sampler:
    """Exponential service times with this mean (seconds)."""
    rate = 1.0 / mean
    return lambda rng: rng.expovariate(rate)


def lognormal(median: float, sigma: float) -> Sampler:
    """Log-normal service times with this median (seconds) and shape ``sigma``."""
    mu = math.log(median)
    return lambda rng: rng.lognormvariate(mu, sigma)


def constant(seconds: float) -> Sampler:
    """Every request takes exactly ``seconds``."""
    return lambda rng: seconds


@dataclasses.dataclass(frozen=True)
class Fault:
    """A backend misbehaves from ``start`` to ``end`` (simulated seconds)."""

    kind: str
    start: float
    end: float
    delay: float = 0.0     # slow: service time; refuse: time to fail

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {', '.join(_FAULT_KINDS)}")
        if not self.start < self.end:
            raise ValueError(f"fault window {self.start!r}..{self.end!r} is empty")


@dataclasses.dataclass(frozen=True)
class Server:
    """One simulated backend: service times, workers (None: unlimited), faults, and its
    weight and priority (tier) in the pool."""

    service: Sampler
    workers: int | None = None
    weight: int = 1
    faults: tuple[Fault, ...] = ()
    priority: int = 0

    def fault_at(self, now: float) -> Fault | None:
        for fault in self.faults:
            if fault.start <= now < fault.end:
                return fault
        return None


class SimClock:
    """The simulated time, injected into the balancer as ``timer``."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class RunResult:
    """What one run observed. Per request (in arrival order): ``arrivals``, client-visible
    ``latencies`` (arrival to final outcome) and ``ok``; per attempt: ``attempts`` as
    ``(sent_at, server_index, ok)``; ``ejections`` as ``(time, server_index)``; every event
    the pool sent as ``(time, event)``; ``probes`` as ``(time, server_index, ok)``."""

    arrivals: list[float]
    latencies: list[float]
    ok: list[bool]
    attempts: list[tuple[float, int, bool]]
    ejections: list[tuple[float, int]]
    pool: Balancer
    end_time: float
    events: list[tuple[float, Event]] = dataclasses.field(default_factory=list)
    probes: list[tuple[float, int, bool]] = dataclasses.field(default_factory=list)

    def measured(self, start: float = 0.0, end: float = math.inf) -> list[int]:
        """Indices of the requests that arrived in ``[start, end)``."""
        return [i for i, t in enumerate(self.arrivals) if start <= t < end]

    @property
    def errors(self) -> int:
        """Requests whose final outcome, after any retries, was a failure."""
        return self.ok.count(False)

    def failed_attempts(self, server: int | None = None) -> int:
        return sum(1 for _, index, ok in self.attempts
                   if not ok and (server is None or index == server))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` in 0..1); sorts a copy."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def backend_urls(count: int) -> list[str]:
    """Distinct backend URLs for a simulated pool (never contacted)."""
    return [f"http://10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(count)]


class _Request:
    __slots__ = ("index", "arrival", "attempts")

    def __init__(self, index: int, arrival: float, attempts: Attempts) -> None:
        self.index = index
        self.arrival = arrival
        self.attempts = attempts


class _Attempt:
    __slots__ = ("request", "backend", "server", "sent", "log_index")

    def __init__(self, request: _Request, backend: lb.Backend, server: int, sent: float,
                 log_index: int) -> None:
        self.request = request
        self.backend = backend
        self.server = server
        self.sent = sent
        self.log_index = log_index


def simulate(servers: Sequence[Server], policy: str, *, rate: float, duration: float,
             seed: int, keys: Sequence[str] | None = None, idempotent: bool = True,
             retries: int = RetryRule.retries, read_timeout: float = READ_TIMEOUT,
             probe_interval: float | None = None, probe_timeout: float = 2.0,
             traffic_start: float = 0.0, **options) -> RunResult:
    """Run ``rate`` requests/s from ``traffic_start`` to ``duration`` simulated seconds, then
    drain.

    ``retries`` and ``read_timeout`` are the client's (a front-end's forwarding settings);
    ``options`` go to the core :class:`~lbmiddleware.core.balancer.Balancer` (``max_fails``,
    ``fail_timeout``, ``slow_start``…; the core one: it starts no thread, no real prober).
    ``keys``: sticky keys drawn uniformly per request (for ``ip_hash``); ``idempotent``:
    every request is a GET (else a POST). ``probe_interval``: active health checks every so
    many seconds, from time 0 to ``duration`` (see the module's docstring), with
    ``health_check`` set so the pool applies their results.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate {rate!r} and duration {duration!r} must be positive")
    if probe_interval is not None and probe_interval <= 0:
        raise ValueError(f"probe_interval {probe_interval!r} must be positive")
    if not 0 <= traffic_start < duration:
        raise ValueError(f"traffic_start {traffic_start!r} is outside [0, {duration!r})")
    clock = SimClock()
    world = random.Random(seed)                       # arrivals, service times, keys
    urls = backend_urls(len(servers))
    members = [lb.Backend(url, weight=s.weight, priority=s.priority)
               for url, s in zip(urls, servers, strict=True)]
    if probe_interval is not None:
        options = {"health_check": "/healthz", "health_check_interval": probe_interval,
                   "health_check_timeout": probe_timeout, **options}
    pool = Balancer(members, policy=policy, timer=clock, rng=random.Random(seed * 7919 + 1),
                    **options)
    log: list[tuple[float, Event]] = []
    pool.subscribe(lambda event: log.append((clock.now, event)))
    rule = RetryRule(retries=retries)
    method = "GET" if idempotent else "POST"
    server_of = {backend.url: i for i, backend in enumerate(members)}
    free_at = [[0.0] * (s.workers or 1) for s in servers]   # heap: when each worker is free
    faulty = [bool(s.faults) for s in servers]
    samplers = [s.service for s in servers]
    workers = [s.workers for s in servers]

    arrivals: list[float] = []
    latencies: list[float] = []
    ok_list: list[bool] = []
    attempts: list[tuple[float, int, bool]] = []
    ejections: list[tuple[float, int]] = []
    ejection_counts = [0] * len(servers)
    probes: list[tuple[float, int, bool]] = []
    jitter = random.Random(seed * 104729 + 3).uniform     # the probes' own: arrivals unchanged

    events: list[tuple] = []
    push, pop = heapq.heappush, heapq.heappop
    sequence = 0
    expovariate = world.expovariate

    def finish(request: _Request, now: float, ok: bool) -> None:
        latencies[request.index] = now - request.arrival
        ok_list[request.index] = ok

    def start(request: _Request, now: float) -> None:
        try:
            backend = request.attempts.start()
        except lb.NoHealthyBackend:
            finish(request, now, False)
            return
        send(request, backend, now)

    def send(request: _Request, backend: lb.Backend, now: float) -> None:
        nonlocal sequence
        index = server_of[backend.url]
        attempt = _Attempt(request, backend, index, now, len(attempts))
        attempts.append((now, index, True))
        fault = servers[index].fault_at(now) if faulty[index] else None
        if fault is None:
            service = samplers[index](world)
        elif fault.kind == "slow":
            service = fault.delay
        elif fault.kind == "refuse":
            sequence += 1
            push(events, (now + fault.delay, sequence, _END, attempt, "connect"))
            return
        else:                                          # blackhole: only the timeout ends it
            sequence += 1
            push(events, (now + read_timeout, sequence, _END, attempt, "timeout"))
            return
        limit = workers[index]
        if limit is not None:                          # FIFO: the start is known on arrival
            free = free_at[index]
            start = free[0]
            if start < now:
                start = now
            heapq.heapreplace(free, start + service)
            service = start + service - now
        sequence += 1
        if service <= read_timeout:
            push(events, (now + service, sequence, _END, attempt, None))
        else:                                          # the backend still does the work
            push(events, (now + read_timeout, sequence, _END, attempt, "timeout"))

    def failed(attempt: _Attempt, now: float, connect: bool) -> None:
        sent, index, _ = attempts[attempt.log_index]
        attempts[attempt.log_index] = (sent, index, False)
        request = attempt.request
        following = request.attempts.retry(_REFUSED if connect else _TIMED_OUT)  # reports it
        row = next(r for r in pool.stats() if r["url"] == attempt.backend.url)
        if row["ejections"] > ejection_counts[index]:
            ejection_counts[index] = row["ejections"]
            ejections.append((now, index))
        if following is None:
            finish(request, now, False)
        else:
            send(request, following, now)

    def probe(index: int, now: float) -> None:
        """Send a probe to server ``index``; its result comes back as a _PROBED event."""
        nonlocal sequence
        fault = servers[index].fault_at(now) if faulty[index] else None
        if fault is None or (fault.kind == "slow" and fault.delay < probe_timeout):
            took, ok, reason = (PROBE_TIME if fault is None else fault.delay), True, "status 200"
        elif fault.kind == "refuse":
            took, ok, reason = fault.delay, False, "connection refused"
        else:
            took, ok, reason = probe_timeout, False, f"timeout after {probe_timeout:g}s"
        sequence += 1
        push(events, (now + took, sequence, _PROBED, None, (index, ok, reason, now)))

    def probed(detail: tuple[int, bool, str, float], now: float) -> None:
        nonlocal sequence
        index, ok, reason, sent = detail
        probes.append((now, index, ok))
        pool.report_probe(members[index], ok, reason)
        assert probe_interval is not None
        following = max(now, sent + probe_interval * jitter(0.9, 1.1))
        if following < duration:                       # bounded: no probe after the run
            sequence += 1
            push(events, (following, sequence, _PROBE, None, index))

    count = 0
    next_arrival = traffic_start + expovariate(rate)
    if next_arrival < duration:
        push(events, (next_arrival, 0, _ARRIVAL, None, None))
    if probe_interval is not None:
        for index in range(len(servers)):              # HAProxy's spreading
            sequence += 1
            push(events, (index * probe_interval / len(servers), sequence, _PROBE, None, index))
    key_count = len(keys) if keys else 0
    while events:
        now, _, kind, attempt, detail = pop(events)
        clock.now = now
        if kind == _ARRIVAL:
            key = keys[int(world.random() * key_count)] if key_count else None
            request = _Request(count, now, Attempts(pool, rule, method, key))
            count += 1
            arrivals.append(now)
            latencies.append(math.nan)
            ok_list.append(False)
            following = now + expovariate(rate)
            if following < duration:
                sequence += 1
                push(events, (following, sequence, _ARRIVAL, None, None))
            start(request, now)
        elif kind == _PROBE:
            probe(detail, now)
        elif kind == _PROBED:
            probed(detail, now)
        elif detail is None:
            attempt.request.attempts.end(Outcome(ok=True, latency=now - attempt.sent))
            finish(attempt.request, now, True)
        else:
            failed(attempt, now, connect=detail == "connect")
    return RunResult(arrivals, latencies, ok_list, attempts, ejections, pool, clock.now, log,
                     probes)
