"""The WSGI middleware forwards through the requests adapter: its connections to backends
that leave the balancer close too (the adapter's own tests cover the rules), and
``close()`` stops following a shared balancer."""

from __future__ import annotations

import lbmiddleware as lb
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.departures import closed_by_the_client, open_connections, record_unsubscribes
from ..support.servers import BackendServer
from ..support.wsgi_client import call, environ_for


def test_rolling_deploys_leave_no_connection_to_departed_backends(monkeypatch):
    servers = [BackendServer("b0").start()]
    pool = lb.Balancer([servers[0].url])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    middleware = WSGILoadBalancer(None, balancer=pool)
    try:
        assert call(middleware, environ_for(path="/x")).code == 200
        for i in range(10):
            servers.append(BackendServer(f"b{i + 1}").start())
            pool.update([servers[-1].url])
            for _ in range(3):
                assert call(middleware, environ_for(path="/x")).json()["server"] == f"b{i + 1}"
        assert all(closed_by_the_client(server) for server in servers[:-1])
        assert open_connections(servers[-1]) == 1
        middleware.close()              # the shared pool is no longer followed
        assert len(unsubscribed) == 1
    finally:
        pool.close()
        for server in servers:
            server.stop()
