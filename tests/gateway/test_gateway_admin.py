"""The gateway's admin listener (``LB_ADMIN_LISTEN``): the status app on a port of its own,
in the process that owns the pool, from the lifespan's startup to its shutdown.

In-process first, with a trivial WSGI app in its place (``GatewayApp(admin_app=...)``):
the listener's lifecycle. Then ``python -m lbmiddleware serve`` under granian and uvicorn,
with the real status app.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

import pytest
import requests

from lbmiddleware.gateway import AdminServer, GatewayApp, bind
from lbmiddleware.gateway_settings import load_settings

from ..support.gateway import GatewayProcess
from ..support.waiting import until_async

SERVERS = ["granian", "uvicorn"]


def hello(environ, start_response):
    """The trivial WSGI app standing in for the status app."""
    body = f"hello from {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def admin_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lbmiddleware-admin"]


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
    # gone with the shutdown: the thread ended, the port closed
    assert not admin.thread.is_alive() and not admin_threads()
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


# -- the gateway ------------------------------------------------------------------------------

@pytest.mark.parametrize("server", SERVERS)
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


def test_two_gateways_with_admin_port_0_get_their_own_ports(servers):
    a, b = servers("a"), servers("b")
    started = [GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": backend.url,
                               "LB_ADMIN_LISTEN": "127.0.0.1:0"})
               for server, backend in (("granian", a), ("uvicorn", b))]
    try:
        for process in started:
            process.start()
        ports = [process.admin_port for process in started]
        assert 0 not in ports and len(set(ports)) == 2
        for process, backend in zip(started, (a, b), strict=True):
            snapshot = requests.get(f"{process.admin_url}/status.json", timeout=5).json()
            assert [row["url"] for row in snapshot["pools"][0]["backends"]] == [backend.url]
    finally:
        for process in started:
            process.stop()


@pytest.mark.parametrize("server", SERVERS)
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

