"""An HTTP/2 backend on loopback: a small ASGI application under hypercorn (which speaks
HTTP/2 over TLS through ALPN, and h2c with prior knowledge) in a thread with its own event
loop, on a socket bound here to a port the OS chooses. Each answer is JSON naming the
server, the path and the HTTP version the request came in (``"2"`` or ``"1.1"``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


class H2Server:
    """``H2Server(name, certificate=(cert, key) or None).start()``; ``url``; ``stop()``.
    ``requests`` counts the requests it answered."""

    def __init__(self, name: str, certificate: tuple[str, str] | None = None) -> None:
        self.name = name
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.scheme = "https" if certificate else "http"
        self._config = Config()
        self._config.loglevel = "WARNING"
        self._config.bind = [f"fd://{self.sock.fileno()}"]
        if certificate is not None:
            self._config.certfile, self._config.keyfile = certificate
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self._started.set()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        body = json.dumps({"server": self.name, "path": scope["path"],
                           "http_version": scope["http_version"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def _run(self) -> None:
        self._loop.run_until_complete(
            serve(self._app, self._config, shutdown_trigger=self._stopping.wait))

    def start(self) -> H2Server:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("hypercorn did not start within 10 s")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        with contextlib.suppress(OSError):      # (hypercorn closed it already)
            self.sock.close()
        self._loop.close()
