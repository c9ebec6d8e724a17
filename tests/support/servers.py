"""Real HTTP backends on loopback for the front-end tests (ports chosen by the OS).

``Backend server`` answers every request with JSON naming itself and echoing what it got
(method, path with query, headers, body), so a test can see what reached the backend. Its
``behaviour`` switches at run time:

* ``"ok"``: 200 with the echo (``status`` overrides the code, e.g. 503);
* ``"hang"``: accept and read the request, never answer (until stopped);
* ``"close"``: close the connection without a response;
* ``"truncate"``: send the head and half the promised body, then close;
* ``"stall"``: send the head and half the promised body, then wait (until stopped) for
  the client to close the connection; ``peer_closed`` is set when it does.

``redirects`` maps a request path (with query) to a ``Location``: that path answers
``302 Found`` instead (whatever the behaviour).

``refused_url()`` gives a URL whose port is closed (connection refused);
``unaccepting_url()`` one whose listener never accepts (connecting times out).

:class:`HandlerServer` serves an ``http.server`` handler class of a test's own (a forward
proxy, a backend that builds URLs); :class:`RawServer` is the base of the byte-exact backends
a test scripts itself (interim responses, invalid heads, early answers, endless streams).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive, like a real backend
    disable_nagle_algorithm = True         # head and body written apart: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, *args) -> None:   # quiet
        pass

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        with owner.lock:
            owner.requests += 1
            owner.received.append((self.command, self.path, dict(self.headers.items()), body))
            owner.request_lines.append(self.requestline)
        location = owner.redirects.get(self.path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        behaviour = owner.behaviour
        if owner.delay:
            time.sleep(owner.delay)
        if behaviour == "hang":
            owner.release.wait()
            self.close_connection = True
            return
        if behaviour == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = json.dumps({
            "server": owner.name, "method": self.command, "path": self.path,
            "headers": dict(self.headers.items()), "body": body.decode("latin-1"),
        }).encode()
        if owner.body_size:
            payload = b"x" * owner.body_size
        self.send_response(owner.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Server", owner.name)
        for name, value in owner.extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if behaviour == "stall":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self._wait_for_close(owner)
            self.close_connection = True
            return
        if behaviour == "head_only":        # dies between the head and the body
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if behaviour == "pause_body":       # half the body, then wait for release()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            owner.release.wait(5)
            self.wfile.write(payload[len(payload) // 2:])
            return
        if behaviour == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _wait_for_close(self, owner: BackendServer) -> None:
        """Block until the client closes the connection (``peer_closed``) or a stop."""
        self.connection.settimeout(0.05)
        while not owner.release.is_set():
            try:
                if not self.connection.recv(65536):
                    owner.peer_closed.set()
                    return
            except TimeoutError:
                continue
            except OSError:
                owner.peer_closed.set()
                return

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A real server's backlog (nginx's is 511), not socketserver's 5: a burst of connects
    # waits in the queue while the accepting thread is slow, instead of timing out.
    request_queue_size = 1024
    owner: BackendServer

    def get_request(self):
        conn, addr = super().get_request()
        with self.owner.lock:
            self.owner.connections += 1
            self.owner.open_sockets.add(conn)
        return conn, addr

    def shutdown_request(self, request) -> None:
        with self.owner.lock:
            self.owner.open_sockets.discard(request)
        super().shutdown_request(request)


class BackendServer:
    """A loopback HTTP backend; use as a context manager or call start()/stop()."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.behaviour = "ok"
        self.status = 200
        self.delay = 0.0
        self.body_size = 0
        self.extra_headers: list[tuple[str, str]] = []
        self.redirects: dict[str, str] = {}
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.received: list[tuple[str, str, dict, bytes]] = []
        self.request_lines: list[str] = []      # as sent ("GET //x HTTP/1.1"; .path collapses "//")
        self.open_sockets: set[socket.socket] = set()
        self.release = threading.Event()
        self.peer_closed = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackendServer:
        self.release.clear()
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._prepare(self._server)
        # stop() waits for the loop to see the shutdown: a short poll keeps the three
        # backends of every test from costing a tenth of a second to stop
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def _prepare(self, server: _Server) -> None:
        """What a subclass does to the listening server before its loop starts."""

    def stop(self) -> None:
        """Stop listening and cut every open connection (the port is free again)."""
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self.lock:
                sockets, self.open_sockets = list(self.open_sockets), set()
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(timeout=2)
            self._server = None

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class OwnedHTTPServer(http.server.ThreadingHTTPServer):
    """The server under a :class:`HandlerServer`: its handler reaches the owner (what it
    records, its ``lock``) as ``self.server.owner``."""

    daemon_threads = True
    owner: Any


_Served = TypeVar("_Served", bound="HandlerServer")


class HandlerServer:
    """Serves the subclass's ``handler`` (an ``http.server`` handler class) from a thread,
    on a port of 127.0.0.1 the OS chooses; a context manager (``url``, ``port``). Its
    ``lock`` guards what the handler records on it."""

    handler: type[http.server.BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._server = OwnedHTTPServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self: _Served) -> _Served:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)


class RawServer:
    """A loopback TCP server whose subclass writes the bytes: each accepted connection goes
    to :meth:`handle` (with its number, from 0) in a thread of its own, and is closed after.

    It listens on ``host`` (any 127.x.y.z address: all of 127/8 is loopback on Linux, so
    many servers can share one port on distinct addresses) and ``port`` (0: any free one).
    ``connections`` counts the connections accepted. :meth:`stop` sets ``stopping``,
    closes the listening socket, shuts down the connections still open (so a handler
    blocked on them returns) and waits for the handlers.
    """

    scheme = "http"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backlog: int | None = None
                 ) -> None:
        self.host = host
        self.sock = socket.create_server((host, port), backlog=backlog)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._serve, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def open_connections(self) -> int:
        """Connections accepted and not yet seen closed by the client (the handler returns
        when it reads the client's end)."""
        with self._lock:
            return len(self._open)

    def handle(self, conn: socket.socket, number: int) -> None:
        raise NotImplementedError

    def track(self, conn: socket.socket) -> None:
        """Have :meth:`stop` shut ``conn`` down too (a TLS socket wrapping an accepted one)."""
        with self._lock:
            self._open.add(conn)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self.stopping.is_set():
                    conn.close()
                    return
                number = self.connections
                self.connections += 1
                self._open.add(conn)
                thread = threading.Thread(target=self._run, args=(conn, number), daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket, number: int) -> None:
        try:
            with conn:
                self.handle(conn, number)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)        # wakes accept() on Linux
        self.sock.close()
        self._accepting.join(timeout)
        with self._lock:
            still_open, threads = list(self._open), list(self._threads)
        for conn in still_open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout)


def refused_url() -> str:
    """A loopback URL on which nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def unaccepting_url() -> Iterator[str]:
    """A loopback URL whose listener never accepts and whose backlog is full: Linux drops
    further SYNs, so connecting to it times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = []
        try:
            for _ in range(4):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                queued.append(sock)
            yield f"http://127.0.0.1:{port}"
        finally:
            for sock in queued:
                sock.close()


def read_request_head(reader) -> bytes | None:
    """Read one request head (through the blank line) from a socket file; None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return None
        head += line
    return head
