"""How long does the upstream client take to decode many tiny response chunks?

A raw loopback backend answers with ``N`` one-byte chunks (``1\\r\\nx\\r\\n`` × N) in one
write, for N = 200,000 and 400,000; the client is ``lbmiddleware.upstream`` reading the whole
body, as the ASGI middleware and the gateway do. Baseline, measured in the same run: the
same number of bytes on the wire sent as one ``Content-Length`` body. Prints the seconds for
each (best of ``--repeat``), the ratio to the baseline, and the 400k / 200k ratio (linear
parsing: about 2; the quadratic parser of issue 8 item 5 took 3 s and 7-10 s, about 3).
While the body is decoded, the event loop serves nobody else: this is the stall other
requests see. Target: chunked 400k <= 0.5 s and scaling <= 2.5; exits 1 when missed.

    python benchmarks/bench_chunked.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lbmiddleware as lb  # noqa: E402
from lbmiddleware.upstream import Upstream  # noqa: E402

COUNTS = (200_000, 400_000)
TARGET_SECONDS = 0.5
TARGET_SCALING = 2.5


def chunked(count: int) -> bytes:
    body = b"1\r\nx\r\n" * count + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def plain(size: int) -> bytes:
    """A Content-Length response as long on the wire as ``size`` bytes of chunked body."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size


class Backend:
    """Answers every request on a connection with the bytes in ``self.response``."""

    def __init__(self) -> None:
        self.response = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                data = data.split(b"\r\n\r\n", 1)[1]
                conn.sendall(self.response)

    def stop(self) -> None:
        self.sock.close()


async def fetch_seconds(pool, expected: int) -> float:
    started = time.perf_counter()
    response = await pool.request(b"GET", b"/", [])
    received = len(response.take())
    while True:
        chunk = await response.read()
        if not chunk:
            break
        received += len(chunk)
    elapsed = time.perf_counter() - started
    if received != expected:
        raise SystemExit(f"got {received} body bytes, expected {expected}")
    return elapsed


async def measure(backend: Backend, repeat: int) -> dict[int, tuple[float, float]]:
    upstream = Upstream(read_timeout=120.0)
    pool = upstream.pool(lb.Backend(backend.url))
    results = {}
    for count in COUNTS:
        wire = chunked(count)
        body_size = len(wire) - len(chunked(0)) + len(b"0\r\n\r\n")
        best_chunked = best_plain = float("inf")
        for _ in range(repeat):
            backend.response = wire
            best_chunked = min(best_chunked, await fetch_seconds(pool, count))
            backend.response = plain(body_size)
            best_plain = min(best_plain, await fetch_seconds(pool, body_size))
        results[count] = (best_chunked, best_plain)
    upstream.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (best kept)")
    args = parser.parse_args()
    backend = Backend()
    try:
        results = asyncio.run(measure(backend, args.repeat))
    finally:
        backend.stop()
    print(f"{'one-byte chunks':>16} {'chunked s':>10} {'Content-Length s':>17} {'ratio':>8}")
    for count, (chunked_s, plain_s) in results.items():
        print(f"{count:>16,} {chunked_s:>10.3f} {plain_s:>17.4f} {chunked_s / plain_s:>7.1f}x")
    small, large = (results[c][0] for c in COUNTS)
    scaling = large / small
    print(f"scaling {COUNTS[1]:,} / {COUNTS[0]:,}: {scaling:.2f} (linear: 2)")
    missed = large > TARGET_SECONDS or scaling > TARGET_SCALING
    if missed:
        print(f"MISS: target {COUNTS[1]:,} chunks <= {TARGET_SECONDS} s "
              f"and scaling <= {TARGET_SCALING}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
