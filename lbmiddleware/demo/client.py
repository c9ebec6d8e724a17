"""The demo's HTTP/1.1 client side: reading one response off a keep-alive connection (the
runs' concurrent clients use it), and the steady trickle of requests ``--serve`` sends so
the status page has something to show."""

from __future__ import annotations

import asyncio

__all__ = ["read_response", "steady_load", "LoadCounts", "REQUEST_TIMEOUT"]

REQUEST_TIMEOUT = 10.0           # seconds: a request that takes longer counts as failed


async def read_response(reader: asyncio.StreamReader) -> tuple[int, str, bool]:
    """Read one response; returns (status, X-Backend, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, backend, keep = 0, False, "", True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"x-backend":
            backend = value.decode("latin-1")
        elif name == b"connection":
            keep = value.lower() != b"close"
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2) if size else await reader.readline()
            if not size:
                break
    elif length:
        await reader.readexactly(length)
    return status, backend, keep


class LoadCounts:
    """What the steady load got: answers by status (0: none)."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}

    def add(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


async def _one_connection(port: int, interval: float, stop: asyncio.Event,
                          counts: LoadCounts, path: str) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while not stop.is_set():
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: demo.gateway\r\n\r\n".encode())
                status, _, keep = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
            except (OSError, EOFError, ValueError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status, keep = 0, False
            counts.add(status)
            if not keep and writer is not None:
                writer.close()
                reader = writer = None
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
    finally:
        if writer is not None:
            writer.close()


async def steady_load(port: int, rate: float, stop: asyncio.Event, counts: LoadCounts,
                      connections: int = 4, path: str = "/demo/steady") -> None:
    """About ``rate`` GETs a second to 127.0.0.1:``port`` over ``connections`` keep-alive
    connections until ``stop`` is set (a pause of 1/rate x connections after each answer)."""
    interval = connections / rate
    await asyncio.gather(*(_one_connection(port, interval, stop, counts, path)
                           for _ in range(connections)))
