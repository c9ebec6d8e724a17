"""What one policy run measured: the clients' samples and the table's rows, shared by the
terminal tables (runner) and the HTML report."""

from __future__ import annotations

import dataclasses

__all__ = ["Sample", "BackendRow", "PolicyResult", "percentile", "error_kinds"]


@dataclasses.dataclass
class Sample:
    """One client request as the client saw it."""
    client: str
    status: int                  # 0: no response (connection error or timeout)
    backend: str                 # the X-Backend header of the answer, "" if none
    latency: float               # seconds, send to last byte
    after_kill: bool
    at: float = 0.0              # seconds from the run's start to the answer (the report's x)


@dataclasses.dataclass
class BackendRow:
    name: str
    served: int
    p50: float | None
    p99: float | None
    failures: int                # failed attempts seen by the gateway
    ejections: int
    state: str                   # the gateway's at the end: healthy, ejected, probation...
    killed: bool = False         # the backend killed halfway


@dataclasses.dataclass
class PolicyResult:
    policy: str
    planned: int
    requests: int
    seconds: float
    errors: int
    errors_after_kill: int
    requests_after_kill: int
    p50: float | None
    p99: float | None
    rows: list[BackendRow]
    sticky: tuple[int, int, int] | None = None   # ip_hash: (kept, clients of fast/slow, flaky's)
    urls: tuple[str, ...] = ()                   # the gateway's, then each backend's
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)   # "HTTP 502": 3
    samples: list[Sample] = dataclasses.field(default_factory=list, repr=False)  # the report's
    killed_at: float | None = None               # seconds into the run (the report's marker)
    # backend name -> seconds into the run of each of its ejections, the kill's included
    ejected_at: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def error_kinds(errors: list[Sample]) -> dict[str, int]:
    """How many errors of each kind: ``{"HTTP 502": 3, "no response": 1}``."""
    kinds: dict[str, int] = {}
    for sample in errors:
        kind = f"HTTP {sample.status}" if sample.status else "no response"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def percentile(values: list[float], fraction: float) -> float | None:
    """The value below which ``fraction`` of ``values`` lie (nearest rank); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
