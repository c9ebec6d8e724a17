"""A real Prometheus server for the metrics tests (Debian's ``prometheus`` package), and
``promtool check metrics`` on an exposition.

The server runs as a child of the test on 127.0.0.1 with its own configuration and TSDB in a
temporary directory, scraping the test's targets every second; its port is a free one the
test looks up, tried again if another process takes it first (the only way to learn the
port: Prometheus cannot listen on port 0 and say which it got). ``stop()`` always ends it.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from .processes import stop_process


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: `make test` installs it "
                           f"(apt-get install prometheus)")
    return found


def promtool_check_metrics(text: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on ``text`` (Prometheus' own linter of an exposition:
    format, names, units, help); returncode 0 and empty output when it finds nothing."""
    return subprocess.run([binary("promtool"), "check", "metrics"], input=text.decode(),
                          capture_output=True, text=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One Prometheus server scraping ``targets`` (``host:port`` each, path ``/metrics``)
    every ``interval`` seconds, its files in ``directory``."""

    def __init__(self, directory: pathlib.Path, targets: Sequence[str],
                 interval: float = 1.0) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file = self.directory / "prometheus.yml"
        self.log_file = self.directory / "prometheus.log"
        seconds = f"{interval:g}s"
        config = {"global": {"scrape_interval": seconds, "scrape_timeout": seconds},
                  "scrape_configs": [{"job_name": "lbmiddleware", "metrics_path": "/metrics",
                                      "static_configs": [{"targets": list(targets)}]}]}
        self.config_file.write_text(json.dumps(config, indent=1))   # YAML reads JSON
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, attempts: int = 3) -> Prometheus:
        for attempt in range(attempts):
            self.port = _free_port()
            logged = len(self.log())
            if self._start(timeout):
                return self
            if "address already in use" not in self.log()[logged:] or attempt == attempts - 1:
                break
        log = self.log()
        self.stop()
        raise RuntimeError(f"prometheus did not start on port {self.port}: {log[-2000:]}")

    def _start(self, timeout: float) -> bool:
        """Start it and wait until it is ready; False when it exited first."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config_file}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus was not ready in {timeout} s: {self.log()[-2000:]}")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API (``/api/v1/query``): the vector's samples,
        each ``{"metric": {labels}, "value": [time, "value"]}``."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        if body["status"] != "success":
            raise RuntimeError(f"query {expression!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active targets and their scrape health (``/api/v1/targets``)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as answer:
            active: list[dict[str, Any]] = json.load(answer)["data"]["activeTargets"]
        return active

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
