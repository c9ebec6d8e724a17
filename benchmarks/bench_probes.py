"""What active health checks cost: 1,000 backends probed every 2 s.

The backends are real loopback listeners (one port each, 127.0.0.1) served by a child process
(this script with ``--serve``), so the CPU measured here is the prober's alone, never the
servers'. They keep connections alive as HTTP/1.1 servers do (closing after a request that
says ``Connection: close``), so the probes reuse one connection per backend.

This process runs a core :class:`~lbmiddleware.core.balancer.Balancer` with
``health_check="/healthz"`` and a :class:`~lbmiddleware.probes.Prober` on an asyncio loop in a
thread of its own, as the fleet runs it, and measures, in one run:

1. pick + report in the main thread without probing (the baseline, before and after);
2. the prober alone: the process's CPU time over wall time while the main thread sleeps
   (``time.process_time`` / wall; 100% = one core), and the probes it completed per second;
3. pick + report in the main thread while the prober runs (the GIL is shared): the ratio
   to the baseline is the probing's effect on the request path.

Each pick + report phase runs for a fixed time in rounds, alternating with the baseline where
it can; the table gives the mean of each phase (the GIL's effect shows in the mean, not in
the best round). Every phase is bounded in time and every process and thread started is
stopped.

Run: python benchmarks/bench_probes.py [--backends 1000] [--interval 2] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from lbmiddleware.core.backend import Backend  # noqa: E402
from lbmiddleware.core.balancer import Balancer  # noqa: E402
from lbmiddleware.probes import Prober  # noqa: E402
from measure import cpu_share, mean_us, pick_report  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


# -- the servers (child process) ------------------------------------------------------------

class _Health(asyncio.Protocol):
    """An HTTP/1.1 server's keep-alive: the connection stays open after an answer unless
    the request asked for ``Connection: close`` (as a probe that connects each time does)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if b"\r\nconnection: close" in head.lower():
                self.transport.write(CLOSING)
                self.transport.close()
                self.transport = None
            else:
                self.transport.write(ANSWER)


async def _serve(count: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Health, "127.0.0.1", 0, backlog=256)
               for _ in range(count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps(ports), flush=True)
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)     # the parent went away
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stdin_closed, lifetime)
    for server in servers:
        server.close()


# -- the measurements -----------------------------------------------------------------------

class CountingBalancer(Balancer):
    """The core Balancer, counting the probe results it is given."""

    passed = failed = 0
    reasons: dict[str, int]

    def report_probe(self, backend: Backend, ok: bool, reason: str = "") -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        super().report_probe(backend, ok, reason)


class ProbingThread:
    """A Prober on an asyncio loop in a thread of its own; ``stop()`` cancels and joins it."""

    def __init__(self, pool: Balancer, seed: int, loop: str = "asyncio") -> None:
        self.prober = Prober(pool, pool.settings, rng=random.Random(seed))
        self._started = threading.Event()
        self._kind = loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)

    def _run(self) -> None:
        if self._kind == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.prober.run()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError("the probing thread did not start")

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the probing thread did not stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between probes")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=5,
                        help="pick + report rounds, alternating without and with probing")
    parser.add_argument("--policy", default="round_robin")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the prober's event loop (the fleet runs the default asyncio one)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.backends, args.lifetime))
        return 0

    lifetime = 4 * args.interval + 4 * args.seconds + 60
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--backends", str(args.backends),
         "--lifetime", str(lifetime)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        return run(args, ports)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def run(args: Any, ports: list[int]) -> int:
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    pool = CountingBalancer(urls, policy=args.policy, health_check="/healthz",
                            health_check_interval=args.interval,
                            health_check_timeout=2.0,
                            rng=random.Random(1))
    pool.reasons = {}
    unchecked = Balancer(urls, policy=args.policy, rng=random.Random(1))
    pick_report(pool, 0.3)                                  # warm up
    pick_report(unchecked, 0.3)

    # 1. The prober alone, in its steady state (after the first, spread round).
    probing = ProbingThread(pool, seed=1, loop=args.loop)
    probing.start()
    try:
        time.sleep(args.interval * 1.5)
        probes_at = pool.passed + pool.failed
        opened_at = getattr(probing.prober.health_check, "opened", None)
        cpu, user, system, wall = cpu_share(args.seconds)
        probes = pool.passed + pool.failed - probes_at
        opened = getattr(probing.prober.health_check, "opened", None)
    finally:
        probing.stop()
    # Connections opened per probe while measured (1.0: a connection per probe; a version
    # that does not count them says nothing).
    reuse = ("" if opened is None or opened_at is None else
             f"; {(opened - opened_at) / max(probes, 1):.3f} connections opened per probe")

    # 2. pick + report, rounds alternating without and with probing (a machine's drift
    # touches both alike). A started prober probes at its full rate at once: its first
    # round is spread over one interval, N / interval probes a second like every other.
    round_seconds = args.seconds / args.rounds
    without: list[tuple[int, float]] = []
    with_: list[tuple[int, float]] = []
    plain: list[tuple[int, float]] = []
    ratios = []
    for round_ in range(args.rounds):
        plain.append(pick_report(unchecked, round_seconds / 2))
        without.append(pick_report(pool, round_seconds))
        probing = ProbingThread(pool, seed=2 + round_, loop=args.loop)
        probing.start()
        try:
            time.sleep(0.3)
            with_.append(pick_report(pool, round_seconds))
        finally:
            probing.stop()
        ratios.append(per_pair(with_[-1]) / per_pair(without[-1]))

    expected = args.backends / args.interval
    print(f"{args.backends} backends probed every {args.interval:g} s (+-10%), "
          f"policy {args.policy}, Python {sys.version.split()[0]}, {args.loop} loop, "
          f"{os.cpu_count()} CPUs")
    print(f"probes: {probes / wall:.0f}/s measured, {expected:.0f}/s expected; "
          f"passed {pool.passed}, failed {pool.failed}"
          f"{' ' + str(pool.reasons) if pool.reasons else ''}{reuse}")
    print(f"prober CPU (main thread asleep): {cpu:.2f} s over {wall:.2f} s = "
          f"{100 * cpu / wall:.1f}% of one core (user {100 * user / wall:.1f}%, system "
          f"{100 * system / wall:.1f}%), {cpu / max(probes, 1) * 1e6:.0f} us per probe")
    print(f"pick + report, mean of {args.rounds} alternating rounds: "
          f"{mean_us(without):.2f} us without probing, {mean_us(with_):.2f} us while probing: "
          f"ratio {mean_us(with_) / mean_us(without):.2f}x "
          f"(per round: {', '.join(f'{ratio:.2f}' for ratio in ratios)}; "
          f"median {statistics.median(ratios):.2f}x)")
    print(f"for reference, the same pool with health checks off: {mean_us(plain):.2f} us")
    return 0 if pool.failed == 0 else 1


def per_pair(measured: tuple[int, float]) -> float:
    pairs, wall = measured
    return wall / pairs


if __name__ == "__main__":
    sys.exit(main())
