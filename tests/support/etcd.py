"""A real etcd (Debian's ``etcd-server``) on loopback for the discovery tests.

:class:`EtcdServer` starts ``etcd`` as a single-member cluster on 127.0.0.1 with client and
peer ports chosen by the OS and a data directory of its own, and waits until it answers. A
test may ``kill()`` it (SIGKILL: no goodbye to its clients) or ``stop()`` it (SIGTERM) and
``start()`` it again on the same ports and data directory: keys, revisions and leases survive.

Fast start: a heartbeat of 10 ms and an election timeout of 100 ms make the single member
its own leader in a fraction of a second (the defaults, 100 ms and 1 s, take over a second),
and they lower etcd's minimum lease TTL (1.5 election timeouts, rounded up to whole seconds)
from 2 s to 1 s, so lease-expiry tests wait 1-2 s instead of 3-4.

The helpers (``put``, ``delete``, ``get``, ``compact``, ``grant``) talk to the v3 JSON gateway
with urllib, as any operator's script would; they are the test's hands, not the code under
test.
"""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from .ports import restartable_port
from .processes import stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 15.0         # seconds for etcd to answer after start


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return b64(bytes(data))


class EtcdServer:
    """One etcd process; ``start()`` after ``stop()``/``kill()`` reuses ports and data."""

    def __init__(self, directory: pathlib.Path, name: str = "test") -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_path = directory / "etcd.log"
        self.name = name
        self.client_port = restartable_port()
        self.peer_port = restartable_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def source(self, prefix: str) -> str:
        """``etcd://127.0.0.1:<port>/<prefix>``: the source entry for keys under prefix."""
        return f"etcd://127.0.0.1:{self.client_port}/{prefix.strip('/')}"

    # -- the process -------------------------------------------------------------------

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--heartbeat-interval", "10", "--election-timeout", "100",
        ]
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")     # noqa: SIM115  (the child keeps it)
        try:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.starts += 1
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                self.call("/v3/kv/range", {"key": b64("health-check")}, timeout=1.0)
                return
            except (OSError, urllib.error.URLError, RuntimeError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not answer in {START_TIMEOUT}s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: etcd dies without closing anything properly."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.process is not None:
            stop_process(self.process, 10, sig)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- the test's hands (v3 JSON gateway through urllib) --------------------------------

    def call(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"etcd {path}: {exc.code} {exc.read()!r}") from None
        return answer

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Put ``key``; returns the new revision."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self.call("/v3/kv/deleterange", {"key": b64(key)}).get("deleted", 0))

    def get(self, prefix: str) -> dict[str, str]:
        """Every key starting with ``prefix`` and its value."""
        answer = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in answer.get("kvs", [])}

    def lease_of(self, key: str) -> int:
        answer = self.call("/v3/kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return int(kvs[0].get("lease", 0)) if kvs else 0

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": b64("x")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact the history up to ``revision`` (default: the current one)."""
        revision = self.revision() if revision is None else revision
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_ttl(self, lease: int) -> int:
        """Seconds left on ``lease`` (-1: it does not exist)."""
        return int(self.call("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", 0))
