"""The demo's backends: tiny asyncio HTTP/1.1 servers (standard library only), each with a
personality, so a balancer has something to tell apart.

* ``fast``: answers at once.
* ``slow``: answers after ``SLOW_DELAY`` seconds.
* ``flaky``: fast, but fails ``FLAKY_FAILURE_RATE`` of its requests, half with a 503 and half
  by dropping the connection without an answer.

Every answer is ``{"backend": NAME}`` with an ``X-Backend: NAME`` header. The servers keep
connections alive, read ``Content-Length`` and chunked request bodies, and serve requests
concurrently on one event loop.

Run them on their own (for the examples)::

    python -m lbmiddleware.demo.backends              # fast, slow and flaky
    python -m lbmiddleware demo --backends-only       # the same

It prints ``LB_BACKENDS=...`` and serves until Ctrl-C (or until its standard input closes,
when started with ``--until-stdin-closes``: that is how the demo makes sure no backend
outlives it).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["PERSONALITIES", "SLOW_DELAY", "FLAKY_FAILURE_RATE", "PORT_IN_USE", "serve", "main"]

SLOW_DELAY = 0.020            # seconds the slow backend waits before answering
FLAKY_FAILURE_RATE = 0.2      # share of the flaky backend's requests that fail
PERSONALITIES = ("fast", "slow", "flaky")
#: The exit code of ``main`` when its port is taken, so the demo can tell that from others.
PORT_IN_USE = 3
_MAX_HEAD = 64 * 1024


class _Personality:
    """How one backend answers: a delay and a failure rate (seeded, so runs repeat)."""

    def __init__(self, name: str, seed: int) -> None:
        if name not in PERSONALITIES:
            raise ValueError(f"unknown backend personality {name!r} (expected one of "
                             f"{', '.join(PERSONALITIES)})")
        self.name = name
        self.delay = SLOW_DELAY if name == "slow" else 0.0
        self.failure_rate = FLAKY_FAILURE_RATE if name == "flaky" else 0.0
        self._rng = random.Random(seed)
        body = json.dumps({"backend": name}).encode()
        self.ok = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"X-Backend: " + name.encode() + b"\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        body = b"flaky backend failed on purpose\n"
        self.unavailable = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                            b"X-Backend: " + name.encode() + b"\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)

    def outcome(self) -> str:
        """``"ok"``, ``"503"`` or ``"drop"`` for the next request."""
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return "503" if self._rng.random() < 0.5 else "drop"
        return "ok"


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Read (and discard) the request body that ``head`` announces."""
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip() or b"0")
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            await reader.readexactly(size + 2)
    elif length:
        await reader.readexactly(length)


def _handler(personality: _Personality, open_writers: set[asyncio.StreamWriter]
             ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                await _read_body(reader, head)
                outcome = personality.outcome()
                if outcome == "drop":
                    return
                if personality.delay:
                    await asyncio.sleep(personality.delay)
                writer.write(personality.ok if outcome == "ok" else personality.unavailable)
                await writer.drain()
                if b"\r\nconnection: close" in head.lower():
                    return
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            return
        finally:
            open_writers.discard(writer)
            writer.close()
    return handle


async def serve(names: Sequence[str], host: str = "127.0.0.1", port: int = 0, seed: int = 1,
                ready: Callable[[list[tuple[str, str]]], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve one backend per name (ports chosen by the OS when ``port`` is 0) until ``stop``
    is set; ``ready(list of (name, url))`` is called once all listen."""
    servers = []
    open_writers: set[asyncio.StreamWriter] = set()
    try:
        for index, name in enumerate(names):
            server = await asyncio.start_server(
                _handler(_Personality(name, seed + index), open_writers), host,
                port if port else 0, limit=_MAX_HEAD, reuse_address=True, backlog=512)
            servers.append((name, server))
        urls = [(name, "http://{}:{}".format(*server.sockets[0].getsockname()[:2]))
                for name, server in servers]
        if ready is not None:
            ready(urls)
        await (stop or asyncio.Event()).wait()
    finally:
        for _, server in servers:
            server.close()
        # Cut the open connections so their handlers end by themselves (not by cancellation).
        for writer in list(open_writers):
            writer.transport.abort()
        for _ in range(100):
            if not open_writers:
                break
            await asyncio.sleep(0.01)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lbmiddleware.demo.backends",
        description="Run the demo's backends (fast, slow, flaky) on 127.0.0.1 and print "
                    "LB_BACKENDS=... for the examples.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="personalities to run: fast, slow, flaky (default: all three)")
    parser.add_argument("--port", type=int, default=0,
                        help="port (only with one backend; default: chosen by the OS)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the flaky backend's failures")
    parser.add_argument("--until-stdin-closes", action="store_true",
                        help="also stop when standard input closes (for a parent process)")
    args = parser.parse_args(argv)
    args.names = args.names or list(PERSONALITIES)
    unknown = [name for name in args.names if name not in PERSONALITIES]
    if unknown:
        parser.error(f"unknown backend {unknown[0]!r} (expected fast, slow or flaky)")
    if args.port and len(args.names) != 1:
        parser.error("--port needs exactly one backend name")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: serve the backends and print where they listen."""
    args = _parse_args(argv)

    def ready(urls: list[tuple[str, str]]) -> None:
        for name, url in urls:
            print(f"{name} {url}", flush=True)
        print("LB_BACKENDS=" + ",".join(url for _, url in urls), flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if args.until_stdin_closes:
            def watch_stdin() -> None:
                # os.read, not sys.stdin: a daemon thread blocked in a buffered read would
                # hold the buffer's lock at interpreter shutdown.
                while os.read(0, 4096):
                    pass
                loop.call_soon_threadsafe(stop.set)
            threading.Thread(target=watch_stdin, daemon=True).start()
        await serve(args.names, port=args.port, seed=args.seed, ready=ready, stop=stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"demo backend {' '.join(args.names)}: port {args.port} on 127.0.0.1 is in use",
              file=sys.stderr)
        return PORT_IN_USE
    return 0


if __name__ == "__main__":
    sys.exit(main())
