"""What the httpx transports cost, and how fast the async one is beside the other clients.

1. **Overhead.** Requests per second of an ``httpx.Client`` with the
   ``LoadBalancingTransport`` (one backend) against a plain ``httpx.Client`` calling the
   same backend directly, and the same for ``httpx.AsyncClient`` with the
   ``AsyncLoadBalancingTransport`` (``--concurrency`` tasks), in alternating blocks of the
   same rounds, so that a change of load on the (shared) machine hits both sides; the
   median of the per-round ratios is the result, client CPU per request beside it. Both
   sides use the client's default timeout. Target: the transport's rate >= 95% of the
   plain one (overhead <= 5%).
2. **Beside the others.** Requests per second over 3 backends of the async transport
   (``--concurrency`` tasks), the requests adapter (as many threads sharing a Session) and
   aiohttp (as many tasks on one ``ClientSession``, cycling over the backends' URLs
   itself: it balances nothing), in alternating blocks of the same rounds.

The backends are bench_adapter.py's: an asyncio server per port in a child process,
answering each request with one write, keep-alive; each block is bounded in count and
time. Exits 1 when an overhead target is missed.

Run: python benchmarks/bench_httpx.py [--requests N] [--rounds R] [--concurrency C]
[--only sync|async|others ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import requests  # noqa: E402

from bench_adapter import Backends  # noqa: E402  (the same backends as the adapter's)
from lbmiddleware.adapter import LoadBalancingAdapter  # noqa: E402
from lbmiddleware.transport import (  # noqa: E402
    AsyncLoadBalancingTransport,
    LoadBalancingTransport,
)

TARGET_RATIO = 0.95
PARTS = ("sync", "async", "others")
BLOCK_TIME_LIMIT = 60.0         # seconds: a block that takes longer aborts the run
VHOST = "http://svc/"

# A side sends ``count`` requests and returns (wall, client CPU) seconds.
Side = Callable[[int], tuple[float, float]]


def _check(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"unexpected status {status}")


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    run()
    wall = time.perf_counter() - start
    if wall > BLOCK_TIME_LIMIT:
        raise RuntimeError(f"a block took {wall:.0f} s (limit {BLOCK_TIME_LIMIT:.0f} s)")
    return wall, time.process_time() - cpu


# -- the sides ---------------------------------------------------------------------------------

def sync_side(client: httpx.Client, urls: list[str]) -> Side:
    def side(count: int) -> tuple[float, float]:
        def run() -> None:
            get, n = client.get, len(urls)
            for i in range(count):
                _check(get(urls[i % n]).status_code)
        return _timed(run)
    return side


class LoopThread:
    """An event loop in a thread: async sides run on it, measured from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine):                       # noqa: ANN001, ANN201 - a script
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def async_side(loop: LoopThread, get, urls: list[str], concurrency: int) -> Side:  # noqa: ANN001
    """``concurrency`` tasks sharing ``count`` requests; ``get(url)`` returns a status."""
    async def block(count: int) -> None:
        next_index = iter(range(count))

        async def worker() -> None:
            for i in next_index:
                _check(await get(urls[i % len(urls)]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def side(count: int) -> tuple[float, float]:
        return _timed(lambda: loop.run(block(count)))
    return side


def threaded_side(session: requests.Session, url: str, threads: int) -> Side:
    def side(count: int) -> tuple[float, float]:
        next_index = iter(range(count))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                while True:
                    with lock:
                        if next(next_index, None) is None:
                            return
                    _check(session.get(url, timeout=(5.0, 5.0)).status_code)
            except BaseException as exc:     # noqa: BLE001 - raised below
                errors.append(exc)

        def run() -> None:
            workers = [threading.Thread(target=work) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(BLOCK_TIME_LIMIT)
            if errors:
                raise errors[0]
        return _timed(run)
    return side


# -- the measurement ---------------------------------------------------------------------------

def alternate(sides: dict[str, Side], requests_: int, rounds: int, block: int
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each round: blocks of ``block`` requests per side, the order rotating; req/s and
    client CPU us/request per side and round."""
    for side in sides.values():
        side(min(block, 200))                               # warm up: connections, caches
    rates: dict[str, list[float]] = {name: [] for name in sides}
    cpu_us: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    blocks = max(1, requests_ // block)
    for index in range(rounds):
        wall = dict.fromkeys(sides, 0.0)
        cpu = dict.fromkeys(sides, 0.0)
        for step in range(blocks):
            shift = (index + step) % len(names)
            for name in names[shift:] + names[:shift]:
                spent, used = sides[name](block)
                wall[name] += spent
                cpu[name] += used
        for name in sides:
            rates[name].append(blocks * block / wall[name])
            cpu_us[name].append(1e6 * cpu[name] / (blocks * block))
    return rates, cpu_us


def report(title: str, rates: dict[str, list[float]], cpu_us: dict[str, list[float]]) -> None:
    print(title)
    print(f"   {'side':<22}{'median req/s':>14}{'client CPU us/req':>19}  rounds (req/s)")
    for name in rates:
        print(f"   {name:<22}{statistics.median(rates[name]):>14,.0f}"
              f"{statistics.median(cpu_us[name]):>19.0f}  "
              f"{', '.join(f'{r:,.0f}' for r in rates[name])}")


def overhead_verdict(label: str, rates: dict[str, list[float]], cpu_us: dict[str, list[float]],
                     plain: str, transport: str) -> bool:
    ratios = [t / p for t, p in zip(rates[transport], rates[plain], strict=True)]
    ratio = statistics.median(ratios)
    passed = ratio >= TARGET_RATIO
    extra = [t - p for t, p in zip(cpu_us[transport], cpu_us[plain], strict=True)]
    print(f"   {label}: transport/plain req/s median of rounds {ratio:.3f} (rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}); overhead {100 * (1 - ratio):.1f}% "
          f"(target <= {100 * (1 - TARGET_RATIO):.0f}%)  {'PASS' if passed else 'FAIL'}")
    print(f"   {label}: client CPU per request, transport minus plain, median of rounds "
          f"{statistics.median(extra):+.0f} us (rounds: {', '.join(f'{e:+.0f}' for e in extra)})")
    return passed


def overhead(requests_: int, rounds: int, block: int, concurrency: int,
             parts: set[str]) -> bool:
    passed = True
    if not parts & {"sync", "async"}:
        return passed
    with Backends(1) as backends:
        direct = backends.urls[0] + "/"
        if "sync" in parts:
            passed &= sync_overhead(backends.urls, direct, requests_, rounds, block)
        if "async" in parts:
            passed &= async_overhead(backends.urls, direct, requests_, rounds, block,
                                     concurrency)
    return passed


def sync_overhead(urls: list[str], direct: str, requests_: int, rounds: int,
                  block: int) -> bool:
    plain = httpx.Client()
    balanced = httpx.Client(transport=LoadBalancingTransport(urls))
    rates, cpu_us = alternate({"plain httpx.Client": sync_side(plain, [direct]),
                               "LoadBalancingTransport": sync_side(balanced, [VHOST])},
                              requests_, rounds, block)
    report(f"1a. Sync overhead: {rounds} rounds x {requests_:,} requests per side "
           f"(alternating blocks of {block}), one backend", rates, cpu_us)
    passed = overhead_verdict("sync", rates, cpu_us, "plain httpx.Client",
                              "LoadBalancingTransport")
    print()
    plain.close()
    balanced.close()
    return passed


def async_overhead(urls: list[str], direct: str, requests_: int, rounds: int, block: int,
                   concurrency: int) -> bool:
    loop = LoopThread()
    try:
        async def clients() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
            limits = httpx.Limits(max_connections=concurrency)
            return (httpx.AsyncClient(limits=limits), httpx.AsyncClient(
                transport=AsyncLoadBalancingTransport(urls, limits=limits)))

        plain_async, balanced_async = loop.run(clients())

        async def plain_get(url: str) -> int:
            return (await plain_async.get(url)).status_code

        async def balanced_get(url: str) -> int:
            return (await balanced_async.get(url)).status_code

        rates, cpu_us = alternate(
            {"plain httpx.AsyncClient": async_side(loop, plain_get, [direct], concurrency),
             "AsyncLoadBalancingTransport": async_side(loop, balanced_get, [VHOST],
                                                       concurrency)},
            requests_, rounds, block)
        report(f"1b. Async overhead: {rounds} rounds x {requests_:,} requests per side "
               f"(alternating blocks of {block}), one backend, {concurrency} tasks per side",
               rates, cpu_us)
        passed = overhead_verdict("async", rates, cpu_us, "plain httpx.AsyncClient",
                                  "AsyncLoadBalancingTransport")
        print()
        loop.run(plain_async.aclose())
        loop.run(balanced_async.aclose())
    finally:
        loop.stop()
    return passed


def beside_the_others(requests_: int, rounds: int, block: int, concurrency: int) -> None:
    import aiohttp

    with Backends(3) as backends:
        loop = LoopThread()
        session = requests.Session()
        session.mount(VHOST, LoadBalancingAdapter(backends.urls, pool_maxsize=concurrency))
        try:
            async def clients():                    # noqa: ANN202 - a script
                transport = AsyncLoadBalancingTransport(
                    backends.urls, limits=httpx.Limits(max_connections=concurrency))
                return (httpx.AsyncClient(transport=transport),
                        aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                            limit=concurrency * len(backends.urls))))

            balanced, aio = loop.run(clients())

            async def transport_get(url: str) -> int:
                return (await balanced.get(url)).status_code

            async def aiohttp_get(url: str) -> int:
                async with aio.get(url) as response:
                    await response.read()
                    return response.status

            direct = [url + "/" for url in backends.urls]
            rates, cpu_us = alternate(
                {"AsyncLoadBalancingTransport": async_side(loop, transport_get, [VHOST],
                                                           concurrency),
                 "requests adapter": threaded_side(session, VHOST, concurrency),
                 "aiohttp (no balancing)": async_side(loop, aiohttp_get, direct, concurrency)},
                requests_, rounds, block)
            report(f"2. Beside the others: 3 backends, {concurrency} tasks or threads each, "
                   f"{rounds} rounds x {requests_:,} requests per side", rates, cpu_us)
            loop.run(balanced.aclose())
            loop.run(aio.close())
        finally:
            session.close()
            loop.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds")
    parser.add_argument("--block", type=int, default=500, help="requests per alternating block")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks or threads")
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="run this part only (repeatable): sync (1a), async (1b), "
                             "others (2); all by default")
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)
    passed = overhead(args.requests, args.rounds, args.block, args.concurrency, parts)
    if "others" in parts:
        beside_the_others(args.requests, args.rounds, args.block, args.concurrency)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
