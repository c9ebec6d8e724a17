"""Loopback backends for the active health-check tests: a health path whose answer a test
switches at run time, and a record of every probe as the server saw it.

:class:`HealthBackend` is a :class:`~tests.support.servers.RawServer` (``host`` may be any
127.x.y.z address, so many backends share one port on distinct addresses) that answers one
request per connection (it answers ``Connection: close``):

* a path ending in ``/healthz``: ``health[base]`` (the path before ``/healthz``, ``""`` for
  the root), default ``health[""]`` = 200; ``"hang"`` reads the request and never answers
  (until the client leaves or the server stops); ``health_delay`` seconds before answering;
* any other path: 200 with the body ``name``, or never an answer when ``hang_all`` is set
  (a backend that accepts connections and never answers anything).

``probes`` lists a :class:`Probe` per health request, recorded when its head is read (so a
probe is on the list before its client can see the answer): ``base``, ``arrived`` and
``ended`` (``time.monotonic()`` when the head was read and when the answer was written or the
client left; None until then), ``status`` (the answer decided on arrival; None: never
answered). ``most_at_once`` is the most health requests of one base in progress together.
``requests`` counts the other requests.
"""

from __future__ import annotations

import socket
import time

from .servers import RawServer, read_request_head

HEALTH = "/healthz"


class Probe:
    __slots__ = ("base", "arrived", "ended", "status")

    def __init__(self, base: str, arrived: float, status: int | None) -> None:
        self.base = base
        self.arrived = arrived
        self.ended: float | None = None
        self.status = status

    def __repr__(self) -> str:
        return f"Probe({self.base!r}, {self.arrived:.3f}, {self.ended}, {self.status})"


class HealthBackend(RawServer):
    def __init__(self, name: str = "backend", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.health: dict[str, int | str] = {"": 200}
        self.health_delay = 0.0
        self.hang_all = False
        self.probes: list[Probe] = []
        self.requests = 0
        self.most_at_once = 0
        self._in_progress: dict[str, int] = {}
        super().__init__(host, port, backlog=512)

    def probes_of(self, base: str = "") -> list[Probe]:
        with self._lock:
            return [probe for probe in self.probes if probe.base == base]

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            head = read_request_head(reader)
            if head is None:
                return
            target = head.split(b" ", 2)[1].decode()
            path = target.split("?", 1)[0]
            if path.endswith(HEALTH):
                self._health(conn, path[: -len(HEALTH)])
            else:
                self._other(conn)

    def _health(self, conn: socket.socket, base: str) -> None:
        with self._lock:
            now = self._in_progress[base] = self._in_progress.get(base, 0) + 1
            self.most_at_once = max(self.most_at_once, now)
            answer = self.health.get(base, self.health.get("", 200))
            probe = Probe(base, time.monotonic(), None if answer == "hang" else int(answer))
            self.probes.append(probe)
        try:
            if self.health_delay:
                self.stopping.wait(self.health_delay)
            if probe.status is None:
                self._wait_for_close(conn)
            else:
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                             % probe.status)
        finally:
            with self._lock:
                self._in_progress[base] -= 1
                probe.ended = time.monotonic()

    def _other(self, conn: socket.socket) -> None:
        with self._lock:
            self.requests += 1
        if self.hang_all:
            self._wait_for_close(conn)
            return
        body = self.name.encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))

    def _wait_for_close(self, conn: socket.socket) -> None:
        conn.settimeout(0.02)
        while not self.stopping.is_set():
            try:
                if not conn.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def __enter__(self) -> HealthBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
