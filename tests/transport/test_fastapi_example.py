"""examples/fastapi_replicas.py run as a user runs it (its own command line, under uvicorn,
in a process of its own) against real loopback replicas, one of them refusing."""

from __future__ import annotations

import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
from collections import Counter

import httpx

from ..support.etcd import EtcdServer
from ..support.servers import refused_url

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "fastapi_replicas.py"
START_TIMEOUT = 30.0


def run_example(environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def first_line(process: subprocess.Popen[str]) -> str:
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    assert ready, f"the example printed nothing in {START_TIMEOUT} s"
    return process.stdout.readline()


def test_the_endpoints_call_the_replicas_through_one_pool(backends):
    dead = refused_url()
    urls = [s.url for s in backends] + [dead]
    process = run_example({"LB_BACKENDS": ",".join(urls), "LB_MAX_FAILS": "1"}, "--port", "0")
    try:
        line = first_line(process)
        assert line.startswith("serving on http://127.0.0.1:"), line
        with httpx.Client(base_url=line.split()[-1], timeout=10) as client:
            one = client.get("/items/7")
            assert one.status_code == 200
            assert one.json()["item"] == 7
            assert one.json()["inventory"]["body"]["path"] == "/items/7"
            fan_out = client.get("/fan-out", params={"calls": 12})
            assert fan_out.status_code == 200
            answers = fan_out.json()["answers"]
            assert [a["status"] for a in answers] == [200] * 12       # the dead one retried
            assert sorted(a["body"]["path"] for a in answers) == \
                sorted(f"/items/{i}" for i in range(12))
            served = Counter(a["body"]["server"] for a in answers)
            assert set(served) <= {"a", "b", "c"} and sum(served.values()) == 12
            rows = {row["url"]: row for row in client.get("/replicas").json()}
            assert [rows[url]["in_flight"] for url in urls] == [0, 0, 0, 0]
            assert sum(rows[url]["requests"] for url in urls[:3]) == 13
            assert rows[dead]["failures"] >= 1 and rows[dead]["state"] == "ejected"
            assert client.get("/fan-out", params={"calls": 0}).status_code == 422
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=15)
    # (uvicorn shuts down gracefully, the lifespan closing the client, then raises the
    # signal again: the exit status of a process ended by SIGTERM)
    assert process.returncode in (0, -signal.SIGTERM) and "Traceback" not in errors, errors
    assert sum(s.requests for s in backends) == 13


def test_a_failing_replica_is_a_502_and_no_replica_a_503(tmp_path):
    process = run_example({"LB_BACKENDS": refused_url(), "LB_RETRIES": "0"}, "--port", "0")
    try:
        with httpx.Client(base_url=first_line(process).split()[-1], timeout=10) as client:
            failed = client.get("/items/1")
            assert failed.status_code == 502
            assert "backends tried" in failed.json()["detail"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)

    etcd = EtcdServer(tmp_path / "etcd")             # a source with no replica registered
    etcd.start()
    process = run_example({"LB_BACKENDS": etcd.source("services/none")}, "--port", "0")
    try:
        with httpx.Client(base_url=first_line(process).split()[-1], timeout=10) as client:
            down = client.get("/items/1")
            assert down.status_code == 503
            assert "no inventory replica available" in down.json()["detail"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
        etcd.stop()


def test_a_bad_setting_is_one_line_and_exit_2():
    process = run_example({"LB_BACKENDS": "ftp://127.0.0.1:1"})
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "LB_BACKENDS has value 'ftp://127.0.0.1:1'" in errors


def test_the_example_serves_on_an_ipv6_loopback_host(backends):
    """``--host ::1``: the listener takes its address family from the host, and the line
    it prints is a URL (the address in brackets)."""
    process = run_example({"LB_BACKENDS": backends[0].url}, "--host", "::1", "--port", "0")
    try:
        line = first_line(process)
        assert line.startswith("serving on http://[::1]:"), line or process.stderr.read()
        with httpx.Client(base_url=line.split()[-1], timeout=10) as client:
            assert client.get("/items/3").json()["inventory"]["body"]["path"] == "/items/3"
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=15)
    assert "Traceback" not in errors, errors


def test_a_port_in_use_is_one_line_and_exit_2(backends):
    """A port already taken is a bad setting too: one line naming it, exit 2."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = run_example({"LB_BACKENDS": backends[0].url}, "--port", str(port))
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 2 and "Traceback" not in errors, errors[-400:]
    assert len(errors.strip().splitlines()) == 1 and f"127.0.0.1 port {port}" in errors, errors
