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
* ``blackhole``: accepted and never answered; the client's read timeout ends the attempt;
* ``status``: answers ``status`` (503 by default: a backend shedding load) after ``delay``.

Responses may have bodies (``sizes``: bytes drawn per request) and a backend a link of so
many bytes per second (``Server(link=)``, FIFO: one response's body after another): the
response head comes after the service time, its body after its turn on the link, and the
attempt ends, reported with its bytes (``bytes_sent`` the request's, ``bytes_received`` the
body's) and the time to its head as latency, when the body is through, as the proxies
report.

Retries are the front-ends' own: each request runs the library's attempt loop
(:class:`lbmiddleware.core.attempts.Attempts` with a ``RetryRule``), so a connect failure is
retried on another backend for any method, a read timeout (the request was sent) only for an
idempotent one, at most ``retries`` times, each on a backend not yet tried, and each retry
spends from the pool's retry budget (``retry_budget=math.inf`` turns it off). ``timeout``
is the request's deadline (``LB_TIMEOUT``): each attempt's read timeout is cut to the time
left (``Attempts.cut``) and the loop starts no retry without time for it.

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
_FAULT_KINDS = ("slow", "refuse", "blackhole", "status")

READ_TIMEOUT = 60.0            # seconds: the front-ends' default read timeout
CONNECT_TIMEOUT = 5.0          # seconds: the front-ends' default connect timeout
_REFUSED = Outcome(ok=False, latency=None, sent=False)         # never reached the backend


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
    delay: float = 0.0     # slow: service time; refuse: time to fail; status: time to answer
    status: int = 503      # status: the answer

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {', '.join(_FAULT_KINDS)}")
        if not self.start < self.end:
            raise ValueError(f"fault window {self.start!r}..{self.end!r} is empty")


@dataclasses.dataclass(frozen=True)
class Server:
    """One simulated backend: service times, workers (None: unlimited), faults, its
    weight and priority (tier) in the pool, and its link's bytes per second (None: bodies
    take no time)."""

    service: Sampler
    workers: int | None = None
    weight: int = 1
    faults: tuple[Fault, ...] = ()
    priority: int = 0
    link: float | None = None

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
    ``latencies`` (arrival to final outcome: the end of the body), ``ok``, ``heads``
    (arrival to the head of the response the client got, or to the error it got; the
    body's time is the difference), ``keys``, response body ``sizes``; per attempt: ``attempts`` as
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
    heads: list[float] = dataclasses.field(default_factory=list)
    keys: list[str | None] = dataclasses.field(default_factory=list)
    sizes: list[int] = dataclasses.field(default_factory=list)

    def measured(self, start: float = 0.0, end: float = math.inf) -> list[int]:
        """Indices of the requests that arrived in ``[start, end)``."""
        return [i for i, t in enumerate(self.arrivals) if start <= t < end]

    @property
    def errors(self) -> int:
        """Requests whose final outcome, after any retries, was a failure."""
        return self.ok.count(False)

    @property
    def attempts_per_request(self) -> float:
        return len(self.attempts) / len(self.arrivals) if self.arrivals else math.nan

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
    __slots__ = ("index", "arrival", "attempts", "size")

    def __init__(self, index: int, arrival: float, attempts: Attempts, size: int) -> None:
        self.index = index
        self.arrival = arrival
        self.attempts = attempts
        self.size = size            # the response body's bytes


class _Attempt:
    __slots__ = ("request", "backend", "server", "sent", "log_index", "head", "cut")

    def __init__(self, request: _Request, backend: lb.Backend, server: int, sent: float,
                 log_index: int) -> None:
        self.request = request
        self.backend = backend
        self.server = server
        self.sent = sent
        self.log_index = log_index
        self.head = 0.0             # when the response head came (a timeout: when it ended)
        self.cut = False            # its read timeout was cut by the request's deadline


def simulate(servers: Sequence[Server], policy: str, *, rate: float, duration: float,
             seed: int, keys: Sequence[str] | Callable[[random.Random], str] | None = None,
             idempotent: bool = True, retries: int = RetryRule.retries,
             read_timeout: float = READ_TIMEOUT, timeout: float = 0.0,
             sizes: Callable[[random.Random], int] | None = None, request_bytes: int = 0,
             probe_interval: float | None = None, probe_timeout: float = 2.0,
             traffic_start: float = 0.0, **options) -> RunResult:
    """Run ``rate`` requests/s from ``traffic_start`` to ``duration`` simulated seconds, then
    drain.

    ``retries``, ``read_timeout`` and ``timeout`` (the request's deadline across its
    attempts, 0: none) are the client's (a front-end's forwarding settings); ``options`` go
    to the core :class:`~lbmiddleware.core.balancer.Balancer` (``max_fails``,
    ``fail_timeout``, ``slow_start``, ``retry_budget``…; the core one: it starts no
    thread, no real prober). ``keys``: sticky keys (for ``ip_hash``), drawn uniformly per
    request from a sequence, or by a function of the run's generator; ``idempotent``:
    every request is a GET (else a POST). ``sizes``: each response body's bytes, drawn per
    request; ``request_bytes``: each request body's. ``probe_interval``: active health
    checks every so many seconds, from time 0 to ``duration`` (see the module's
    docstring), with ``health_check`` set so the pool applies their results.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate {rate!r} and duration {duration!r} must be positive")
    if probe_interval is not None and probe_interval <= 0:
        raise ValueError(f"probe_interval {probe_interval!r} must be positive")
    if not 0 <= traffic_start < duration:
        raise ValueError(f"traffic_start {traffic_start!r} is outside [0, {duration!r})")
    if timeout < 0:
        raise ValueError(f"timeout {timeout!r} must be 0 (none) or positive")
    clock = SimClock()
    world = random.Random(seed)                       # arrivals, service times, keys, sizes
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
    link_free = [0.0] * len(servers)                          # when each link is free
    links = [s.link for s in servers]
    faulty = [bool(s.faults) for s in servers]
    samplers = [s.service for s in servers]
    workers = [s.workers for s in servers]

    arrivals: list[float] = []
    latencies: list[float] = []
    heads: list[float] = []
    ok_list: list[bool] = []
    key_list: list[str | None] = []
    size_list: list[int] = []
    attempts: list[tuple[float, int, bool]] = []
    ejections: list[tuple[float, int]] = []
    ejection_counts = [0] * len(servers)
    probes: list[tuple[float, int, bool]] = []
    jitter = random.Random(seed * 104729 + 3).uniform     # the probes' own: arrivals unchanged

    events: list[tuple] = []
    push, pop = heapq.heappush, heapq.heappop
    sequence = 0
    expovariate = world.expovariate

    def finish(request: _Request, now: float, ok: bool, head: float | None = None) -> None:
        latencies[request.index] = now - request.arrival
        heads[request.index] = (now if head is None else head) - request.arrival
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
        waits = read_timeout
        if timeout:
            waits = request.attempts.cut(CONNECT_TIMEOUT, read_timeout)[1]
            attempt.cut = waits < read_timeout
        fault = servers[index].fault_at(now) if faulty[index] else None
        sequence += 1
        if fault is None:
            service = samplers[index](world)
        elif fault.kind == "slow":
            service = fault.delay
        elif fault.kind == "refuse":
            push(events, (now + fault.delay, sequence, _END, attempt, "connect"))
            return
        elif fault.kind == "status":
            attempt.head = now + fault.delay
            push(events, (attempt.head, sequence, _END, attempt, fault.status))
            return
        else:                                          # blackhole: only the timeout ends it
            attempt.head = now + waits
            push(events, (attempt.head, sequence, _END, attempt, "timeout"))
            return
        limit = workers[index]
        if limit is not None:                          # FIFO: the start is known on arrival
            free = free_at[index]
            start = free[0]
            if start < now:
                start = now
            heapq.heapreplace(free, start + service)
            service = start + service - now
        if service > waits:                            # the backend still does the work
            attempt.head = now + waits
            push(events, (attempt.head, sequence, _END, attempt, "timeout"))
            return
        attempt.head = end = now + service
        link = links[index]
        if link is not None and request.size:          # the body, after those before it
            begin = link_free[index]
            if begin < end:
                begin = end
            end = link_free[index] = begin + request.size / link
        push(events, (end, sequence, _END, attempt, None))

    def failed(attempt: _Attempt, now: float, outcome: Outcome) -> None:
        sent, index, _ = attempts[attempt.log_index]
        attempts[attempt.log_index] = (sent, index, False)
        request = attempt.request
        following = request.attempts.retry(outcome)    # reports it (a status: if it retries)
        row = next(r for r in pool.stats() if r["url"] == attempt.backend.url)
        if row["ejections"] > ejection_counts[index]:
            ejection_counts[index] = row["ejections"]
            ejections.append((now, index))
        if following is not None:
            send(request, following, now)
            return
        if outcome.status is not None:                 # the client gets that response
            request.attempts.end(outcome)
        finish(request, now, False)

    def probe(index: int, now: float) -> None:
        """Send a probe to server ``index``; its result comes back as a _PROBED event."""
        nonlocal sequence
        fault = servers[index].fault_at(now) if faulty[index] else None
        if fault is None or (fault.kind == "slow" and fault.delay < probe_timeout):
            took, ok, reason = (PROBE_TIME if fault is None else fault.delay), True, "status 200"
        elif fault.kind == "refuse":
            took, ok, reason = fault.delay, False, "connection refused"
        elif fault.kind == "status":
            took, ok, reason = fault.delay, False, f"status {fault.status}"
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
    draw_key = keys if callable(keys) else None
    key_count = len(keys) if keys and draw_key is None else 0
    while events:
        now, _, kind, attempt, detail = pop(events)
        clock.now = now
        if kind == _ARRIVAL:
            if draw_key is not None:
                key = draw_key(world)
            else:
                key = keys[int(world.random() * key_count)] if key_count else None
            size = sizes(world) if sizes is not None else 0
            request = _Request(count, now, Attempts(pool, rule, method, key, timeout=timeout,
                                                    timer=clock), size)
            count += 1
            arrivals.append(now)
            latencies.append(math.nan)
            heads.append(math.nan)
            ok_list.append(False)
            key_list.append(key)
            size_list.append(size)
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
            request = attempt.request
            request.attempts.end(Outcome(ok=True, latency=attempt.head - attempt.sent,
                                         bytes_sent=request_bytes,
                                         bytes_received=request.size))
            finish(request, now, True, attempt.head)
        elif detail == "connect":
            failed(attempt, now, _REFUSED)
        elif detail == "timeout":
            failed(attempt, now, Outcome(
                ok=False, latency=None, timeout=True, bytes_sent=request_bytes,
                error=attempt.request.attempts.deadline_text() if attempt.cut else None))
        else:                                          # a status in fail_statuses
            failed(attempt, now, rule.outcome(detail, now - attempt.sent,
                                              bytes_sent=request_bytes))
    return RunResult(arrivals, latencies, ok_list, attempts, ejections, pool, clock.now, log,
                     probes, heads, key_list, size_list)
