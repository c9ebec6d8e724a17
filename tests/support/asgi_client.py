"""Call an ASGI application in-process, as a server would, and record what it sends."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable


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
                 body: bytes | list[bytes] = b"", client: tuple[str, int] | None = ("203.0.113.7", 40000),
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

    async def run(self, timeout: float = 10.0) -> "Call":
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


class GatewayProcess:
    """``python -m lbmiddleware serve`` in a subprocess on a port the OS chooses.

    ``environ`` holds the ``LB_*`` settings (``LB_LISTEN`` defaults to port 0); the port
    is read from the line the gateway prints. ``stop()`` sends SIGTERM (then SIGKILL).
    """

    def __init__(self, environ: dict[str, str]) -> None:
        import os
        import sys
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        self.environ.update({"LB_LISTEN": "127.0.0.1:0", "PYTHONUNBUFFERED": "1"})
        self.environ.update(environ)
        self.args = [sys.executable, "-m", "lbmiddleware", "serve"]
        self.process = None
        self.port = 0
        self.banner = ""

    def start(self, timeout: float = 15.0) -> "GatewayProcess":
        import re
        import subprocess
        import time
        self.process = subprocess.Popen(self.args, env=self.environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline()       # the banner, or "" if it exited
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not match or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r} {self.process.stderr.read()!r}")
        self.banner = line
        self.port = int(match.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def proxy_pid(self) -> int:
        """The process that runs the proxy: granian's worker (a child), or the gateway."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
            pids = [int(p) for p in children.read().split()]
        return pids[0] if len(pids) == 1 else self.pid

    def stop(self) -> str:
        """Stop the gateway; returns what it wrote on stderr."""
        import subprocess
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        self.process = None
        return errors

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
