"""WebSocket backends and a client for the WebSocket tests: real servers on loopback.

:class:`WebSocketBackend` is an ASGI application under uvicorn (its ``websockets``
implementation) in a thread of this process, on a port the OS chooses. By path:

* ``/echo`` (and any other path): every message sent back as it came (text or binary);
* ``/name``: its ``name`` first, as a text message, then the echo;
* ``/headers``: the handshake's headers (and path and subprotocols) as one JSON text
  message, then the echo;
* ``/close/CODE``: accepts, then closes with CODE (reason ``"bye"``);
* ``/deny/STATUS``: answers the handshake STATUS with a body (``denied STATUS``) through
  the ASGI denial-response extension;
* ``/cookie``: accepts with its own ``Set-Cookie: backend=NAME``, then the echo;
* ``/redirect``: answers the handshake ``302`` with ``Location``, ``Content-Location``
  and ``Refresh`` pointing at itself (``/login``);
* ``/located``: accepts with ``Content-Location`` pointing at itself (``/here``), then
  the echo.

With ``pki`` (:func:`~.tls.make_pki`'s) it is a wss backend with the PKI's server
certificate.

It chooses the first subprotocol offered among ``protocols`` (none by default). It counts
the sockets open now (``open``) and accepted (``accepted``), and records the code of each
close it received from its client (``closes``: 1006 for a connection lost without one)
and its reason (``reasons``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

from .asgi_server import ServerThread
from .tls import PKI


class WebSocketBackend(ServerThread):
    """An echo WebSocket backend under uvicorn in a thread; a context manager."""

    def __init__(self, name: str = "ws", protocols: tuple[str, ...] = (),
                 ping_interval: float | None = None, pki: PKI | None = None) -> None:
        self.name = name
        self.scheme = "http" if pki is None else "https"
        self.protocols = protocols
        self.accepted = 0
        self.open = 0
        self.closes: list[int] = []
        self.reasons: list[str] = []    # the reason of each close in closes
        self._lock = threading.Lock()
        tls = {} if pki is None else {      # wss: the PKI's server certificate
            "ssl_certfile": pki.server_cert, "ssl_keyfile": pki.server_key}
        super().__init__(self.app, backlog=2048, start_timeout=10, log_level="error",
                         ws="websockets-sansio", interface="asgi3",
                         ws_max_size=64 * 1024 * 1024, ws_ping_interval=ping_interval,
                         ws_per_message_deflate=False, **tls)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def wait_closed(self, count: int, timeout: float = 10.0) -> list[int]:
        """The close codes received, once ``count`` sockets have closed (AssertionError
        after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.closes) >= count and self.open == 0:
                    return list(self.closes)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.closes)} of {count} sockets closed "
                                     f"({self.open} open) after {timeout} s")
            time.sleep(0.01)

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 426,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"a WebSocket backend"})
            return
        message = await receive()
        assert message["type"] == "websocket.connect"
        path = scope["path"]
        parts = path.strip("/").split("/")
        if parts[0] == "deny":
            status = int(parts[1])
            body = f"denied {status}".encode()
            await send({"type": "websocket.http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"x-backend", self.name.encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        if parts[0] == "redirect":
            await send({"type": "websocket.http.response.start", "status": 302,
                        "headers": [(b"location", f"{self.url}/login".encode()),
                                    (b"content-location", f"{self.url}/login".encode()),
                                    (b"refresh", f"0; url={self.url}/login".encode()),
                                    (b"content-length", b"0")]})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        offered = scope.get("subprotocols") or []
        chosen = next((p for p in offered if p in self.protocols), None)
        headers = [(b"set-cookie", f"backend={self.name}".encode())] if parts[0] == "cookie" \
            else []
        if parts[0] == "located":
            headers.append((b"content-location", f"{self.url}/here".encode()))
        await send({"type": "websocket.accept", "subprotocol": chosen, "headers": headers})
        with self._lock:
            self.accepted += 1
            self.open += 1
        code, reason = 1006, ""
        try:
            if parts[0] == "close":
                await send({"type": "websocket.close", "code": int(parts[1]), "reason": "bye"})
                code = (await receive()).get("code", 1005)
                return
            if parts[0] == "name":
                await send({"type": "websocket.send", "text": self.name})
            elif parts[0] == "headers":
                await send({"type": "websocket.send", "text": json.dumps({
                    "path": path, "query": scope["query_string"].decode(),
                    "subprotocols": offered,
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                                for n, v in scope["headers"]]})})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1005)
                    reason = message.get("reason") or ""
                    return
                if message.get("bytes") is not None:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
                else:
                    await send({"type": "websocket.send", "text": message["text"]})
        except asyncio.CancelledError:
            raise
        finally:
            with self._lock:
                self.open -= 1
                self.closes.append(code)
                self.reasons.append(reason)


class WebSocketServer(ServerThread):
    """``app`` (the middleware under test) under uvicorn with WebSockets on, in a thread of
    this process, on a port the OS chooses; a context manager. ``ws``: uvicorn's
    WebSocket implementation."""

    def __init__(self, app, ws: str = "websockets-sansio") -> None:
        super().__init__(app, backlog=2048, start_timeout=10, lifespan="on", log_level="error",
                         ws=ws, interface="asgi3", ws_max_size=64 * 1024 * 1024,
                         ws_per_message_deflate=False)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files to ``wanted`` (at most the hard
    limit) when it is lower: a test with many sockets holds three descriptors each here
    (the client's, the proxy's two) besides the backend's."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class SilentBackend:
    """A backend that reads a WebSocket handshake and never answers it (a backend slow to
    answer): it records each head (``heads``) and counts the connections its peer closed
    (``closed``). A context manager."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.heads: list[bytes] = []
        self.closed = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        head = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
                if b"\r\n\r\n" in head:
                    with self._lock:
                        self.heads.append(head)
                    head = b""
        except OSError:
            return              # stopped: not the peer's close
        with self._lock:
            self.closed += 1

    def __enter__(self) -> SilentBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
