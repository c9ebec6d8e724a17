"""Call an ASGI application in-process, as a server would, and record what it sends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class Call:
    """One HTTP request through an ASGI app: ``await Call(app, ...).run()``.

    ``body`` is bytes or a list of chunks (each one ``http.request`` message; framed as
    chunked unless ``headers`` give a length). After the
    body, ``receive()`` blocks like a real server's until the test sets ``disconnect``
    (or the response is complete), then returns ``http.disconnect``. ``disconnect_after``
    (a number of body bytes sent to the client) sets it from inside ``send``.
    """

    def __init__(self, app, method: str = "GET", path: str = "/", *, query: bytes = b"",
                 headers: Iterable[tuple[str | bytes, str | bytes]] = (),
                 body: bytes | list[bytes] = b"",
                 client: tuple[str, int] | None = ("203.0.113.7", 40000),
                 raw_path: bytes | None = None, scheme: str = "http", host: str = "front.example",
                 disconnect_after: int | None = None) -> None:
        self.app = app
        encoded = [(n.encode("latin-1") if isinstance(n, str) else n,
                    v.encode("latin-1") if isinstance(v, str) else v) for n, v in headers]
        if host is not None and not any(n.lower() == b"host" for n, _ in encoded):
            encoded.insert(0, (b"host", host.encode()))
        chunks = [body] if isinstance(body, bytes) else list(body)
        if body and not any(n.lower() in (b"content-length", b"transfer-encoding")
                            for n, _ in encoded):
            encoded.append((b"content-length", str(len(body)).encode()) if isinstance(body, bytes)
                           else (b"transfer-encoding", b"chunked"))
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": scheme, "path": path,
            "raw_path": path.encode("utf-8") if raw_path is None else raw_path,
            "query_string": query, "headers": encoded, "client": client,
            "server": ("127.0.0.1", 8000), "root_path": "",
        }
        self._chunks = chunks
        self.disconnect = asyncio.Event()
        self.disconnect_after = disconnect_after
        self.messages: list[dict] = []
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    async def receive(self) -> dict:
        if self._chunks:
            chunk = self._chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self._chunks)}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        await asyncio.sleep(0)
        self.messages.append(message)
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.complete = True
                self.disconnect.set()
            if self.disconnect_after is not None and len(self.body) >= self.disconnect_after:
                self.disconnect.set()

    async def run(self, timeout: float = 10.0) -> Call:
        await asyncio.wait_for(self.app(self.scope, self.receive, self.send), timeout)
        return self

    def header(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == wanted]

    def json(self) -> Any:
        import json
        return json.loads(self.body)


def call(app, *args, **kwargs) -> Call:
    """Run one call on a fresh event loop (for synchronous tests)."""
    return asyncio.run(Call(app, *args, **kwargs).run())
