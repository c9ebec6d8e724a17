"""What a large DNS source costs: a 1,000-record SRV source refreshed every second.

A real dnsmasq (tests/support/dnsmasq.py; Debian's ``dnsmasq-base``) on a loopback port serves
``_http._tcp.big.lb.test`` with ``--records`` SRV records over ten targets (the answer is
truncated over UDP and fetched again over TCP, as a real one of this size is). dnsmasq is a
process of its own, so the CPU measured here is the watcher's alone. This process runs a core
:class:`~lbmiddleware.core.balancer.Balancer` whose members are the source's set, and an
:class:`~lbmiddleware.discovery.dns.SrvWatcher` on an asyncio loop in a thread of its own, as
the fleet runs it (refresh bounds both ``--refresh`` seconds: the TTL of 1 s is clamped to it),
and measures, in one run:

1. pick + report in the main thread without the watcher (the baseline, before and after);
2. the watcher alone: the process's CPU time over wall time while the main thread sleeps
   (100% = one core), and the refreshes it completed per second;
3. pick + report in the main thread while the watcher refreshes (the GIL is shared): the
   ratio to the baseline is the source's effect on the request path.

Every refresh answers the same set, so after its first answer (a no-op ``update()``) the
watcher publishes nothing: what is measured is asking, parsing and comparing. Every process
and thread started is stopped.

Run: python benchmarks/bench_dns.py [--records 1000] [--refresh 1] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from lbmiddleware.core.balancer import Balancer  # noqa: E402
from lbmiddleware.core.settings import Settings  # noqa: E402
from lbmiddleware.discovery.dns import SrvWatcher  # noqa: E402
from measure import cpu_share, mean_us, pick_report  # noqa: E402
from tests.support.dnsmasq import Dnsmasq  # noqa: E402

NAME = "_http._tcp.big.lb.test"
TARGETS = 10


class WatchingThread:
    """A watcher on an asyncio loop in a thread of its own; ``stop()`` cancels and joins it."""

    def __init__(self, watcher: SrvWatcher, pool: Balancer) -> None:
        self.watcher = watcher
        self.pool = pool
        self.published = 0
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name="discovery", daemon=True)

    def publish(self, backends: Any) -> None:
        self.published += 1
        self.pool.update(backends, source=self.watcher.source)

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watcher.run(self.publish, lambda event: None)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError("the discovery thread did not start")

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the discovery thread did not stop")


class CountingWatcher(SrvWatcher):
    """The SRV watcher, counting its answers and their wall time."""

    answers = 0
    answer_seconds = 0.0

    async def ask(self) -> Any:
        start = time.perf_counter()
        answer = await super().ask()
        self.answers += 1
        self.answer_seconds += time.perf_counter() - start
        return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="pick + report rounds per phase")
    parser.add_argument("--policy", default="round_robin")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        server = Dnsmasq(Path(directory))
        for i in range(TARGETS):
            server.set_addresses(f"b{i}.lb.test", [f"127.0.1.{i}"])
        server.set_srv(NAME, [(0, 1, 20000 + i, f"b{i % TARGETS}.lb.test")
                              for i in range(args.records)])
        server.start()
        try:
            return run(args, server)
        finally:
            server.close()


def run(args: Any, server: Dnsmasq) -> int:
    source = f"srv+http://{NAME}"
    settings = Settings(backends=[source], policy=args.policy, dns_servers=server.address,
                        dns_min_refresh=args.refresh, dns_max_refresh=args.refresh)
    pool = Balancer(settings=settings, rng=random.Random(1))
    watcher = CountingWatcher(source, settings, rng=random.Random(2))
    pool.update(asyncio.run(watcher.ask()).backends, source=source)
    members = len(pool.backends)
    watcher.answers, watcher.answer_seconds = 0, 0.0
    round_seconds = args.seconds / args.rounds
    pick_report(pool, 0.3)                                  # warm up
    before = [pick_report(pool, round_seconds) for _ in range(args.rounds)]

    watching = WatchingThread(watcher, pool)
    watching.start()
    try:
        time.sleep(min(1.0, args.refresh))
        answers_at, seconds_at = watcher.answers, watcher.answer_seconds
        cpu, _, _, wall = cpu_share(args.seconds)
        answers = watcher.answers - answers_at
        answer_ms = (watcher.answer_seconds - seconds_at) / max(answers, 1) * 1e3
        during = [pick_report(pool, round_seconds) for _ in range(args.rounds)]
    finally:
        watching.stop()
    after = [pick_report(pool, round_seconds) for _ in range(args.rounds)]

    baseline = mean_us(before + after)
    with_watcher = mean_us(during)
    print(f"SRV source of {args.records} records ({members} backends) refreshed every "
          f"{args.refresh:g} s (+-10%), policy {args.policy}, Python {sys.version.split()[0]}, "
          "default asyncio loop")
    print(f"refreshes: {answers / wall:.2f}/s measured (one every {args.refresh:g} s +-10% "
          f"after the last answer); {answer_ms:.0f} ms wall per answer (main thread asleep); "
          f"sets published: {watching.published} (the first answer, unchanged: a no-op)")
    print(f"watcher CPU (main thread asleep): {cpu:.2f} s over {wall:.2f} s = "
          f"{100 * cpu / wall:.1f}% of one core, {cpu / max(answers, 1) * 1e3:.0f} ms per refresh")
    print(f"pick + report: {baseline:.2f} us without the watcher "
          f"(before {mean_us(before):.2f}, after {mean_us(after):.2f}), "
          f"{with_watcher:.2f} us while it refreshes: ratio {with_watcher / baseline:.2f}x")
    return 0 if members == args.records and watching.published <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
