"""The backend's ``Date`` and ``Server`` are the server's to say: under every ASGI server the
client gets one of each, the server's own (issue 14: under uvicorn the middleware sent both
twice, the backend's beside uvicorn's).

Measured before the rule was chosen (an application sending ``Date`` and ``Server``): uvicorn
and hypercorn add their own beside it (two of each), granian adds its own only when the
application sent none, and nothing in the ASGI scope says which server runs; so the
middleware drops the backend's, as nginx does (``proxy_hide_header``), and the server's go
out. The middleware runs as a user runs it: the server's command line, a module's ``app``
(tests/support/middleware_app.py), the settings from ``LB_*`` variables.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ..support.gateway import GatewayProcess
from ..support.processes import stop_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
OLD_DATE = "Mon, 01 Jan 2001 00:00:00 GMT"
ANSWER = [b"HTTP/1.1 200 OK\r\nDate: " + OLD_DATE.encode() + b"\r\nServer: backend/1.0\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"]
APP = "tests.support.middleware_app:app"
BIN = pathlib.Path(sys.executable).parent

# Each server's command line for APP on a port, and the Server it says.
SERVERS = {
    "uvicorn": ([str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", "{port}",
                 "--log-level", "warning", APP], "uvicorn"),
    "hypercorn": ([str(BIN / "hypercorn"), "--bind", "127.0.0.1:{port}", APP],
                  "hypercorn-h11"),
    "granian": ([str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                 "--port", "{port}", "--log-level", "warning", APP], "granian"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(server: str, backend_url: str) -> Iterator[int]:
    """APP under ``server`` in front of ``backend_url``; its port, once it accepts."""
    command, _ = SERVERS[server]
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    environ["LB_BACKENDS"] = backend_url
    process = subprocess.Popen([part.format(port=port) for part in command], cwd=ROOT,
                               env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not start: {process.stderr.read()!r}")
            time.sleep(0.05)
        yield port
    finally:
        stop_process(process)
        process.stderr.close()


def _get(port: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/x")
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _check_one_of_each(response: http.client.HTTPResponse, server_says: str) -> None:
    assert response.status == 200
    dates = response.headers.get_all("Date")
    assert len(dates) == 1 and dates != [OLD_DATE]          # the server's, fresh
    assert response.headers.get_all("Server") == [server_says]


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_the_middleware_under_each_server_sends_its_date_and_server_once(server,
                                                                          raw_backend):
    backend = raw_backend(ANSWER, ANSWER)
    with serving(server, backend.url) as port:
        for _ in range(2):
            _check_one_of_each(_get(port), SERVERS[server][1])
    assert len(backend.heads) == 2


# The gateway sends its server's Date and Server once, the backend's hidden (docs/contract.md:
# "the server in front sends its own", as nginx does): granian says its name, the fast server
# the project's. Not uvicorn: the gateway runs it with server_header=False, so it names none.
GATEWAY_SAYS = {"fast": "lbmiddleware", "granian": "granian"}


@pytest.mark.parametrize("server", GATEWAY_SAYS)
def test_the_gateway_sends_its_servers_date_and_server_once(server, raw_backend):
    backend = raw_backend(ANSWER)
    gateway = GatewayProcess({"LB_BACKENDS": backend.url, "LB_SERVER": server}).start()
    try:
        response = _get(gateway.port)
    finally:
        gateway.stop()
    assert response.status == 200
    dates = response.headers.get_all("Date")
    assert len(dates) == 1 and dates != [OLD_DATE]          # the server's, fresh
    assert response.headers.get_all("Server") == [GATEWAY_SAYS[server]]
