"""What the fleet benchmarks measure alike (bench_dns.py, bench_probes.py): the cost of a
pick + report pair while a background task runs, and the CPU share of that task."""

from __future__ import annotations

import os
import time

from lbmiddleware.core.balancer import Balancer


def pick_report(pool: Balancer, seconds: float) -> tuple[int, float]:
    """Pick + report pairs for about ``seconds``: (pairs, wall seconds)."""
    pick, report = pool.pick, pool.report
    pairs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            backend = pick()
            report(backend, True, 0.01)
        pairs += 1000
        now = time.perf_counter()
        if now >= deadline:
            return pairs, now - start


def mean_us(rounds: list[tuple[int, float]]) -> float:
    """Microseconds per pair over ``pick_report`` rounds."""
    return sum(wall for _, wall in rounds) / sum(pairs for pairs, _ in rounds) * 1e6


def cpu_share(seconds: float) -> tuple[float, float, float, float]:
    """(process CPU seconds, of which user and system, wall seconds) while this thread
    sleeps ``seconds``."""
    cpu, times, wall = time.process_time(), os.times(), time.perf_counter()
    time.sleep(seconds)
    end = os.times()
    return (time.process_time() - cpu, end.user - times.user, end.system - times.system,
            time.perf_counter() - wall)
