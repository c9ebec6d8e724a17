"""The floor a Python proxy can reach: an asyncio ``Protocol`` proxy on uvloop + httptools that
forwards bytes only (``bench_proxy.py``'s "reference" row, issue 15).

Per request: httptools finds where the client's request begins and ends, the next backend in
round-robin order gets it through an idle keep-alive connection (one ``write``, no task), and
the backend's response goes back to the client as it arrives, its end found by httptools
again; the connection then returns to its backend's idle list (last in, first out). A task
runs only to open a connection. Nothing is rewritten: no headers added or removed, no
balancer, no retries, no timeouts. Whatever a real proxy does on top of this costs its share
of the difference between this row and the gateway's.

Out of scope, being a floor and not a proxy: pipelined requests (wrk sends one request at a
time on each connection), HEAD (the response parser would wait for a body), upgrades, and
errors beyond closing both sides (a backend that cannot be reached gets the client a 502).
Flow control is kept (a client reading slowly pauses its backend, and the other way round),
so a 1 MB body holds the memory of a few buffers and not of the body.

``--balancer`` adds one layer, the project's :class:`~lbmiddleware.core.balancer.Balancer`
(round-robin) in place of the fixed turn: a ``pick()`` when the request begins and a
``report(ok, latency)`` when its response has been relayed. ``locked``: the pool's own
methods (its lock, its clock readings); ``lane``: the owner's lock-free lane
(``Balancer.own(loop)``, one clock reading at each end), the gateway's fast path's way.

    python benchmarks/proxy_layers/reference.py --listen 127.0.0.1:8000 \
        --backend 127.0.0.1:8001 --backend 127.0.0.1:8002 [--balancer none|locked|lane]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from typing import Any

import httptools
import uvloop

BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


class Backend:
    """One backend's address and its idle keep-alive connections."""

    __slots__ = ("host", "port", "idle")

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.idle: list[Upstream] = []

    def send(self, client: Client, data: bytes) -> Upstream:
        """``data`` (the start of ``client``'s request) to this backend, on an idle
        connection when there is one (one write), else on a new one (a connect task)."""
        if self.idle:
            upstream = self.idle.pop()
            upstream.begin(client)
            upstream.transport.write(data)    # type: ignore[union-attr]
            return upstream
        upstream = Upstream(self)
        upstream.begin(client)
        upstream.pending.append(data)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: upstream, self.host, self.port))
        task.add_done_callback(upstream.connected)
        return upstream


class Upstream(asyncio.Protocol):
    """A keep-alive connection to one backend, relaying one response at a time."""

    __slots__ = ("backend", "transport", "client", "parser", "complete", "keep_alive",
                 "pending")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.complete = self.keep_alive = False
        self.pending: list[bytes] = []      # the request's bytes while the connect runs

    def begin(self, client: Client) -> None:
        self.client, self.complete = client, False

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def connected(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            client, self.client = self.client, None
            if client is not None:
                client.transport.write(BAD_GATEWAY)
                client.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pending:
            transport.write(b"".join(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:              # bytes nobody asked for: the connection is unusable
            self.transport.close()      # type: ignore[union-attr]
            return
        client.transport.write(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()      # type: ignore[union-attr]
            client.transport.close()
            return
        if self.complete:
            self.client = None
            if self.keep_alive:
                if not self.transport.is_reading():  # type: ignore[union-attr]
                    self.transport.resume_reading()  # type: ignore[union-attr]  # see pause_writing
                self.backend.idle.append(self)
            else:
                self.transport.close()  # type: ignore[union-attr]
            client.response_done()

    def on_message_complete(self) -> None:
        # asked here: once feed_data has returned, the parser has reset for the next
        # message and should_keep_alive() is False whatever the response said
        self.complete, self.keep_alive = True, self.parser.should_keep_alive()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.backend.idle:
            self.backend.idle.remove(self)
        client, self.client = self.client, None
        if client is not None:
            client.transport.close()

    def pause_writing(self) -> None:        # the backend reads the upload slowly
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    """A client's keep-alive connection: each request goes to the next backend in turn."""

    __slots__ = ("backends", "transport", "parser", "upstream", "waiting", "data")

    def __init__(self, backends: itertools.cycle[Backend]) -> None:
        self.backends = backends
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None   # the one serving the current request
        self.waiting = False                    # the request is all sent, its response not
        self.data = b""                         # the current chunk, while the parser reads it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiting:                        # a pipelined request: not served here
            self.transport.close()
            return
        self.data = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.data and self.upstream is not None:  # a body's later piece
            self.upstream.send(data)

    def on_message_begin(self) -> None:
        # the whole chunk goes with the request's start (one write); the chunk is spent
        self.upstream = next(self.backends).send(self, self.data)
        self.data = b""

    def on_message_complete(self) -> None:
        self.waiting = True

    def response_done(self) -> None:
        self.upstream, self.waiting = None, False

    def connection_lost(self, exc: Exception | None) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None and upstream.client is self:
            upstream.client = None
            if upstream.transport is not None:
                upstream.transport.close()

    def pause_writing(self) -> None:        # the client reads the response slowly
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


class BalancedClient(Client):
    """:class:`Client` with the Balancer's pick at the request's start and report at its
    response's end."""

    __slots__ = ("pick", "report", "targets", "lane", "picked", "started")

    def __init__(self, pool: Any, targets: dict[str, Backend], lane: bool) -> None:
        super().__init__(itertools.cycle(()))
        picker = pool.own(asyncio.get_running_loop()) if lane else pool
        self.pick, self.report, self.targets, self.lane = (picker.pick, picker.report,
                                                           targets, lane)
        self.picked: Any = None
        self.started = 0.0

    def on_message_begin(self) -> None:
        self.started = now = time.monotonic()
        self.picked = picked = self.pick(now=now) if self.lane else self.pick()
        self.upstream = self.targets[picked.url].send(self, self.data)
        self.data = b""

    def response_done(self) -> None:
        super().response_done()
        now = time.monotonic()
        if self.lane:
            self.report(self.picked, True, now - self.started, now=now)
        else:
            self.report(self.picked, True, now - self.started)


async def serve(listen: str, backends: list[str], balancer: str = "none") -> None:
    loop = asyncio.get_running_loop()
    targets = [Backend(address) for address in backends]
    factory: Any
    if balancer == "none":
        turn = itertools.cycle(targets)
        factory = lambda: Client(turn)        # noqa: E731
    else:
        from lbmiddleware.core.balancer import Balancer

        pool = Balancer([f"http://{address}" for address in backends], "round_robin")
        by_address = {f"{t.host}:{t.port}": t for t in targets}
        by_url = {b.url: by_address[f"{b.host}:{b.port}"] for b in pool.backends}
        factory = lambda: BalancedClient(pool, by_url, balancer == "lane")   # noqa: E731
    host, _, port = listen.rpartition(":")
    server = await loop.create_server(factory, host, int(port), backlog=1024)
    stop = loop.create_future()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--backend", action="append", required=True, help="HOST:PORT (repeat)")
    parser.add_argument("--balancer", choices=("none", "locked", "lane"), default="none",
                        help="pick and report through lbmiddleware's Balancer [none]")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.backend, args.balancer))


if __name__ == "__main__":
    main()
