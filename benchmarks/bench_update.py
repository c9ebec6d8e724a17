"""Cost of Balancer.update() at 10, 100 and 1,000 backends, per policy.

A source (DNS, SRV, etcd) hands the pool its whole set on every refresh, most often the same
one: an unchanged set must be a no-op (no rebuild, no event), whatever its order. One backend
added or removed rebuilds the policy's view (the Maglev table for ip_hash). Measured twice: the
static list (``update(backends)``) and a source's set (``update(backends, source=...)``, the
backends as a DNS watcher builds them: the address in the URL, the name as server_name), on
the core Balancer (no watcher, no prober).

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
from lbmiddleware.core.balancer import Balancer  # noqa: E402

SIZES = (10, 100, 1000)
TARGET_UNCHANGED = 1.0        # x building the list
TARGET_CHANGE = 10.0          # x building the list, one added or one removed (not ip_hash)
CASES = ("unchanged", "one added", "one removed")
SOURCE = "dns+http://orders.internal:8080"
MODES = ("static", "source")


def urls(count: int) -> list[str]:
    return [f"http://10.1.{i // 250}.{i % 250 + 1}:8080" for i in range(count)]


def per_call(call: Callable[[], object], calls: int) -> float:
    """Seconds per call over ``calls`` calls in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


class Bench:
    """One pool (a policy, a size, the static list or a source) and its timed updates."""

    def __init__(self, size: int, policy: str, mode: str = "static") -> None:
        if mode == "static":
            members = tuple(lb.Backend(url) for url in urls(size))
            extra = lb.Backend("http://10.9.9.9:8080")
            pool = Balancer(list(members), policy=policy, rng=random.Random(1))
            self.update: Callable[[tuple[lb.Backend, ...]], None] = pool.update
        else:
            def backend(url: str) -> lb.Backend:
                return lb.Backend(url, server_name="orders.internal", source=SOURCE)
            members = tuple(backend(url) for url in urls(size))
            extra = backend("http://10.9.9.9:8080")
            pool = Balancer([SOURCE], policy=policy, rng=random.Random(1))
            source = lb.Source(SOURCE)
            self.update = lambda backends: pool.update(backends, source=source)
            self.update(members)
        self.members = members
        self.shuffled = tuple(reversed(members))   # the same set, as another DNS answer orders it
        self.larger = members + (extra,)
        self.events: list[object] = []
        pool.subscribe(self.events.append)
        # Enough unchanged calls per round for the clock's resolution; changes one at a time
        # (each is a rebuild), alternating so every timed call is a real change.
        self.calls = max(10, 20_000 // size)
        self.changes = 3 if policy == "ip_hash" and size >= 1000 else 10
        self.best = {case: 1.0 for case in CASES}

    def round(self) -> None:
        """Time each case once more; keep the best (the least disturbed) per case."""
        update, best = self.update, self.best
        best["unchanged"] = min(best["unchanged"],
                                per_call(lambda: update(self.shuffled), self.calls))
        added, removed = [], []
        for _ in range(self.changes):
            added.append(per_call(lambda: update(self.larger), 1))
            removed.append(per_call(lambda: update(self.members), 1))
        best["one added"] = min(best["one added"], statistics.median(added))
        best["one removed"] = min(best["one removed"], statistics.median(removed))

    def unchanged_events(self) -> int:
        """Events sent by ``calls`` unchanged updates (must be 0)."""
        self.update(self.members)
        before = len(self.events)
        for _ in range(self.calls):
            self.update(self.shuffled)
        return len(self.events) - before


def measure(size: int, policy: str, repeat: int, mode: str = "static") -> dict[str, float]:
    """Best-of-``repeat`` seconds per update for each case, and the events an unchanged
    update sent (``"events"``). ``mode``: the static list, or a source's set."""
    bench = Bench(size, policy, mode)
    for _ in range(repeat):
        bench.round()
    return {**bench.best, "events": float(bench.unchanged_events())}


def time_baseline(size: int) -> float:
    names = urls(size)
    calls = max(10, 20_000 // size)
    return per_call(lambda: tuple(lb.Backend(url) for url in names), calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    benches = {(mode, policy, size): Bench(size, policy, mode)
               for mode in MODES for size in SIZES for policy in lb.POLICIES}
    baseline = {size: 1.0 for size in SIZES}
    for _ in range(args.repeat):     # interleaved rounds: the baseline sees the same machine
        for size in SIZES:
            baseline[size] = min(baseline[size], time_baseline(size))
        for bench in benches.values():
            bench.round()
    results = {key: {**bench.best, "events": float(bench.unchanged_events())}
               for key, bench in benches.items()}

    print(f"Balancer.update(), microseconds per call (best of {args.repeat} rounds); "
          "ratio = cost / building the list (Backend(url) for each URL) at the same size")
    failed = []
    for mode in MODES:
        print()
        print("the static list: update(backends)" if mode == "static"
              else f"a source's set: update(backends, source={SOURCE!r})")
        header = f"{'policy':<12}{'case':<13}" + "".join(f"{f'N={n}':>22}" for n in SIZES)
        print(header)
        print("-" * len(header))
        print(f"{'baseline':<12}{'build list':<13}"
              + "".join(f"{baseline[n] * 1e6:>12.1f} us (1.0x)".rjust(22) for n in SIZES))
        for policy in lb.POLICIES:
            for case in CASES:
                row = f"{policy:<12}{case:<13}"
                for size in SIZES:
                    cost = results[mode, policy, size][case]
                    ratio = cost / baseline[size]
                    row += f"{cost * 1e6:>12.1f} us ({ratio:>5.2f}x)".rjust(22)
                    where = f"{policy}, {mode}, N={size}"
                    if case == "unchanged" and ratio > TARGET_UNCHANGED:
                        failed.append(f"{where}: an unchanged update costs {ratio:.2f}x "
                                      f"building the list > {TARGET_UNCHANGED}x")
                    if case != "unchanged" and policy != "ip_hash" and ratio > TARGET_CHANGE:
                        failed.append(f"{where}: {case} costs {ratio:.2f}x building the list "
                                      f"> {TARGET_CHANGE}x")
                print(row)
            for size in SIZES:
                sent = results[mode, policy, size]["events"]
                if sent:
                    failed.append(f"{policy}, {mode}, N={size}: an unchanged update sent "
                                  f"{sent:.0f} event(s)")
    print()
    for line in failed:
        print("MISSED", line)
    if not failed:
        print(f"all targets met: an unchanged set <= {TARGET_UNCHANGED}x building it and no "
              f"event; one added or removed <= {TARGET_CHANGE}x (ip_hash: reported)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
