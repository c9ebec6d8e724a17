"""Is the fast path's upstream client cheaper per request than the coroutine one (issue 15)?

Both send the same GET requests over keep-alive connections to one nginx backend (1 worker,
serving a file of ``--size`` bytes,
pinned to CPU 1 when there are two; this process on CPU 0), in the same event loop (uvloop),
alternating in each round: ``coroutine`` is :class:`lbmiddleware.upstream.Upstream` (a
coroutine per request, awaited head and body, as the ASGI exchange uses it), ``fast`` is
:class:`lbmiddleware.gateway.fast.upstream.UpstreamPools` (callbacks: the next request is
sent from the previous one's ``upstream_end``, as the fast exchange chains them). ``chains``
requests run at once (1: one after the other, each waiting for nginx). Printed per contender
and chain count: requests/second, this process's CPU microseconds per request (user +
system, ``time.process_time``), and the fast client's ratio to the coroutine one (median of
the rounds, each round's own ratio).

    python benchmarks/bench_fast_upstream.py [--requests 20000] [--rounds 3]
        [--chains 1,32] [--size 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop  # noqa: E402

import lbmiddleware as lb  # noqa: E402
from lbmiddleware.gateway.fast.upstream import Call, UpstreamPools  # noqa: E402
from lbmiddleware.upstream import Upstream, UpstreamError  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_nginx(folder: str, port: int, size: int) -> subprocess.Popen:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.mkdir(os.path.join(folder, "www"))
    with open(os.path.join(folder, "www", "body"), "wb") as file:
        file.write(os.urandom(size))
    conf = os.path.join(folder, "nginx.conf")
    with open(conf, "w") as file:
        file.write(f"""worker_processes 1; daemon off; pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi; uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  server {{ listen 127.0.0.1:{port};
    sendfile on; open_file_cache max=16; location / {{ root {folder}/www; }} }} }}
""")
    args = [nginx, "-p", folder, "-e", f"{folder}/error.log", "-c", conf]
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        args = ["taskset", "-c", "1", *args]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise SystemExit("nginx did not start")


async def coroutine_client(url: str, requests: int, chains: int) -> None:
    upstream = Upstream(connect_timeout=5.0, read_timeout=10.0)
    pool = upstream.pool(lb.Backend(url))
    loop = asyncio.get_running_loop()

    async def chain(count: int) -> None:
        for _ in range(count):
            response = await pool.request(b"GET", b"/body", [(b"Accept", b"*/*")], loop=loop)
            response.take()
            while await response.read():
                pass

    await asyncio.gather(*(chain(requests // chains) for _ in range(chains)))
    upstream.close()


class Chain:
    """A Receiver that sends its next request from the previous one's end."""

    __slots__ = ("pool", "head", "left", "done", "received", "call")

    def __init__(self, pool, head: bytes, count: int, done: asyncio.Future) -> None:
        self.pool = pool
        self.head = head
        self.left = count
        self.done = done
        self.received = 0
        self.call: Call | None = None

    def next(self) -> None:
        self.left -= 1
        self.call = self.pool.request(self.head, b"", self, more_body=False, resend=True,
                                      head_timeout=None, head_request=False)

    def upstream_head(self, status, reason, headers, length, chunked) -> None:
        pass

    def upstream_body(self, data: bytes) -> None:
        self.received += len(data)

    def upstream_end(self, last: bytes) -> None:
        self.received += len(last)      # (the body's bytes of the read that ended it)
        if self.left:
            self.next()
        elif not self.done.done():
            self.done.set_result(None)

    def upstream_failed(self, error: UpstreamError) -> None:
        self.done.set_exception(error)

    def upload_paused(self) -> None:
        pass

    def upload_resumed(self) -> None:
        pass


async def fast_client(url: str, requests: int, chains: int) -> None:
    loop = asyncio.get_running_loop()
    pools = UpstreamPools(connect_timeout=5.0, read_timeout=10.0, ssl=None, loop=loop)
    pool = pools.pool(lb.Backend(url))
    head = b"GET /body HTTP/1.1\r\nHost: " + pool.authority + b"\r\nAccept: */*\r\n\r\n"
    waits = []
    for _ in range(chains):
        done = loop.create_future()
        Chain(pool, head, requests // chains, done).next()
        waits.append(done)
    await asyncio.gather(*waits)
    pools.close()


CONTENDERS = {"coroutine": coroutine_client, "fast": fast_client}


def measure(name: str, url: str, requests: int, chains: int) -> tuple[float, float]:
    """(requests/second, CPU microseconds per request) of one run."""
    started, cpu = time.perf_counter(), time.process_time()
    uvloop.run(CONTENDERS[name](url, requests, chains))
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    return requests / wall, used / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chains", default="1,32")
    parser.add_argument("--size", type=int, default=5)
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = start_nginx(folder, port, args.size)
        try:
            url = f"http://127.0.0.1:{port}"
            for chains in (int(c) for c in args.chains.split(",")):
                results: dict[str, list[tuple[float, float]]] = {n: [] for n in CONTENDERS}
                measure("fast", url, 1000, chains)             # warm up both
                measure("coroutine", url, 1000, chains)
                for round_ in range(args.rounds):
                    order = list(CONTENDERS)[round_ % 2:] + list(CONTENDERS)[:round_ % 2]
                    for name in order:
                        results[name].append(measure(name, url, args.requests, chains))
                print(f"{args.requests} requests, {chains} at a time, {args.size}-byte body, "
                      f"{args.rounds} rounds (medians):")
                for name, runs in results.items():
                    rps = statistics.median(r for r, _ in runs)
                    cpu = statistics.median(c for _, c in runs)
                    print(f"  {name:10} {rps:9.0f} req/s  {cpu:6.1f} us CPU/request")
                speed = statistics.median(f[0] / c[0] for f, c in
                                          zip(results["fast"], results["coroutine"], strict=True))
                cost = statistics.median(f[1] / c[1] for f, c in
                                         zip(results["fast"], results["coroutine"], strict=True))
                print(f"  fast / coroutine: {speed:.2f}x the requests/s, {cost:.2f}x the CPU "
                      f"per request")
        finally:
            process.terminate()
            process.wait(5)


if __name__ == "__main__":
    main()
