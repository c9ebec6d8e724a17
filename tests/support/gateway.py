"""The gateway (``python -m lbmiddleware serve``) as a subprocess a test starts and stops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


class GatewayProcess:
    """``python -m lbmiddleware serve`` in a subprocess on a port the OS chooses.

    ``environ`` holds the ``LB_*`` settings (``LB_LISTEN`` defaults to port 0); the port
    is read from the line the gateway prints. ``stop()`` sends SIGTERM (then SIGKILL).

    Under granian, port 0 is a free port the gateway looks up and hands to granian's
    worker, which binds it a moment later; another socket of the test run can take it in
    between ("Address already in use"). ``start`` then tries again, up to twice.
    """

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        self.environ.update({"LB_LISTEN": "127.0.0.1:0", "PYTHONUNBUFFERED": "1"})
        self.environ.update(environ)
        self.args = [sys.executable, "-m", "lbmiddleware", "serve"]
        self.process = None
        self.port = 0
        self.banner = ""

    def start(self, timeout: float = 15.0, attempts: int = 3) -> GatewayProcess:
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                port_zero = self.environ["LB_LISTEN"].endswith(":0")
                if not (port_zero and "Address already in use" in str(exc)) \
                        or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> GatewayProcess:
        self.process = subprocess.Popen(self.args, env=self.environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline()       # the banner, or "" if it exited
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not match or time.monotonic() > deadline:
            errors = self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r} {errors!r}")
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

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
