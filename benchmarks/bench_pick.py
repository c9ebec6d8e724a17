"""Cost of one pick + report per policy, at 3, 100 and 1,000 backends.

Baseline, measured in the same run: ``random.choice`` on a list of the same size. Prints
microseconds per pair, the ratio to the baseline, and the ratio of the 1,000-backend cost to
the 3-backend cost (the policies must be O(1) or O(log N): target <= 1.5x). Target: every
policy <= 3 us per pick + report at 1,000 backends. Exits 1 when a target is missed.

Every report carries 2,048 body bytes (what ``bandwidth`` counts; the others only add them
up). The ``ip_hash c=125%`` row is bounded-load hashing (``hash_balance_factor=125``) with
as many requests held in flight as there are backends (on keys of their own), so that some
homes are full (2 slots each at 1,000 backends) and a share of the picks probes past them:
printed below the table (15-18% at 100 and 1,000 backends).

Then the cost of metrics (``lb.metrics``, when prometheus_client is installed): pick +
report on a pool without a collector, on one registered in a registry, and on one
registered and scraped every ``--scrape-ms`` milliseconds by another thread, in alternating
rounds of ``--round`` seconds; printed as ratios to the pool without (and the cost of one
scrape). Reported, no target.

Run: python benchmarks/bench_pick.py [--pairs N] [--repeat R] [--scrape-ms MS] [--round S]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import lbmiddleware as lb  # noqa: E402
from measure import mean_us, pick_report  # noqa: E402

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

SIZES = (3, 100, 1000)
TARGET_US = 3.0
TARGET_SCALING = 1.5
BODY_BYTES = 2048
BOUNDED = "ip_hash c=125%"
# Row -> (policy, the Balancer's options, requests held in flight per backend).
ROWS: dict[str, tuple[str, dict[str, int], int]] = {
    **{policy: (policy, {}, 0) for policy in lb.POLICIES},
    BOUNDED: ("ip_hash", {"hash_balance_factor": 125}, 1),
}


def time_pairs(pool: lb.Balancer, keys: list[str], pairs: int) -> float:
    """Seconds per pick + report over ``pairs`` pairs (keys cycle)."""
    pick, report = pool.pick, pool.report
    nkeys = len(keys)
    start = time.perf_counter()
    for i in range(pairs):
        backend = pick(key=keys[i % nkeys])
        report(backend, True, 0.01, bytes_received=BODY_BYTES)
    return (time.perf_counter() - start) / pairs


def make_pool(row: str, backends: list[str], keys: list[str]) -> lb.Balancer:
    """The row's pool, with its requests held in flight (on keys of its own)."""
    policy, options, held = ROWS[row]
    pool = lb.Balancer(backends, policy=policy, rng=random.Random(1), **options)
    for i in range(held * len(backends)):
        pool.pick(key=keys[(i * 7919) % len(keys)] + "/held")
    return pool


def time_baseline(size: int, pairs: int) -> float:
    items = list(range(size))
    choice = random.Random(1).choice
    start = time.perf_counter()
    for _ in range(pairs):
        choice(items)
    return (time.perf_counter() - start) / pairs


class Scraping:
    """Another thread scraping ``registry`` (the exposition text, as a /metrics route makes
    it) every ``interval`` seconds while the block runs; counts the scrapes and their time."""

    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        from prometheus_client import generate_latest
        self._scrape = lambda: generate_latest(registry)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0
        self.seconds = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._scrape()
            self.seconds += time.perf_counter() - start
            self.scrapes += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> Scraping:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def metrics_overhead(repeat: int, round_seconds: float, scrape_ms: float) -> list[str]:
    """Lines of the metrics table: per size, pick + report without a collector, with one
    registered, with one registered and scraped every ``scrape_ms`` by another thread."""
    try:
        from prometheus_client import CollectorRegistry
    except ModuleNotFoundError:
        return ["metrics: not measured (prometheus_client is not installed: "
                "pip install 'lbmiddleware[metrics]')"]
    from lbmiddleware.observe import metrics

    lines = [f"pick + report with lb.metrics, microseconds (mean of {repeat} alternating rounds "
             f"of {round_seconds:g} s each); ratio = cost / the same pool without metrics",
             f"{'backends':<10}{'no collector':>14}{'registered':>20}"
             f"{f'scraped every {scrape_ms:g} ms':>28}{'one scrape':>13}"]
    lines.append("-" * len(lines[-1]))
    for size in SIZES:
        backends = [f"http://10.0.{i // 256}.{i % 256}:8080" for i in range(size)]
        pools = {kind: lb.Balancer(backends, rng=random.Random(1))
                 for kind in ("plain", "registered", "scraped")}
        registries = {kind: CollectorRegistry() for kind in ("registered", "scraped")}
        for kind, registry in registries.items():
            metrics.register(pools[kind], registry)
        rounds: dict[str, list[tuple[int, float]]] = {kind: [] for kind in pools}
        scrapes, scrape_seconds = 0, 0.0
        for _ in range(repeat):                   # alternating rounds: same machine noise
            rounds["plain"].append(pick_report(pools["plain"], round_seconds))
            rounds["registered"].append(pick_report(pools["registered"], round_seconds))
            with Scraping(registries["scraped"], scrape_ms / 1000) as scraping:
                rounds["scraped"].append(pick_report(pools["scraped"], round_seconds))
            scrapes += scraping.scrapes
            scrape_seconds += scraping.seconds
        plain = mean_us(rounds["plain"])
        registered = mean_us(rounds["registered"])
        scraped = mean_us(rounds["scraped"])
        lines.append(f"{size:<10}{plain:>11.2f} us{registered:>9.2f} us ({registered / plain:.2f}x)"
                     f"{scraped:>17.2f} us ({scraped / plain:.2f}x)"
                     f"{scrape_seconds / max(scrapes, 1) * 1e3:>10.2f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scrape-ms", type=float, default=100.0,
                        help="the scraping thread's interval (default 100 ms)")
    parser.add_argument("--round", type=float, default=0.5,
                        help="seconds per round of the metrics measurement (default 0.5)")
    args = parser.parse_args(argv)
    keys = [f"198.51.{i // 256 % 256}.{i % 256}" for i in range(4096)]
    results: dict[tuple[str, int], float] = {}
    baseline: dict[int, float] = {}
    overflows: dict[int, int] = {}
    for size in SIZES:
        backends = [f"http://10.0.{i // 256}.{i % 256}:8080" for i in range(size)]
        pools = {row: make_pool(row, backends, keys) for row in ROWS}
        overflows[size] = -pools[BOUNDED].pool_stats()["hash_overflows_total"]
        for _ in range(args.repeat):      # interleaved rounds; keep each one's best
            baseline[size] = min(baseline.get(size, 1.0), time_baseline(size, args.pairs))
            for row, pool in pools.items():
                cost = time_pairs(pool, keys, args.pairs)
                results[row, size] = min(results.get((row, size), 1.0), cost)
        overflows[size] += pools[BOUNDED].pool_stats()["hash_overflows_total"]

    print(f"pick + report, microseconds (best of {args.repeat} x {args.pairs} pairs); "
          "ratio = cost / random.choice on a list of the same size")
    header = f"{'policy':<15}" + "".join(f"{f'N={n}':>20}" for n in SIZES) + f"{'N=1000 / N=3':>15}"
    print(header)
    print("-" * len(header))
    print(f"{'random.choice':<15}"
          + "".join(f"{baseline[n] * 1e6:>10.2f} us (1.0x)" for n in SIZES))
    failed = []
    for name in ROWS:
        row = f"{name:<15}"
        for n in SIZES:
            cost = results[name, n]
            row += f"{cost * 1e6:>9.2f} us ({cost / baseline[n]:>4.1f}x)"
        scaling = results[name, 1000] / results[name, 3]
        row += f"{scaling:>14.2f}x"
        if results[name, 1000] * 1e6 > TARGET_US:
            failed.append(
                f"{name}: {results[name, 1000] * 1e6:.2f} us at N=1000 > {TARGET_US} us")
        if scaling > TARGET_SCALING:
            failed.append(f"{name}: N=1000 costs {scaling:.2f}x N=3 > {TARGET_SCALING}x")
        print(row)
    timed = args.repeat * args.pairs
    print(f"{BOUNDED}: {', '.join(f'{overflows[n] / timed:.1%}' for n in SIZES)} of the "
          f"picks overflowed (N={', '.join(str(n) for n in SIZES)})")
    print()
    for line in failed:
        print("MISSED", line)
    if not failed:
        print(f"all targets met: <= {TARGET_US} us at N=1000 and <= {TARGET_SCALING}x the N=3 cost")
    print()
    for line in metrics_overhead(args.repeat, args.round, args.scrape_ms):
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
