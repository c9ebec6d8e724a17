"""``LB_*`` variables that are not settings: every front-end starts, and says so once.

Kubernetes writes ``LB_SERVICE_HOST``, ``LB_PORT_8000_TCP`` and the like for a Service named
``lb``; a probable typo (``LB_PREFX``) is a warning naming the setting meant, never a refusal
to start.
"""

from __future__ import annotations

import logging

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.gateway_settings import load_settings
from lbmiddleware.wsgi import WSGILoadBalancer

from .support.gateway import GATEWAY_SERVERS, GatewayProcess

# What a Pod sees beside a Service named "lb" exposing port 8000 (and one named "lb-admin").
SERVICE_LINKS = {
    "LB_SERVICE_HOST": "10.96.0.7", "LB_SERVICE_PORT": "8000", "LB_SERVICE_PORT_HTTP": "8000",
    "LB_PORT": "tcp://10.96.0.7:8000", "LB_PORT_8000_TCP": "tcp://10.96.0.7:8000",
    "LB_PORT_8000_TCP_ADDR": "10.96.0.7", "LB_PORT_8000_TCP_PORT": "8000",
    "LB_PORT_8000_TCP_PROTO": "tcp", "LB_ADMIN_SERVICE_HOST": "10.96.0.8",
    "LB_ADMIN_SERVICE_PORT": "9000", "LB_ADMIN_PORT": "tcp://10.96.0.8:9000",
}


def front_ends(environ):
    """Every front-end's from_env entry point, with the settings it read."""
    yield lb.Balancer.from_env(environ).settings
    yield LoadBalancingAdapter.from_env(environ).balancer.settings
    yield load_settings(environ).core                      # the gateway's
    yield LoadBalancerMiddleware(None, environ=environ).balancer.settings
    yield WSGILoadBalancer(None, environ=environ).balancer.settings


def test_service_links_start_every_front_end_silently(backends, caplog):
    caplog.set_level(logging.DEBUG, logger="lbmiddleware")
    environ = {"LB_BACKENDS": backends[0].url, "LB_MAX_FAILS": "4", **SERVICE_LINKS}
    for settings in front_ends(environ):
        assert settings.max_fails == 4 and [b.url for b in settings.backends] == [backends[0].url]
    assert caplog.records == []


def test_a_typo_is_a_warning_naming_the_setting_meant(backends, caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    environ = {"LB_BACKENDS": backends[0].url, "LB_PREFX": "/api"}
    for settings in front_ends(environ):
        assert [b.url for b in settings.backends] == [backends[0].url]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5                               # once per front-end
    assert all(m.startswith("LB_PREFX is not a known setting (did you mean LB_PREFIX?)")
               for m in messages)


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_the_gateway_serves_beside_service_links_and_reports_a_typo(backends, server):
    environ = {"LB_BACKENDS": backends[0].url, "LB_SERVER": server, "LB_PREFX": "/api",
               **SERVICE_LINKS}
    gateway = GatewayProcess(environ).start()
    try:
        reply = requests.get(f"{gateway.url}/x", timeout=5)
        assert reply.status_code == 200 and reply.json()["server"] == "a"
    finally:
        errors = gateway.stop()
    assert "LB_PREFX is not a known setting (did you mean LB_PREFIX?)" in errors
    assert "LB_SERVICE" not in errors and "LB_PORT" not in errors and "Traceback" not in errors
