"""The gateway's HTTP server, attacked and stopped: ``python -m lbmiddleware serve`` under
granian and uvicorn in a subprocess, with loopback backends and raw sockets.

Each gateway runs in its own session (process group), so a worker that freezes is killed
with its parent and never outlives the test.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests

from .asgi_client import GatewayProcess
from .servers import BackendServer, read_request_head

SERVERS = ["granian", "uvicorn"]


class Gateway(GatewayProcess):
    """A :class:`GatewayProcess` in a process group of its own, with bounded waits: the
    banner is awaited for ``timeout`` seconds, and ``terminate()`` reports how it ended."""

    def start(self, timeout: float = 15.0) -> "Gateway":
        import re
        self.process = subprocess.Popen(self.args, env=self.environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the gateway did not start: {line!r}")
        self.banner = line
        self.port = int(match.group(1))
        return self

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``timeout`` s: ``(exit status or None, seconds)``."""
        began = time.monotonic()
        self.process.terminate()
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - began

    def stop(self) -> str:
        """Kill whatever is left of the process group; returns what it wrote on stderr."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.terminate(5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)     # a worker left behind, say
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(5)
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        self.process = None
        return errors


def gateway_env(server: str, backends: str, **settings: str) -> dict[str, str]:
    return {"LB_SERVER": server, "LB_BACKENDS": backends, **settings}


# -- item 2: no thread alive across granian's fork ------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: ``(cert.pem, key.pem)``."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    return cert, key


class TLSBackend(BackendServer):
    """The echo backend behind TLS (https://127.0.0.1:PORT)."""

    def __init__(self, name: str, cert: str, key: str) -> None:
        super().__init__(name)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "TLSBackend":
        super().start()         # nothing connects before the listening socket is wrapped
        self._server.socket = self.context.wrap_socket(self._server.socket, server_side=True)
        return self


STARTS = 5


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("kind", ["localhost", "https"])
def test_a_backend_named_by_host_name_or_on_https_never_freezes_the_gateway(
        server, kind, certificate):
    """The granian parent once probed its port from a thread that imported
    ``encodings.idna`` while the worker was forked: the worker inherited the import lock
    held and froze on its first host name or TLS connection (about half the starts)."""
    cert, key = certificate
    backend = TLSBackend("a", cert, key) if kind == "https" else BackendServer("a")
    with backend:
        url = backend.url if kind == "https" else f"http://localhost:{backend.port}"
        # ssl.create_default_context() (the upstream client's) trusts SSL_CERT_FILE
        environ = gateway_env(server, url, LB_READ_TIMEOUT="2s", SSL_CERT_FILE=cert)
        failures: dict[int, list[str]] = {}
        for start in range(STARTS):
            gateway = Gateway(environ).start()
            try:
                try:
                    response = requests.get(f"{gateway.url}/x", timeout=3)
                    if response.status_code != 200 or response.json()["server"] != "a":
                        failures.setdefault(start, []).append(
                            f"{response.status_code} {response.text!r}")
                except requests.RequestException as exc:
                    failures.setdefault(start, []).append(type(exc).__name__)
                status, _ = gateway.terminate(5)
                if status is None:
                    failures.setdefault(start, []).append("still running 5 s after SIGTERM")
            finally:
                gateway.stop()
        assert not failures, f"{len(failures)} of {STARTS} starts failed: {failures}"
