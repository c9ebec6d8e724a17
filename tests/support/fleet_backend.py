"""A backend in a process of its own, for the rolling-restart tests: started, stopped with
SIGTERM like a real service, and started again on the same address.

Run as a script (standard library only)::

    python tests/support/fleet_backend.py NAME HOST PORT LOG [DELAY]

It serves HTTP/1.1 with keep-alive on ``HOST:PORT`` and prints ``listening on
http://HOST:PORT`` once it accepts connections. Every request (any method) is answered
``200`` with the body ``NAME METHOD ID`` and the header ``X-Server: NAME``, where ``ID`` is
the request's ``X-Request-Id``, after ``DELAY`` seconds of "work" [0] (so that requests
are in flight when a pool leaves the backend). Before answering, it appends ``METHOD ID
CLIENT TIME`` to ``LOG`` (``CLIENT``: the request's ``X-Client``; ``TIME``:
``time.time()``), one line per request written with a single ``write`` on a file opened
for appending, so a request answered is a request recorded, and the lines of every run of
every backend survive it.

SIGTERM stops it gracefully, as Go's ``http.Server.Shutdown`` does: it stops accepting
(the listening socket is closed), closes the kept-alive connections that wait for a
request, lets the requests being handled finish (their responses say ``Connection:
close``) and exits 0.

:class:`BackendProcess` starts and stops one from a test.
"""

from __future__ import annotations

import http.server
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import time

LISTENING = "listening on "


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, *args: object) -> None:      # quiet
        pass

    def handle(self) -> None:
        """Requests one after another on the kept-alive connection, each once its first
        byte is here; between two, a stop closes the connection."""
        self.close_connection = False
        while not self.close_connection and self._request_arrives():
            try:
                self.handle_one_request()
            finally:
                with self.server.lock:
                    self.server.busy -= 1

    def _request_arrives(self) -> bool:
        """Wait until a request's bytes arrive (True: counted busy) or a stop (False)."""
        while True:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            with self.server.lock:
                if readable:
                    self.server.busy += 1
                    return True
                if self.server.stopping:
                    return False

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server = self.server
        if server.delay:
            time.sleep(server.delay)
        request_id = self.headers.get("X-Request-Id", "-")
        client = self.headers.get("X-Client", "-")
        server.record(f"{self.command} {request_id} {client} {time.time():.6f}\n")
        body = f"{server.name} {self.command} {request_id}".encode()
        self.send_response(200)
        self.send_header("X-Server", server.name)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if server.stopping:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer


class _Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = False          # server_close() waits for the requests being handled
    block_on_close = True

    def __init__(self, name: str, address: tuple[str, int], log: str, delay: float) -> None:
        super().__init__(address, _Handler)
        self.name = name
        self.delay = delay
        self.lock = threading.Lock()
        self.stopping = False
        self.busy = 0
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, line: str) -> None:
        os.write(self._log, line.encode())

    def stop(self) -> None:
        """Stop accepting, close idle connections, wait for the requests in flight."""
        with self.lock:
            self.stopping = True
        self.shutdown()             # the accept loop ends
        self.socket.close()         # new connections are refused from here on
        self.server_close()         # joins every connection's thread
        os.close(self._log)


def main(argv: list[str]) -> int:
    name, host, port, log, *delay = argv
    server = _Server(name, (host, int(port)), log, float(delay[0]) if delay else 0.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    print(f"{LISTENING}http://{bound_host}:{bound_port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    thread.join()
    return 0


class BackendProcess:
    """One :mod:`fleet_backend` process named ``name`` on ``host:port`` taking ``delay``
    seconds per request; every run appends to ``folder/NAME-RUN.log`` (run 0, 1, ... one
    per :meth:`start`)."""

    def __init__(self, name: str, host: str, port: int, folder: pathlib.Path, *,
                 delay: float = 0.0) -> None:
        self.name, self.host, self.port, self.folder = name, host, port, folder
        self.delay = delay
        self.runs = 0
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self, run: int) -> pathlib.Path:
        return self.folder / f"{self.name}-{run}.log"

    def lines(self, run: int | None = None) -> list[list[str]]:
        """The requests recorded by one run (all runs: None), as ``[method, id, client,
        time]``."""
        runs = range(self.runs) if run is None else [run]
        return [line.split() for r in runs if self.log(r).exists()
                for line in self.log(r).read_text().splitlines()]

    def start(self, timeout: float = 10.0) -> BackendProcess:
        log = self.log(self.runs)
        self.runs += 1
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.name, self.host, str(self.port), str(log),
             str(self.delay)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready and self.process.stdout else ""
        if not line.startswith(LISTENING):
            errors = self.stop()
            raise RuntimeError(f"backend {self.name} did not start: {line!r} {errors!r}")
        return self

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM (then SIGKILL after ``timeout``); returns what it wrote on stderr and
        raises if it did not exit 0 by itself."""
        process, self.process = self.process, None
        if process is None:
            return ""
        from .processes import stop_process  # (here: this file also runs as a script)
        stop_process(process, timeout)
        _, errors = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"backend {self.name} exited {process.returncode}: {errors}")
        return errors


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
