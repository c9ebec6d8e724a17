"""Cost of one pick + report per policy, at 3, 100 and 1,000 backends.

Baseline, measured in the same run: ``random.choice`` on a list of the same size. Prints
microseconds per pair, the ratio to the baseline, and the ratio of the 1,000-backend cost to
the 3-backend cost (the policies must be O(1) or O(log N): target <= 1.5x). Target: every
policy <= 3 us per pick + report at 1,000 backends. Exits 1 when a target is missed.

Run: python benchmarks/bench_pick.py [--pairs N] [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lbmiddleware as lb  # noqa: E402

SIZES = (3, 100, 1000)
TARGET_US = 3.0
TARGET_SCALING = 1.5


def time_pairs(pool: lb.Balancer, keys: list[str], pairs: int) -> float:
    """Seconds per pick + report over ``pairs`` pairs (keys cycle)."""
    pick, report = pool.pick, pool.report
    nkeys = len(keys)
    start = time.perf_counter()
    for i in range(pairs):
        backend = pick(key=keys[i % nkeys])
        report(backend, True, 0.01)
    return (time.perf_counter() - start) / pairs


def time_baseline(size: int, pairs: int) -> float:
    items = list(range(size))
    choice = random.Random(1).choice
    start = time.perf_counter()
    for _ in range(pairs):
        choice(items)
    return (time.perf_counter() - start) / pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    keys = [f"198.51.{i // 256 % 256}.{i % 256}" for i in range(4096)]
    results: dict[tuple[str, int], float] = {}
    baseline: dict[int, float] = {}
    for size in SIZES:
        backends = [f"http://10.0.{i // 256}.{i % 256}:8080" for i in range(size)]
        pools = {p: lb.Balancer(backends, policy=p, rng=random.Random(1)) for p in lb.POLICIES}
        for _ in range(args.repeat):      # interleaved rounds; keep each one's best
            baseline[size] = min(baseline.get(size, 1.0), time_baseline(size, args.pairs))
            for policy, pool in pools.items():
                cost = time_pairs(pool, keys, args.pairs)
                results[policy, size] = min(results.get((policy, size), 1.0), cost)

    print(f"pick + report, microseconds (best of {args.repeat} x {args.pairs} pairs); "
          "ratio = cost / random.choice on a list of the same size")
    header = f"{'policy':<12}" + "".join(f"{f'N={n}':>20}" for n in SIZES) + f"{'N=1000 / N=3':>15}"
    print(header)
    print("-" * len(header))
    print(f"{'random.choice':<12}"
          + "".join(f"{baseline[n] * 1e6:>10.2f} us (1.0x)" for n in SIZES))
    failed = []
    for policy in lb.POLICIES:
        row = f"{policy:<12}"
        for n in SIZES:
            cost = results[policy, n]
            row += f"{cost * 1e6:>9.2f} us ({cost / baseline[n]:>4.1f}x)"
        scaling = results[policy, 1000] / results[policy, 3]
        row += f"{scaling:>14.2f}x"
        if results[policy, 1000] * 1e6 > TARGET_US:
            failed.append(
                f"{policy}: {results[policy, 1000] * 1e6:.2f} us at N=1000 > {TARGET_US} us")
        if scaling > TARGET_SCALING:
            failed.append(f"{policy}: N=1000 costs {scaling:.2f}x N=3 > {TARGET_SCALING}x")
        print(row)
    print()
    for line in failed:
        print("MISSED", line)
    if not failed:
        print(f"all targets met: <= {TARGET_US} us at N=1000 and <= {TARGET_SCALING}x the N=3 cost")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
