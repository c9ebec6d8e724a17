"""Every front-end builds the public Balancer (the one that follows the fleet) and stops the
pool it built when it closes: the requests adapter in ``close()`` (``Session.close()``), the
ASGI middleware at the lifespan's shutdown (alone or around an app), the WSGI middleware in
``close()``. A pool passed with ``balancer=`` is its owner's: a front-end never closes it.

Each pool runs real health checks against a real backend, which counts the probes it gets:
after the close returns, no more arrive."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
import requests
from starlette.applications import Starlette

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.asgi_client import Call
from ..support.dnsmasq import Dnsmasq
from ..support.servers import BackendServer
from ..support.waiting import LoopTicks, wait_for
from .test_pool import SOURCE, SetsWatcher

CHECKS = {"health_check": "/healthz", "health_check_interval": "20ms"}
QUIET = 0.3         # seconds without a probe that show the probes stopped (15 intervals)


def probes(server: BackendServer) -> int:
    with server.lock:
        return sum(1 for _, path, _, _ in server.received if path == "/healthz")


def assert_probing(server: BackendServer) -> None:
    seen = probes(server)
    assert wait_for(lambda: probes(server) >= seen + 2), "the pool does not probe"


def assert_stopped(server: BackendServer) -> None:
    seen = probes(server)
    time.sleep(QUIET)
    assert probes(server) == seen, "probes went on after the close"


async def lifespan(app: Any) -> list[str]:
    """Run an ASGI lifespan through ``app``: startup, then shutdown; the messages sent."""
    incoming: asyncio.Queue[dict] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: dict) -> None:
        sent.append(message["type"])

    await incoming.put({"type": "lifespan.startup"})
    await incoming.put({"type": "lifespan.shutdown"})
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, incoming.get, send)
    return sent


@pytest.fixture
def server():
    with BackendServer("a") as backend:
        yield backend


def test_each_front_end_builds_the_public_balancer(server):
    for front_end in (LoadBalancingAdapter([server.url]),
                      LoadBalancerMiddleware(None, backends=[server.url]),
                      WSGILoadBalancer(None, backends=[server.url])):
        assert type(front_end.balancer) is lb.Balancer


def test_the_adapter_stops_its_pool_when_the_session_closes(server):
    session = requests.Session()
    session.mount("http://orders/", LoadBalancingAdapter([server.url], **CHECKS))
    assert session.get("http://orders/x", timeout=5).status_code == 200
    assert_probing(server)
    session.close()
    assert_stopped(server)


def test_the_wsgi_middleware_stops_its_pool_when_closed(server):
    app = WSGILoadBalancer(None, backends=[server.url], **CHECKS)
    assert_probing(server)
    app.close()
    assert_stopped(server)
    app.close()                         # idempotent


def test_the_asgi_gateway_stops_its_pool_at_lifespan_shutdown(server):
    app = LoadBalancerMiddleware(None, backends=[server.url], **CHECKS)
    assert_probing(server)
    assert asyncio.run(lifespan(app)) == ["lifespan.startup.complete",
                                          "lifespan.shutdown.complete"]
    assert_stopped(server)


def test_the_asgi_middleware_stops_its_pool_when_the_wrapped_app_shuts_down(server):
    events: list[str] = []

    class Lifespan:
        def __init__(self, app: Any) -> None:
            pass

        async def __aenter__(self) -> None:
            events.append("app started")

        async def __aexit__(self, *exc: object) -> None:
            events.append("app stopped")

    inner = Starlette(lifespan=Lifespan)
    app = LoadBalancerMiddleware(inner, backends=[server.url], **CHECKS)
    assert_probing(server)
    assert asyncio.run(lifespan(app)) == ["lifespan.startup.complete",
                                          "lifespan.shutdown.complete"]
    assert events == ["app started", "app stopped"]     # the app saw its lifespan
    assert_stopped(server)


def test_a_shared_balancer_is_left_to_its_owner(server):
    with lb.Balancer([server.url], **CHECKS) as pool:
        adapter = LoadBalancingAdapter(balancer=pool)
        asgi = LoadBalancerMiddleware(None, balancer=pool)
        wsgi = WSGILoadBalancer(None, balancer=pool)
        adapter.close()
        asyncio.run(lifespan(asgi))
        wsgi.close()
        assert_probing(server)          # still probing: the pool is not theirs
    assert_stopped(server)


# -- built inside a running loop: the first answer is awaited, not blocked on ------------------

@pytest.fixture
def late_watcher(monkeypatch):
    """The source every pool follows in the test: it answers when the test puts a set."""
    watcher = SetsWatcher(SOURCE)
    monkeypatch.setattr(lb.Balancer, "watcher", lambda self, source: watcher)
    return watcher


def test_the_first_request_through_a_lazily_built_middleware_waits_for_the_first_answer(
        server, late_watcher):
    async def main() -> tuple[Call, float, int]:
        ticks = LoopTicks()
        app = Starlette()
        app.add_middleware(LoadBalancerMiddleware, prefix="/api", backends=[SOURCE])
        # The set arrives 0.2 s on; Starlette builds the middleware at the first call,
        # inside this loop: the constructor does not block it, the request waits.
        asyncio.get_running_loop().call_later(0.2, late_watcher.put, server.url)
        started = time.monotonic()
        call = await Call(app, "GET", "/api/x").run()
        waited = time.monotonic() - started
        ticks.stop()
        middleware = app.middleware_stack
        while not isinstance(middleware, LoadBalancerMiddleware):
            middleware = middleware.app
        await middleware.aclose()
        return call, waited, ticks.count

    call, waited, ticks = asyncio.run(main())
    assert call.status == 200, call.body        # not 503: the set came within the timeout
    assert 0.15 < waited < 4
    assert ticks >= 10                          # the loop served the other task meanwhile
    assert server.requests == 1


@pytest.mark.parametrize("wrapped", [False, True], ids=["alone", "around an app"])
def test_lifespan_startup_completes_after_the_first_answer(server, late_watcher, wrapped):
    async def main() -> list[tuple[str, list[str]]]:
        inner = Starlette() if wrapped else None
        app = LoadBalancerMiddleware(inner, backends=[SOURCE])     # built in this loop
        asyncio.get_running_loop().call_later(0.2, late_watcher.put, server.url)
        incoming: asyncio.Queue[dict] = asyncio.Queue()
        sent: list[tuple[str, list[str]]] = []

        async def send(message: dict) -> None:
            sent.append((message["type"], [b.url for b in app.balancer.backends]))

        await incoming.put({"type": "lifespan.startup"})
        await incoming.put({"type": "lifespan.shutdown"})
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                  incoming.get, send)
        return sent

    assert asyncio.run(main()) == [("lifespan.startup.complete", [server.url]),
                                   ("lifespan.shutdown.complete", [server.url])]
    assert late_watcher.cancelled.is_set()


def test_an_adapter_built_in_a_running_loop_waits_in_its_first_send_on_a_thread(
        server, late_watcher):
    # A requests Session made in an async function (an ASGI app's startup) and used from
    # worker threads (Starlette runs sync endpoints in a thread pool).
    async def main() -> tuple[int, float]:
        session = requests.Session()
        started = time.monotonic()
        session.mount("http://orders/", LoadBalancingAdapter([SOURCE]))
        assert time.monotonic() - started < 1.0        # the loop was not held up
        asyncio.get_running_loop().call_later(0.2, late_watcher.put, server.url)
        response = await asyncio.to_thread(session.get, "http://orders/x", timeout=5)
        waited = time.monotonic() - started
        session.close()
        return response.status_code, waited

    status, waited = asyncio.run(main())
    assert status == 200
    assert 0.15 < waited < 4


# -- a DNS source against a real DNS server ------------------------------------------------------

NAME = "orders.lb.test"


class CountingDnsmasq(Dnsmasq):
    """The discovery tests' dnsmasq, logging every question it gets (``log-queries``)."""

    def _write_config(self) -> None:
        super()._write_config()
        with self.config_file.open("a") as config:
            config.write("log-queries\n")

    def questions(self) -> int:
        return self.log().count(f"] {NAME} from ")


@pytest.fixture
def dns(tmp_path, server):
    dnsmasq = CountingDnsmasq(tmp_path / "dnsmasq")
    dnsmasq.set_addresses(NAME, ["127.0.0.1"])
    dnsmasq.start()
    yield dnsmasq
    dnsmasq.close()


def dns_options(dns: CountingDnsmasq, server: BackendServer) -> dict[str, Any]:
    return {"backends": [f"dns+http://{NAME}:{server.port}"], "dns_servers": dns.address,
            "dns_min_refresh": "20ms", "dns_max_refresh": "50ms"}


def assert_asking(dns: CountingDnsmasq) -> None:
    seen = dns.questions()
    assert wait_for(lambda: dns.questions() >= seen + 2), "the pool does not ask"


def assert_silent(dns: CountingDnsmasq) -> None:
    seen = dns.questions()
    time.sleep(QUIET)
    assert dns.questions() == seen, "questions went on after the close"


def test_the_adapter_follows_a_dns_name_and_stops_asking_when_the_session_closes(dns, server):
    session = requests.Session()
    session.mount("http://orders/", LoadBalancingAdapter(**dns_options(dns, server)))
    answer = session.get("http://orders/x", timeout=5).json()
    assert answer["headers"]["Host"] == f"{NAME}:{server.port}"     # the name, not 127.0.0.1
    assert_asking(dns)
    session.close()
    assert_silent(dns)


def test_the_asgi_middleware_stops_asking_at_lifespan_shutdown(dns, server):
    app = LoadBalancerMiddleware(None, **dns_options(dns, server))
    assert [b.server_name for b in app.balancer.backends] == [NAME]
    assert_asking(dns)
    asyncio.run(lifespan(app))
    assert_silent(dns)


def test_the_wsgi_middleware_stops_asking_when_closed(dns, server):
    app = WSGILoadBalancer(None, **dns_options(dns, server))
    assert [row["url"] for row in app.balancer.source_stats()] == [
        f"dns+http://{NAME}:{server.port}"]
    assert_asking(dns)
    app.close()
    assert_silent(dns)


def test_a_pool_dropped_without_close_stops_probing(server):
    pool = lb.Balancer([server.url], **CHECKS)
    assert_probing(server)
    del pool
    gc.collect()            # the finalizer cancels the probes without waiting for them
    time.sleep(0.1)         # (one may be on its way to the backend)
    assert_stopped(server)
