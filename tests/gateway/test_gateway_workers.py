"""``serve --workers N`` / ``LB_WORKERS`` (issue 15): N fast-server processes on one address
(``SO_REUSEPORT``), each with its own pools, under a parent that prints the banner once all
listen, forwards SIGHUP, stops them all on SIGTERM and starts again one that dies.

The gateway process with real loopback backends; then the parts that need no process: the
restart delay (:class:`Backoff`, driven by its arguments) and a worker that cannot start (the
parent forked from this test process, its worker's ``serve`` a function of the test's). The
merge of the workers' metrics: tests/observe/test_peers.py.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import textwrap
import threading

import pytest
import requests

from lbmiddleware.errors import ConfigError
from lbmiddleware.gateway.fast.workers import (
    Backoff,
    Supervisor,
    WorkerFailed,
    bind_shared,
    serve_workers,
)
from lbmiddleware.gateway.listen import CannotListen, bind
from lbmiddleware.gateway_settings import load_settings
from lbmiddleware.observe import worker as observe_worker

from ..support.gateway import GatewayProcess
from ..support.waiting import until

# Fresh connections sent to find both workers: the kernel hashes each connection to one
# worker's socket, so 2 workers are both found in a few (one-sided 64 times: about 1 in 10^19).
TRIES = 64


def children(pid: int) -> set[int]:
    """The processes ``pid`` started (its workers), from /proc."""
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return {int(child) for child in listed.read().split()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"   # not a zombie
    except FileNotFoundError:
        return False


def status(gateway: GatewayProcess) -> dict:
    """``/status.json`` on a new connection (so any worker may answer)."""
    response = requests.get(f"{gateway.admin_url}/status.json", timeout=10,
                            headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    return response.json()


def workers_seen(gateway: GatewayProcess, count: int = 2) -> dict[int, dict]:
    """Each worker's status.json by its index, asking on new connections until all
    ``count`` answered (at most :data:`TRIES` asks)."""
    seen: dict[int, dict] = {}
    for _ in range(TRIES):
        snap = status(gateway)
        seen[snap["worker"]["index"]] = snap
        if len(seen) == count:
            break
    return seen


def get(gateway: GatewayProcess, path: str = "/x") -> requests.Response:
    return requests.get(f"{gateway.url}{path}", timeout=10, headers={"Connection": "close"})


def metric(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` with ``labels`` (among others) in Prometheus text."""
    found = []
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match and match.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if all(have.get(key) == value for key, value in labels.items()):
                found.append(float(match.group(3)))
    assert len(found) == 1, f"{name}{labels}: {found} in\n{text}"
    return found[0]


def two_workers(backend, **more: str) -> GatewayProcess:
    return GatewayProcess({"LB_SERVER": "fast", "LB_WORKERS": "2", "LB_BACKENDS": backend.url,
                           "LB_ADMIN_LISTEN": "127.0.0.1:0", **more})


# -- the gateway process ---------------------------------------------------------------------

def test_two_workers_listen_on_one_port_and_both_answer(backends):
    a, _, _ = backends
    with two_workers(a) as gateway:
        assert "(prefix /, policy round_robin, fast, 2 workers) -> " in gateway.banner
        pids = children(gateway.pid)
        assert len(pids) == 2
        seen = workers_seen(gateway)
        assert sorted(seen) == [1, 2], seen
        assert {snap["worker"]["pid"] for snap in seen.values()} == pids
        assert all(snap["worker"]["count"] == 2 for snap in seen.values())
        page = requests.get(f"{gateway.admin_url}/status", timeout=10).text
        assert re.search(r"answered by worker [12] of 2 \(pid \d+\)\. Each worker has its own "
                         r"pools", page)
        for _ in range(TRIES):
            response = get(gateway)
            assert response.status_code == 200 and response.json()["server"] == "a"
        # each worker took some of the connections, and /metrics (from either) says so
        text = requests.get(f"{gateway.admin_url}/metrics", timeout=10).text
        counts = [metric(text, "lbmiddleware_backend_requests_total", backend=a.url,
                         outcome="success", worker=str(n)) for n in (1, 2)]
        assert sum(counts) == TRIES and all(counts), counts
        assert metric(text, "lbmiddleware_worker_up", worker="1") == 1
        assert metric(text, "lbmiddleware_worker_up", worker="2") == 1
        assert text.count("# TYPE lbmiddleware_backend_requests_total counter") == 1
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_sighup_reloads_the_config_in_every_worker(tmp_path, backends):
    a, b, _ = backends
    path = tmp_path / "gateway.toml"

    def write(backend) -> None:
        path.write_text(textwrap.dedent(f"""\
            [gateway]
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            server = "fast"
            workers = 2
            [[route]]
            prefix = "/api"
            backends = ["{backend.url}"]
            """))

    write(a)
    with GatewayProcess({}, config=path) as gateway:
        assert "(fast, 2 workers, 1 route from" in gateway.banner
        write(b)
        gateway.reload()
        gateway.wait_for_count(r"reloaded: route '/api' kept its pool \(backends: 1 added, "
                               r"1 removed\)", 2)
        for _ in range(TRIES):
            assert get(gateway, "/api/x").json()["server"] == "b"
        for snap in workers_seen(gateway).values():
            assert [row["url"] for row in snap["pools"][0]["backends"]] == [b.url]


def test_sighup_without_a_config_file_is_logged_once_and_ends_no_worker(backends):
    a, _, _ = backends
    with two_workers(a) as gateway:
        pids = children(gateway.pid)
        gateway.reload()
        gateway.wait_for_output("SIGHUP: nothing to re-read")
        assert get(gateway).status_code == 200
        assert children(gateway.pid) == pids
        assert gateway.count_output("SIGHUP") == 1


def test_sigterm_stops_every_worker_gracefully_and_the_gateway_exits_0(backends):
    a, _, _ = backends
    a.delay = 0.5
    gateway = two_workers(a).start()
    try:
        pids = children(gateway.pid)
        answers: list[requests.Response] = []
        slow = threading.Thread(target=lambda: answers.append(get(gateway)), daemon=True)
        slow.start()
        until(lambda: a.requests == 1, 5, "the request reaching the backend")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(15) == 0
        slow.join(10)
        assert [r.status_code for r in answers] == [200]    # the request in flight ended
        assert not any(alive(pid) for pid in pids)
        assert "SIGTERM: stopping the 2 workers" in gateway.finish()
    finally:
        gateway.stop()


def test_a_killed_worker_is_started_again(backends):
    a, _, _ = backends
    with two_workers(a) as gateway:
        first = children(gateway.pid)
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        line = gateway.wait_for_output(rf"worker \d \(pid {killed}\) was killed by SIGKILL")
        assert "WARNING" in line and "starting it again" in line
        gateway.wait_for_output(r"worker \d \(pid \d+\) serving again")
        now = children(gateway.pid)
        assert len(now) == 2 and killed not in now and first - {killed} < now
        seen = workers_seen(gateway)
        assert {snap["worker"]["pid"] for snap in seen.values()} == now
        for _ in range(8):
            assert get(gateway).status_code == 200


def test_workers_stop_when_the_parent_is_killed(backends):
    a, _, _ = backends
    gateway = two_workers(a).start()
    try:
        pids = children(gateway.pid)
        gateway.process.kill()
        gateway.process.wait(10)
        until(lambda: not any(alive(pid) for pid in pids), 10, "the workers' end")
    finally:
        for pid in pids:            # (only if the test failed: they are the test's)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        gateway.stop()


def test_an_address_in_use_is_refused_before_any_worker_starts(backends):
    a, _, _ = backends
    taken = bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        gateway = GatewayProcess({"LB_SERVER": "fast", "LB_WORKERS": "2",
                                  "LB_BACKENDS": a.url, "LB_LISTEN": f"127.0.0.1:{port}"})
        with pytest.raises(RuntimeError, match=rf"cannot listen on 127\.0\.0\.1:{port} "
                                               r"\(LB_LISTEN\): Address already in use"):
            gateway.start(attempts=1)
    finally:
        taken.close()


# -- no process --------------------------------------------------------------------------------

def test_bind_shared_binds_one_port_for_every_worker_and_refuses_one_in_use():
    socks = bind_shared(("127.0.0.1", 0), 3, "LB_LISTEN")
    try:
        ports = {sock.getsockname()[1] for sock in socks}
        assert len(socks) == 3 and len(ports) == 1
        # another group of workers may not join it unnoticed
        with pytest.raises(CannotListen, match=r"\(LB_LISTEN\): Address already in use"):
            bind_shared(("127.0.0.1", ports.pop()), 2, "LB_LISTEN")
    finally:
        for sock in socks:
            sock.close()


def test_a_worker_that_served_long_is_started_again_at_once():
    backoff = Backoff(first=0.5, most=4.0, steady=10.0)
    assert backoff.delay(3600.0) == 0.0
    assert backoff.delay(10.0) == 0.0


def test_a_worker_dying_young_waits_longer_each_time_up_to_the_most():
    backoff = Backoff(first=0.5, most=4.0, steady=10.0)
    assert [backoff.delay(None), backoff.delay(1.0), backoff.delay(None), backoff.delay(9.9),
            backoff.delay(None), backoff.delay(None)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10.0) == 0.0               # it served long: its record forgotten
    assert backoff.delay(None) == 0.5


def test_a_fork_that_fails_leaves_no_pipe_open(monkeypatch):
    """os.fork() raising (EAGAIN at a process limit) closes the new worker's pipe: both its
    descriptors leaked before (review L12)."""
    def fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    sock = bind(("127.0.0.1", 0))
    supervisor = Supervisor(load_settings(environ={"LB_BACKENDS": "http://127.0.0.1:1"}), [sock],
                            None, lambda: None)
    try:
        before = set(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(os, "fork", fork)
        with pytest.raises(BlockingIOError):
            supervisor._start(supervisor.workers[0])
        assert set(os.listdir("/proc/self/fd")) == before
    finally:
        supervisor._selector.close()
        for fd in (supervisor._wake_r, supervisor._wake_w, supervisor._life_r,
                   supervisor._life_w):
            os.close(fd)
        sock.close()


def test_a_worker_that_cannot_start_ends_the_gateway_with_its_error(backends):
    a, _, _ = backends
    settings = load_settings(environ={"LB_BACKENDS": a.url, "LB_SHUTDOWN_TIMEOUT": "1"})
    socks = bind_shared(("127.0.0.1", 0), 2, "LB_LISTEN")
    printed: list[str] = []

    def serve(settings, sock, admin, banner) -> None:
        raise ConfigError(f"worker {observe_worker.current_worker().index}: no such thing")

    try:
        with pytest.raises(ConfigError, match=r"worker [12]: no such thing"):
            serve_workers(settings, socks, None, lambda: printed.append("banner"),
                          serve=serve)
        assert printed == []
    finally:
        for sock in socks:
            sock.close()


def test_a_worker_that_ends_before_it_serves_without_a_word_is_worker_failed(backends):
    a, _, _ = backends
    settings = load_settings(environ={"LB_BACKENDS": a.url, "LB_SHUTDOWN_TIMEOUT": "1"})
    socks = bind_shared(("127.0.0.1", 0), 2, "LB_LISTEN")

    def serve(settings, sock, admin, banner) -> None:
        os._exit(7)

    try:
        with pytest.raises(WorkerFailed, match=r"worker [12] \(pid \d+\) exited with status 7 "
                                               r"before it served"):
            serve_workers(settings, socks, None, lambda: None, serve=serve)
    finally:
        for sock in socks:
            sock.close()


def test_workers_answer_on_sockets_of_one_port(backends):
    """Each worker serves the socket of its place: a plain server of the test's stands in
    for the fast one, answering with its worker's index; both are reached on one port."""
    a, _, _ = backends
    settings = load_settings(environ={"LB_BACKENDS": a.url, "LB_SHUTDOWN_TIMEOUT": "1"})
    socks = bind_shared(("127.0.0.1", 0), 2, "LB_LISTEN")
    port = socks[0].getsockname()[1]

    def serve(settings, sock, admin, banner) -> None:
        index = str(observe_worker.current_worker().index).encode()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        banner()
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.sendall(index)

    answered: set[bytes] = set()

    def banner() -> None:
        for _ in range(TRIES):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                answered.add(conn.recv(16))
            if len(answered) == 2:
                break
        os.kill(os.getpid(), signal.SIGTERM)       # the parent's: stops the workers

    try:
        serve_workers(settings, socks, None, banner, serve=serve)
    finally:
        for sock in socks:
            sock.close()
    assert answered == {b"1", b"2"}
