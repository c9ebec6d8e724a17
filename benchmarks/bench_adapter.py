"""What the requests adapter costs, and whether it keeps connections alive per backend.

1. **Overhead.** Requests per second of a ``requests.Session`` with the
   ``LoadBalancingAdapter`` (one backend) against a plain Session calling the same backend
   directly, in alternating rounds of the same run; the median of each side is compared.
   Each round alternates blocks of 500 requests between the two sides, so a change of load
   on the (shared) machine hits both; the median of the per-round ratios is the result.
   Client CPU per request is printed too. Both sides pass the same ``timeout`` (the
   adapter's default when none is given) and name their host (``http://localhost:PORT/``
   and ``http://svc/``: requests parses a name, IDNA included, but not an IP). Target: the
   adapter's rate >= 95% of the plain one (overhead <= 5%).
2. **Connections.** With 3 backends, TCP connections the backends accept over 10,000
   requests through the adapter, from one thread and from 8 threads sharing the Session.
   Target: <= ``pool_maxsize`` per backend. For contrast, a plain ``HTTPAdapter`` with
   ``pool_connections=1`` cycling over the same 3 hosts (requests issue #1871's setting)
   opens a new connection nearly every time.

The backends run in a child process (an asyncio server answering each request with one
write, keep-alive), so the client's measurement does not share its interpreter with them.
Exits 1 when a target is missed.

Run: python benchmarks/bench_adapter.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

from lbmiddleware.adapter import LoadBalancingAdapter  # noqa: E402

TARGET_RATIO = 0.95
CONNECTION_REQUESTS = 10_000
CONTRAST_REQUESTS = 1_000
THREADS = 8
POOL_MAXSIZE = 10
# Both sides pass the same timeout: the adapter's defaults (connect 5 s, read 60 s). A
# timeout makes every socket call poll first, which a plain call without one skips.
TIMEOUT = (5.0, 60.0)
ROUND_TIME_LIMIT = 120.0       # seconds: a round that takes longer than this aborts the run
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"\r\nok")


# -- the backends (child process) ---------------------------------------------------------

def serve(count: int, ports, connections, ready, stop) -> None:
    """Run ``count`` keep-alive backends on loopback; publish ports and connection counts."""

    async def main() -> None:
        servers = []
        for index in range(count):
            async def handle(reader, writer, index=index):
                connections[index] += 1
                try:
                    while True:
                        head = await reader.readuntil(b"\r\n\r\n")
                        if not head:
                            break
                        writer.write(RESPONSE)
                        await writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    pass        # the client left, or the run is over
                finally:
                    writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            ports[index] = server.sockets[0].getsockname()[1]
            servers.append(server)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for server in servers:
            server.close()

    asyncio.run(main())


class Backends:
    """``count`` backends in a child process; ``urls`` and ``connections()``."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._ports = context.Array("i", count)
        self._connections = context.Array("i", count, lock=False)
        self._ready, self._stop = context.Event(), context.Event()
        self._process = context.Process(
            target=serve, args=(count, self._ports, self._connections, self._ready, self._stop),
            daemon=True)

    def __enter__(self) -> Backends:
        self._process.start()
        if not self._ready.wait(timeout=30):
            self._process.kill()
            raise RuntimeError("the backends did not start within 30 s")
        self.urls = [f"http://127.0.0.1:{port}" for port in self._ports]
        return self

    def connections(self) -> list[int]:
        return list(self._connections)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()


# -- the client ---------------------------------------------------------------------------

def run(session: requests.Session, urls: list[str], requests_: int) -> tuple[float, float]:
    """Send ``requests_`` GETs cycling over ``urls``; return (wall, client CPU) seconds."""
    get = session.get
    count = len(urls)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(requests_):
        response = get(urls[i % count], timeout=TIMEOUT)
        if response.status_code != 200:
            raise RuntimeError(f"unexpected status {response.status_code}")
        if i % 500 == 0 and time.perf_counter() - start > ROUND_TIME_LIMIT:
            raise RuntimeError(f"a round took more than {ROUND_TIME_LIMIT:.0f} s; aborting")
    return time.perf_counter() - start, time.process_time() - cpu


def overhead(requests_: int, rounds: int, block: int) -> bool:
    """Both sides in the same rounds, in alternating blocks, so load changes hit both."""
    with Backends(1) as backends:
        direct = [url.replace("127.0.0.1", "localhost") + "/" for url in backends.urls]
        sides = {"plain": (requests.Session(), direct),
                 "adapter": (requests.Session(), ["http://svc/"])}
        sides["adapter"][0].mount("http://svc/", LoadBalancingAdapter(backends.urls))
        for session, urls in sides.values():                  # warm up both
            run(session, urls, 200)
        rates: dict[str, list[float]] = {"plain": [], "adapter": []}
        cpu_us: dict[str, list[float]] = {"plain": [], "adapter": []}
        for index in range(rounds):
            wall = dict.fromkeys(sides, 0.0)
            cpu = dict.fromkeys(sides, 0.0)
            for step in range(max(1, requests_ // block)):
                order = ("plain", "adapter") if (index + step) % 2 == 0 else ("adapter", "plain")
                for side in order:
                    session, urls = sides[side]
                    spent, used = run(session, urls, block)
                    wall[side] += spent
                    cpu[side] += used
            done = max(1, requests_ // block) * block
            for side in sides:
                rates[side].append(done / wall[side])
                cpu_us[side].append(1e6 * cpu[side] / done)
    ratios = [a / p for a, p in zip(rates["adapter"], rates["plain"], strict=True)]
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median(p / a for a, p in zip(cpu_us["adapter"], cpu_us["plain"],
                                                        strict=True))
    print(f"1. Overhead: {rounds} rounds x {done:,} requests per side (alternating blocks of "
          f"{block}), one backend")
    print(f"   {'side':<10}{'median req/s':>14}{'client CPU us/req':>19}  rounds (req/s)")
    for side in sides:
        print(f"   {side:<10}{statistics.median(rates[side]):>14,.0f}"
              f"{statistics.median(cpu_us[side]):>19.0f}  "
              f"{', '.join(f'{r:,.0f}' for r in rates[side])}")
    print(f"   adapter/plain req/s: median of rounds {ratio:.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"   plain/adapter client CPU per request: {cpu_ratio:.3f}")
    print(f"   overhead {100 * (1 - ratio):.1f}% (target <= {100 * (1 - TARGET_RATIO):.0f}%)  "
          f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    return ratio >= TARGET_RATIO


def threaded(session: requests.Session, url: str, total: int, threads: int) -> None:
    per_thread = total // threads
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run(session, [url], per_thread)
        except BaseException as exc:     # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=ROUND_TIME_LIMIT)
    if errors:
        raise errors[0]


def connections() -> bool:
    ok = True
    print(f"2. Connections accepted per backend, 3 backends, pool_maxsize={POOL_MAXSIZE}")
    print(f"   {'client':<58}{'requests':>9}  {'connections per backend':<24}{'max/pool'}")
    for label, threads in (("adapter, 1 thread", 1), (f"adapter, {THREADS} threads", THREADS)):
        with Backends(3) as backends:
            session = requests.Session()
            session.mount("http://svc/",
                          LoadBalancingAdapter(backends.urls, pool_maxsize=POOL_MAXSIZE))
            threaded(session, "http://svc/", CONNECTION_REQUESTS, threads)
            counts = backends.connections()
        passed = max(counts) <= POOL_MAXSIZE
        ok &= passed
        print(f"   {label:<58}{CONNECTION_REQUESTS:>9,}  {str(counts):<24}"
              f"{max(counts) / POOL_MAXSIZE:.1f}  {'PASS' if passed else 'FAIL'}")
    with Backends(3) as backends:
        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=POOL_MAXSIZE))
        run(session, backends.urls, CONTRAST_REQUESTS)
        counts = backends.connections()
    print(f"   {'contrast: plain HTTPAdapter(pool_connections=1), 3 hosts':<58}"
          f"{CONTRAST_REQUESTS:>9,}  {str(counts):<24}{max(counts) / POOL_MAXSIZE:.1f}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds")
    parser.add_argument("--block", type=int, default=500, help="requests per alternating block")
    args = parser.parse_args(argv)
    passed = overhead(args.requests, args.rounds, args.block)
    print()
    passed &= connections()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
