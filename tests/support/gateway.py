"""The gateway (``python -m lbmiddleware serve``) as a subprocess a test starts and stops,
and the servers every gateway test runs under (:data:`GATEWAY_SERVERS`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from .processes import stop_process

# ``LB_SERVER`` values every gateway test runs under: the gateway's own fast server (the
# default) and the ASGI path under granian and under uvicorn. A test module that
# parametrizes the server takes this list; one that tests a server's own limits names that
# server alone, with a comment saying why.
GATEWAY_SERVERS = ["fast", "granian", "uvicorn"]


class GatewayProcess:
    """``python -m lbmiddleware serve`` in a subprocess on a port the OS chooses.

    ``environ`` holds the ``LB_*`` settings (``LB_LISTEN`` defaults to port 0); the port
    is read from the line the gateway prints, and so is the admin port when
    ``LB_ADMIN_LISTEN`` is set (``admin_port``, ``admin_url``). ``stop()`` sends SIGTERM
    (then SIGKILL).

    What the gateway logs (its stderr) is read as it comes, by a thread, so a gateway that
    logs much never blocks on a full pipe: :meth:`output` is what it wrote so far,
    :meth:`wait_for_output` waits for a line, and ``stop()`` returns all of it.

    Under granian, port 0 is a free port the gateway looks up and hands to granian's
    worker, which binds it a moment later; another socket of the test run can take it in
    between ("Address already in use"). ``start`` then tries again, up to twice.

    ``config``: a config file (``serve --config``), which then holds the settings (its
    ``listen`` is best ``127.0.0.1:0``); ``LB_LISTEN`` is not set then. :meth:`reload` sends
    SIGHUP. The banner's address may be https:// (``LB_TLS_CERT``): ``scheme`` says which.
    """

    def __init__(self, environ: dict[str, str], *, config: str | os.PathLike | None = None
                 ) -> None:
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        self.environ["PYTHONUNBUFFERED"] = "1"
        if config is None:
            self.environ["LB_LISTEN"] = "127.0.0.1:0"
        self.environ.update(environ)
        self.config = None if config is None else os.fspath(config)
        self.args = [sys.executable, "-m", "lbmiddleware", "serve"]
        if self.config is not None:
            self.args += ["--config", self.config]
        self.scheme = "http"
        self.process = None
        self.port = 0
        self.admin_port = 0
        self.banner = ""
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0, attempts: int = 3, **popen) -> GatewayProcess:
        """Start the gateway and read its banner (``popen``: more arguments for ``Popen``,
        a ``preexec_fn`` setting a limit, say)."""
        for attempt in range(attempts):
            try:
                return self._start(timeout, **popen)
            except RuntimeError as exc:
                port_zero = self.config is not None or self.environ.get(
                    "LB_LISTEN", "").endswith(":0")
                if not (port_zero and "Address already in use" in str(exc)) \
                        or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float, **popen) -> GatewayProcess:
        self.spawn(**popen)
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline()       # the banner, or "" if it exited
        if time.monotonic() > deadline or not self.read_banner(line):
            errors = self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r} {errors!r}")
        return self

    def spawn(self, **popen) -> None:
        """Start the process (``popen``: more arguments for ``Popen``) and the thread that
        reads its stderr."""
        self.process = subprocess.Popen(self.args, env=self.environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, **popen)
        with self._lines_lock:
            self._lines = []
        self._reader = threading.Thread(target=self._read_stderr, args=(self.process.stderr,),
                                        name="gateway-stderr", daemon=True)
        self._reader.start()

    def read_banner(self, line: str) -> bool:
        """Take the ports from the banner ``line``; False when it is none."""
        match = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", line)
        if not match:
            return False
        self.banner = line
        self.scheme = match.group(1)
        self.port = int(match.group(2))
        admin = re.search(r"admin http://127\.0\.0\.1:(\d+)/status", line)
        self.admin_port = int(admin.group(1)) if admin else 0
        return True

    def _read_stderr(self, stream) -> None:
        try:
            for line in stream:
                with self._lines_lock:
                    self._lines.append(line)
        except (ValueError, OSError):       # closed by finish() (a worker left it open)
            pass

    def output(self) -> str:
        """What the gateway wrote on stderr so far."""
        with self._lines_lock:
            return "".join(self._lines)

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line of stderr that ``pattern`` (a regular expression) matches,
        waiting up to ``timeout`` seconds for it; AssertionError naming what came instead."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._lines_lock:
                found = next((line for line in self._lines if compiled.search(line)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s; the "
                                     f"gateway wrote:\n{self.output()}")
            time.sleep(0.01)

    def count_output(self, pattern: str) -> int:
        """How many lines of stderr so far ``pattern`` (a regular expression) matches."""
        compiled = re.compile(pattern)
        with self._lines_lock:
            return sum(1 for line in self._lines if compiled.search(line))

    def wait_for_count(self, pattern: str, count: int, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds until ``count`` lines match ``pattern``."""
        deadline = time.monotonic() + timeout
        while self.count_output(pattern) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} lines matching {pattern!r} in "
                                     f"{timeout} s; the gateway wrote:\n{self.output()}")
            time.sleep(0.01)

    def reload(self) -> None:
        """SIGHUP to the gateway's process (under granian, its main process)."""
        os.kill(self.pid, signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

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
        if self.process is None:
            return ""
        stop_process(self.process)
        return self.finish()

    def finish(self) -> str:
        """Once the process ended: close its pipes, end the reader; returns its stderr."""
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self.process.stdout.close()
        self.process.stderr.close()
        self.process = None
        return self.output()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
