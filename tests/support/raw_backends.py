"""Byte-exact loopback backends a test scripts itself (both built on :class:`RawServer`).

* :class:`RawBackend` answers the n-th request it reads, on any connection, with
  ``answers[n]``; it keeps connections alive and records every request head.
* :class:`ScriptedBackend` answers the n-th request of the k-th connection with
  ``scripts[k][n]``; a step may close the connection (``CLOSE``).

In both, a float among an answer's parts is a pause (seconds) between writes. The
``raw_backend`` and ``scripted`` fixtures (tests/conftest.py) make them and stop them.
"""

from __future__ import annotations

import socket
import ssl
import time

from .servers import RawServer, read_request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE = "close"          # a script step: read the request, close without answering
                         # (at the end of a step's parts: close after that response)


def ok(body: bytes) -> bytes:
    """A ``200 OK`` response carrying ``body`` (with its Content-Length)."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class RawBackend(RawServer):
    """Answers the n-th request it reads (on any connection) with ``answers[n]``: a list of
    raw byte strings to write and pauses (floats, seconds) between them; ``ok(b"extra")``
    once the answers run out. Connections are kept alive; ``connections`` counts them and
    ``heads`` holds each request head as received (through its blank line)."""

    def __init__(self, *answers: list, tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.tls = tls
        self.heads: list[bytes] = []
        self.scheme = "https" if tls else "http"
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except ssl.SSLError:
                _linger(conn)
                raise
            self.track(conn)
        with conn, conn.makefile("rb") as reader:
            while True:
                head = read_request_head(reader)
                if head is None:
                    return
                with self._lock:
                    self.heads.append(head)
                    answer = self.answers.pop(0) if self.answers else [ok(b"extra")]
                for part in answer:
                    if isinstance(part, float):
                        time.sleep(part)
                    else:
                        conn.sendall(part)


def _linger(conn: socket.socket) -> None:
    """After a refused TLS handshake, whose alert is sent: half-close and read until the
    client closes (2 s at most) before the socket closes. Closed with the client's bytes
    unread (TLS 1.3: its request follows its side of the handshake), the socket would send a
    reset, and the client's kernel could drop the alert the client had not read yet: the
    client would see a closed connection instead of the handshake's verdict."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(2.0)
        while conn.recv(65536):
            pass
    except OSError:
        pass


class ScriptedBackend(RawServer):
    """A loopback server answering the n-th request of the k-th connection with
    ``scripts[k][n]`` (raw bytes, a list of parts, or CLOSE); the last script repeats for
    later connections. It reads a request's body when the head gives a Content-Length;
    ``requests`` holds the heads."""

    def __init__(self, *scripts: list) -> None:
        self.scripts = scripts
        self.requests: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        for step in self.scripts[min(number, len(self.scripts) - 1)]:
            head = read_request_head(reader)
            if head is None:
                return
            self.requests.append(head)
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length:
                reader.read(length[0])
            if step == CLOSE:
                return
            for part in step if isinstance(step, list) else [step]:
                if part == CLOSE:
                    return              # close after this response
                if isinstance(part, float):
                    time.sleep(part)
                    continue
                conn.sendall(part)
        conn.recv(1)         # the script is done: wait for the client to close
