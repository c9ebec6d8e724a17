"""The access log is the user's logging: a program that configures none sees nothing, even
with ``access_log=True``; one that configures it gets the lines in its own format. Each case
is a fresh interpreter running both middlewares under real servers (uvicorn, wsgiref)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

PROGRAM = """
import logging, sys
import requests
{configure}
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.wsgi import WSGILoadBalancer
from tests.support.asgi_server import ServerThread
from tests.support.servers import BackendServer
from tests.support.wsgi_server import serve_wsgi

with BackendServer("a") as a:
    asgi = LoadBalancerMiddleware(None, backends=[a.url], access_log=True)
    wsgi = WSGILoadBalancer(None, backends=[a.url], access_log=True)
    with ServerThread(asgi) as server:
        assert requests.get(f"http://127.0.0.1:{{server.port}}/asgi", timeout=5).ok
    with serve_wsgi(wsgi) as port:
        assert requests.get(f"http://127.0.0.1:{{port}}/wsgi", timeout=5).ok
    wsgi.close()
print("done")
"""


def run(configure: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    return subprocess.run([sys.executable, "-c", PROGRAM.format(configure=configure)],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_nothing_is_printed_without_a_logging_configuration():
    result = run("")
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


@pytest.mark.parametrize("configure", [
    "logging.basicConfig(level=logging.INFO, format='%(name)s|%(message)s')",
    "logging.basicConfig(format='%(name)s|%(message)s'); "
    "logging.getLogger('lbmiddleware.access').setLevel(logging.INFO)",
])
def test_a_configured_program_gets_the_lines_in_its_format(configure):
    result = run(configure)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("lbmiddleware.access|")]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("lbmiddleware.access|client=127.0.0.1 method=GET path=/asgi ")
    assert lines[1].startswith("lbmiddleware.access|client=127.0.0.1 method=GET path=/wsgi ")
