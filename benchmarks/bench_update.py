"""Cost of Balancer.update() at 10, 100 and 1,000 backends, per policy.

A source (DNS, SRV, etcd) hands the pool its whole set on every refresh, most often the same
one: an unchanged set must be a no-op (no rebuild, no event), whatever its order. One backend
added or removed rebuilds the policy's view (the Maglev table for ip_hash).

Baseline, measured in the same run: building the list itself, ``Backend(url)`` for every URL,
which is what a source does before it calls update(). Prints microseconds per call and the
ratio to the baseline at the same size. Targets: an unchanged set (listed in reverse) costs no
more than building it (ratio <= 1) and sends no event; one added or removed costs at most
``TARGET_CHANGE`` times building the list, but for ip_hash (a 65,537-slot table is rebuilt:
reported, no target). Exits 1 when a target is missed.

Run: python benchmarks/bench_update.py [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lbmiddleware as lb  # noqa: E402

SIZES = (10, 100, 1000)
TARGET_UNCHANGED = 1.0        # x building the list
TARGET_CHANGE = 10.0          # x building the list, one added or one removed (not ip_hash)
CASES = ("unchanged", "one added", "one removed")


def urls(count: int) -> list[str]:
    return [f"http://10.1.{i // 250}.{i % 250 + 1}:8080" for i in range(count)]


def per_call(call: Callable[[], object], calls: int) -> float:
    """Seconds per call over ``calls`` calls in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def measure(size: int, policy: str, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` seconds per update for each case, and whether an event was sent
    by an unchanged update (``"events"``: their count)."""
    members = tuple(lb.Backend(url) for url in urls(size))
    shuffled = tuple(reversed(members))       # the same set, as another DNS answer orders it
    larger = members + (lb.Backend("http://10.9.9.9:8080"),)
    pool = lb.Balancer(list(members), policy=policy, rng=random.Random(1))
    events: list[object] = []
    pool.subscribe(events.append)
    # Enough unchanged calls per round for the clock's resolution; changes one at a time
    # (each is a rebuild), alternating so every timed call is a real change.
    calls = max(10, 20_000 // size)
    changes = 3 if policy == "ip_hash" and size >= 1000 else 10
    best = {case: 1.0 for case in CASES}
    for _ in range(repeat):
        best["unchanged"] = min(best["unchanged"], per_call(lambda: pool.update(shuffled), calls))
        added, removed = [], []
        for _ in range(changes):
            added.append(per_call(lambda: pool.update(larger), 1))
            removed.append(per_call(lambda: pool.update(members), 1))
        best["one added"] = min(best["one added"], statistics.median(added))
        best["one removed"] = min(best["one removed"], statistics.median(removed))
    unchanged_events = 0
    pool.update(members)
    before = len(events)
    for _ in range(calls):
        pool.update(shuffled)
    unchanged_events = len(events) - before
    return {**best, "events": float(unchanged_events)}


def time_baseline(size: int, repeat: int) -> float:
    names = urls(size)
    calls = max(10, 20_000 // size)
    return min(per_call(lambda: tuple(lb.Backend(url) for url in names), calls)
               for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    baseline = {size: time_baseline(size, args.repeat) for size in SIZES}
    results = {(policy, size): measure(size, policy, args.repeat)
               for size in SIZES for policy in lb.POLICIES}

    print(f"Balancer.update(), microseconds per call (best of {args.repeat} rounds); "
          "ratio = cost / building the list (Backend(url) for each URL) at the same size")
    header = f"{'policy':<12}{'case':<13}" + "".join(f"{f'N={n}':>22}" for n in SIZES)
    print(header)
    print("-" * len(header))
    print(f"{'baseline':<12}{'build list':<13}"
          + "".join(f"{baseline[n] * 1e6:>12.1f} us (1.0x)" for n in SIZES))
    failed = []
    for policy in lb.POLICIES:
        for case in CASES:
            row = f"{policy:<12}{case:<13}"
            for size in SIZES:
                cost = results[policy, size][case]
                ratio = cost / baseline[size]
                row += f"{cost * 1e6:>12.1f} us ({ratio:>5.2f}x)"[-22:].rjust(22)
                if case == "unchanged" and ratio > TARGET_UNCHANGED:
                    failed.append(f"{policy}: unchanged update at N={size} costs {ratio:.2f}x "
                                  f"building the list > {TARGET_UNCHANGED}x")
                if case != "unchanged" and policy != "ip_hash" and ratio > TARGET_CHANGE:
                    failed.append(f"{policy}: {case} at N={size} costs {ratio:.2f}x building "
                                  f"the list > {TARGET_CHANGE}x")
            print(row)
        for size in SIZES:
            if results[policy, size]["events"]:
                failed.append(f"{policy}: an unchanged update at N={size} sent "
                              f"{results[policy, size]['events']:.0f} event(s)")
    print()
    for line in failed:
        print("MISSED", line)
    if not failed:
        print(f"all targets met: an unchanged set <= {TARGET_UNCHANGED}x building it and no "
              f"event; one added or removed <= {TARGET_CHANGE}x (ip_hash: reported)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
