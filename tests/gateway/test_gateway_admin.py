"""The gateway's admin listener (``LB_ADMIN_LISTEN``): the status app on a port of its own,
in the process that owns the pool, from the lifespan's startup to its shutdown.

In-process first, with a trivial WSGI app in its place (``GatewayApp(admin_app=...)``):
the listener's lifecycle, and its bounds under clients that do not behave (it shares the
proxy's process: what it lets a client hold, the proxy pays for). Then ``python -m
lbmiddleware serve`` under each of its servers, with the real status app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from lbmiddleware.gateway import AdminServer, GatewayApp, bind
from lbmiddleware.gateway_settings import load_settings

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.waiting import until, until_async
from .test_gateway_logs import log_lines
from .test_gateway_server import closed_within


def hello(environ, start_response):
    """The trivial WSGI app standing in for the status app."""
    body = f"hello from {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def admin_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lbmiddleware-admin"]


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lbmiddleware-admin-")]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def in_lifespan(app, during):
    """Run the app's lifespan: startup, then ``during()`` in a thread (it may block on
    sockets while the loop turns), then shutdown; returns what ``during`` returned and the
    messages the app sent."""
    incoming: asyncio.Queue = asyncio.Queue()
    sent: list[str] = []

    async def send(message):
        sent.append(message["type"])

    await incoming.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   incoming.get, send))
    await until_async(lambda: sent or task.done(), 10, "the lifespan's startup")
    try:
        result = await asyncio.to_thread(during)
    finally:
        await incoming.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 10)
    return result, sent


def settings(backend: str, **changes):
    return load_settings({"LB_BACKENDS": backend}, **changes)


# -- the listener's lifecycle, in-process ---------------------------------------------------

def test_the_admin_listener_lives_from_startup_to_shutdown(servers):
    a = servers("a")
    app = GatewayApp(settings(a.url, admin_listen="127.0.0.1:0"), admin_app=lambda pool: hello)
    assert app.admin is None and not admin_threads()        # nothing before the startup

    def during():
        admin = app.admin
        reply = requests.get(f"{admin.url}/status.json", timeout=5)
        return admin, admin.address[1], reply.status_code, reply.text, admin_threads()

    (admin, port, status, text, threads), sent = asyncio.run(in_lifespan(app, during))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert port != 0 and (status, text) == (200, "hello from /status.json")
    assert threads == [admin.thread]
    # gone with the shutdown: the threads ended, the port closed
    assert not admin.thread.is_alive() and not admin_threads() and not worker_threads()
    assert app.admin is None and refused(port)


def test_the_admin_app_is_made_for_the_gateways_own_pool(servers):
    a = servers("a")
    pools = []
    app = GatewayApp(settings(a.url, admin_listen="127.0.0.1:0"),
                     admin_app=lambda pool: pools.append(pool) or hello)
    asyncio.run(in_lifespan(app, lambda: None))
    assert pools == [app.balancer]


def test_a_socket_bound_before_serves_the_admin_app(servers):
    """``serve`` binds the admin address before granian forks; the worker serves on it."""
    a = servers("a")
    sock = bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = GatewayApp(settings(a.url), admin_socket=sock, admin_app=lambda pool: hello)
    text, _ = asyncio.run(in_lifespan(
        app, lambda: requests.get(f"http://127.0.0.1:{port}/x", timeout=5).text))
    assert text == "hello from /x"
    assert sock.fileno() == -1 and refused(port)        # closed at the shutdown


def test_without_an_admin_address_no_listener_starts(servers):
    a = servers("a")
    app = GatewayApp(settings(a.url), admin_app=lambda pool: hello)
    threads, _ = asyncio.run(in_lifespan(app, admin_threads))
    assert threads == [] and app.admin is None


def test_the_admin_server_stops_even_if_never_started():
    server = AdminServer(hello, bind(("127.0.0.1", 0)))
    port = server.address[1]
    server.stop()
    assert refused(port)


def test_the_real_status_app_answers_in_process(servers):
    a = servers("a")
    app = GatewayApp(settings(a.url, admin_listen="127.0.0.1:0"))

    def during():
        return (requests.get(f"{app.admin.url}/status.json", timeout=5).json(),
                requests.get(f"{app.admin.url}/ready", timeout=5).status_code)

    (snapshot, ready), _ = asyncio.run(in_lifespan(app, during))
    assert snapshot["schema"] == 1 and ready == 200
    assert [b["url"] for b in snapshot["pools"][0]["backends"]] == [a.url]


# -- its bounds, in-process ----------------------------------------------------------------

@pytest.fixture
def admin_server():
    """``admin_server(app, **bounds)``: an :class:`AdminServer` started on a free port,
    stopped after the test."""
    started: list[AdminServer] = []

    def start(app=hello, **bounds) -> AdminServer:
        server = AdminServer(app, bind(("127.0.0.1", 0)), **bounds)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def get_status(url: str) -> int:
    return requests.get(url, timeout=5).status_code


def test_connections_beyond_the_workers_and_the_backlog_are_closed_at_once(admin_server,
                                                                          caplog):
    """A fixed pool of threads (``workers``) and ``backlog`` accepted connections waiting for
    one: more are closed as soon as accepted (and counted in a WARNING), so idle clients
    cannot take a thread and a file descriptor each from the proxy's process."""
    caplog.set_level(logging.WARNING, logger="lbmiddleware.gateway")
    server = admin_server(workers=2, backlog=2, header_timeout=10.0)
    address = ("127.0.0.1", server.address[1])
    idle = [socket.create_connection(address) for _ in range(4)]
    try:
        extra = [socket.create_connection(address) for _ in range(20)]
        assert [closed_within(sock, 2.0) for sock in extra] == [True] * 20
        for sock in extra:
            sock.close()
        assert not any(closed_within(sock, 0.01) for sock in idle)     # held, not cut
        assert len(worker_threads()) == 2 and server.connections == 4
    finally:
        for sock in idle:
            sock.close()
    # The workers see the idle clients leave (end of stream) a moment after they close.
    until(lambda: server.connections == 0, 5.0, "the server seeing the idle clients leave")
    assert get_status(f"{server.url}/x") == 200         # served once they left
    assert [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.gateway"] == [
        "admin listener busy (2 connections served, 2 waiting): 1 connection closed at once"]


def test_a_client_trickling_its_head_is_cut_at_the_header_timeout(admin_server):
    """``header_timeout`` bounds the whole head, not each read: bytes arriving do not
    extend it."""
    server = admin_server(header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.address[1])) as slow, \
            socket.create_connection(("127.0.0.1", server.address[1])) as silent:
        slow.sendall(b"GET /status HTTP/1.1\r\n")
        began = time.monotonic()
        assert closed_within(slow, 3.0, trickle=b"X-Slow: " + b"a" * 100)
        assert time.monotonic() - began < 2.0
        assert closed_within(silent, 0.5)
    assert get_status(f"{server.url}/x") == 200


def test_timeouts_and_clients_gone_are_logged_quietly_an_app_error_with_its_traceback(
        admin_server, caplog, capfd):
    """A client that times out or leaves is a DEBUG line; the app's own error is an ERROR
    record with its traceback (and a 500): nothing goes to stderr bare, where wsgiref's
    handler and socketserver print theirs."""
    caplog.set_level(logging.DEBUG, logger="lbmiddleware.gateway")

    def broken(environ, start_response):
        raise RuntimeError("the status app broke")

    server = admin_server(header_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.address[1])) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        assert closed_within(sock, 3.0)
    with socket.create_connection(("127.0.0.1", server.address[1])) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    failing = admin_server(broken)
    assert get_status(f"{failing.url}/x") == 500
    until(lambda: len([r for r in caplog.records if r.name == "lbmiddleware.gateway"]) >= 3,
          5, "three log records")
    records = [(r.levelname, r.getMessage(), r.exc_info is not None)
               for r in caplog.records if r.name == "lbmiddleware.gateway"]
    assert sorted(records) == [
        ("DEBUG", "admin listener: 127.0.0.1 left before the end of its request head", False),
        ("DEBUG", "admin listener: 127.0.0.1 sent no request head in 0.3 s: closed", False),
        ("ERROR", "admin listener: the app failed on GET /x", True)]
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("bounds, message", [
    ({"workers": 0}, "AdminServer: workers has value 0: at least 1"),
    ({"backlog": -1}, "AdminServer: backlog has value -1: at least 0"),
    ({"header_timeout": 0}, "AdminServer: header_timeout has value 0: above 0 seconds")])
def test_bad_bounds_are_refused_naming_them(bounds, message):
    with bind(("127.0.0.1", 0)) as sock, pytest.raises(ValueError, match=f"^{message}$"):
        AdminServer(hello, sock, **bounds)


def test_stop_ends_the_connections_in_progress_at_once(admin_server):
    server = admin_server(header_timeout=30.0)
    with socket.create_connection(("127.0.0.1", server.address[1])) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        until(lambda: server.connections == 1, 5, "the connection in a worker")
        began = time.monotonic()
        server.stop()
        assert time.monotonic() - began < 2.0
        assert closed_within(sock, 1.0)
    assert not admin_threads() and not worker_threads() and refused(server.address[1])


# -- the gateway ------------------------------------------------------------------------------

@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_the_admin_port_serves_status_while_the_proxied_port_passes_status_on(server, servers):
    a = servers("a")
    process = GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": a.url,
                              "LB_ADMIN_LISTEN": "127.0.0.1:0"}).start()
    try:
        assert process.admin_port not in (0, process.port)
        assert f"; admin http://127.0.0.1:{process.admin_port}/status" in process.banner
        snapshot = requests.get(f"{process.admin_url}/status.json", timeout=5).json()
        assert snapshot["schema"] == 1 and snapshot["ready"] is True
        assert [b["url"] for b in snapshot["pools"][0]["backends"]] == [a.url]
        ready = requests.get(f"{process.admin_url}/ready", timeout=5)
        assert ready.status_code == 200
        page = requests.get(f"{process.admin_url}/status", timeout=5)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        # the proxied port's /status is the backends' path, as any other
        proxied = requests.get(f"{process.url}/status", timeout=5)
        assert proxied.json()["server"] == "a" and proxied.json()["path"] == "/status"
        assert a.requests == 1
    finally:
        errors = process.stop()
    assert "Traceback" not in errors
    assert refused(process.admin_port)        # gone with the gateway


def test_gateways_with_admin_port_0_get_their_own_ports(servers):
    """One gateway under each server, all at once."""
    backends = [servers(name) for name in "abc"]
    started = [GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": backend.url,
                               "LB_ADMIN_LISTEN": "127.0.0.1:0"})
               for server, backend in zip(GATEWAY_SERVERS, backends, strict=True)]
    try:
        for process in started:
            process.start()
        ports = [process.admin_port for process in started]
        assert 0 not in ports and len(set(ports)) == len(GATEWAY_SERVERS)
        for process, backend in zip(started, backends, strict=True):
            snapshot = requests.get(f"{process.admin_url}/status.json", timeout=5).json()
            assert [row["url"] for row in snapshot["pools"][0]["backends"]] == [backend.url]
    finally:
        for process in started:
            process.stop()


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_an_admin_address_in_use_names_the_setting(server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "lbmiddleware", "serve"], capture_output=True, text=True,
            timeout=30, env={**{k: v for k, v in os.environ.items() if not k.startswith("LB_")},
                             "LB_SERVER": server, "LB_BACKENDS": "http://127.0.0.1:1",
                             "LB_LISTEN": "127.0.0.1:0", "LB_ADMIN_LISTEN": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert result.stderr == (f"python -m lbmiddleware serve: error: cannot listen on "
                             f"127.0.0.1:{port} (LB_ADMIN_LISTEN): Address already in use\n")
    assert result.stdout == ""



@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_idle_admin_connections_do_not_starve_the_proxy(server, servers):
    """The proxied port is bounded (``LB_MAX_CONNECTIONS``) so that slow clients cannot use
    up the process's file descriptors (256 here: 1024 is a common default); the admin port,
    in the same process, is bounded too: 300 connections that never send a request leave
    the proxy answering, and the admin port itself answers once they are gone."""
    a = servers("a")
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    process = GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": a.url,
                              "LB_ADMIN_LISTEN": "127.0.0.1:0", "LB_MAX_CONNECTIONS": "64"}
                             ).start(preexec_fn=limit)
    idle: list[socket.socket] = []
    try:
        assert get_status(f"{process.url}/x") == 200
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", process.admin_port), timeout=5))
        time.sleep(0.5)         # the listener accepts (and closes) them meanwhile
        assert [get_status(f"{process.url}/x") for _ in range(3)] == [200] * 3
        for sock in idle:
            sock.close()
        idle.clear()
        assert get_status(f"{process.admin_url}/ready") == 200
    finally:
        for sock in idle:
            sock.close()
        output = process.stop()
    assert "Traceback" not in output and "Too many open files" not in output


def test_the_admin_listener_takes_the_header_timeout_and_logs_no_bare_traceback(servers):
    """``LB_HEADER_TIMEOUT`` bounds a request head on the admin port as on the proxied one
    (a client trickling its head is cut); a client that times out leaves no traceback in the
    gateway's log, whose every line has its time, level and logger."""
    a = servers("a")
    with GatewayProcess({"LB_BACKENDS": a.url, "LB_ADMIN_LISTEN": "127.0.0.1:0",
                         "LB_HEADER_TIMEOUT": "1"}) as process:
        address = ("127.0.0.1", process.admin_port)
        with socket.create_connection(address) as slow, \
                socket.create_connection(address) as silent:
            slow.sendall(b"GET /status HTTP/1.1\r\n")
            assert closed_within(slow, 4.0, trickle=b"X-Slow: " + b"a" * 100)
            assert closed_within(silent, 1.0)
        assert get_status(f"{process.admin_url}/ready") == 200
        output = process.stop()
    log_lines(output)           # fails on a line without time, level and logger
    assert "Traceback" not in output


# granian's alone: its main process starts a new worker on SIGHUP; the other servers
# serve in the gateway's own process (their SIGHUP: test_gateway_reload.py).
def test_the_admin_port_survives_granians_worker_reload_on_sighup(servers):
    """granian reloads its worker on SIGHUP (what operators send to "reload"); the new
    worker serves the admin port on the socket bound before the first fork, as the first
    did: the main process keeps it open for every worker it starts."""
    a = servers("a")
    process = GatewayProcess({"LB_SERVER": "granian", "LB_BACKENDS": a.url,
                              "LB_ADMIN_LISTEN": "127.0.0.1:0"}).start()
    try:
        assert get_status(f"{process.admin_url}/ready") == 200
        first = process.proxy_pid
        assert first != process.pid
        os.kill(process.pid, signal.SIGHUP)
        until(lambda: process.proxy_pid not in (first, process.pid), 15, "a new worker")
        until(lambda: not os.path.exists(f"/proc/{first}"), 15, "the old worker gone")
        assert get_status(f"{process.url}/x") == 200
        assert get_status(f"{process.admin_url}/ready") == 200
        snapshot = requests.get(f"{process.admin_url}/status.json", timeout=5).json()
        assert [b["url"] for b in snapshot["pools"][0]["backends"]] == [a.url]
    finally:
        output = process.stop()
    assert "Lifespan errored" not in output and "Traceback" not in output, output
    assert refused(process.admin_port)
