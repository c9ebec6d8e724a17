"""Front-ends sharing one Balancer: the pool, the policy and passive health are the
Balancer's; how each request is forwarded (retries, timeouts, failure statuses) is each
front-end's own, so a middleware that never retries may sit beside an adapter that does."""

from __future__ import annotations

import asyncio
import os

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.wsgi import WSGILoadBalancer

from .support.asgi_client import Call

VHOST = "http://svc"


def test_a_middleware_without_retries_beside_an_adapter_with_two(backends):
    a, b, _ = backends
    a.status = 503                                      # a fails every request it gets
    pool = lb.Balancer([a.url, b.url], max_fails=0)     # round robin, never ejected
    mw = LoadBalancerMiddleware(None, balancer=pool, retries=0)
    adapter = LoadBalancingAdapter(balancer=pool, retries=2)
    assert mw.balancer is adapter.balancer is pool
    assert (mw.forwarding.retries, adapter.settings.retries) == (0, 2)

    async def through_the_middleware() -> list[int | None]:
        statuses = []
        for _ in range(4):
            statuses.append((await Call(mw, "GET", "/x").run()).status)
        mw.upstream.close()
        return statuses

    assert sorted(asyncio.run(through_the_middleware())) == [200, 200, 503, 503]
    assert (a.requests, b.requests) == (2, 2)           # a's 503s went back, not retried

    session = requests.Session()
    session.mount(f"{VHOST}/", adapter)
    served = [session.get(f"{VHOST}/x", timeout=5).json()["server"] for _ in range(4)]
    assert served == ["b"] * 4                          # a's 503s retried on b
    assert a.requests >= 3                              # and the adapter did get some
    assert [row["in_flight"] for row in pool.stats()] == [0, 0]


def test_every_front_end_on_a_shared_balancer_refuses_the_balancers_settings():
    pool = lb.Balancer(["http://127.0.0.1:1"])
    for make in (lambda **kw: LoadBalancingAdapter(balancer=pool, **kw),
                 lambda **kw: LoadBalancerMiddleware(None, balancer=pool, **kw),
                 lambda **kw: WSGILoadBalancer(None, balancer=pool, **kw)):
        with pytest.raises(lb.ConfigError, match="max_fails given with balancer=: "
                                                 "set them on the shared Balancer"):
            make(max_fails=1, retries=0)
        assert make(retries=0, read_timeout=1, fail_statuses=[500]).forwarding == (
            lb.ForwardingSettings(retries=0, read_timeout=1, fail_statuses=[500]))


@pytest.mark.parametrize("make", [
    lambda: LoadBalancingAdapter(),
    lambda: LoadBalancerMiddleware(None),
    lambda: WSGILoadBalancer(None),
])
def test_without_backends_every_front_end_reads_lb_variables_the_same_way(make, monkeypatch):
    for name in [n for n in os.environ if n.startswith("LB_")]:
        monkeypatch.delenv(name)
    with pytest.raises(lb.ConfigError, match="^LB_BACKENDS is not set: it is required$"):
        make()
    monkeypatch.setenv("LB_BACKENDS", "http://127.0.0.1:1, http://127.0.0.1:2")
    monkeypatch.setenv("LB_RETRIES", "0")
    monkeypatch.setenv("LB_POLICY", "least_conn")
    front_end = make()
    assert [b.url for b in front_end.balancer.backends] == ["http://127.0.0.1:1",
                                                            "http://127.0.0.1:2"]
    assert front_end.balancer.policy == "least_conn" and front_end.forwarding.retries == 0



SHARED_ENV = {"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRIES": "0", "LB_READ_TIMEOUT": "3s",
              "LB_FAIL_STATUSES": "500,503", "LB_PREFIX": "/api"}
FRONT_ENDS = [
    pytest.param(lambda **kw: LoadBalancingAdapter(**kw), id="adapter"),
    pytest.param(lambda **kw: LoadBalancerMiddleware(None, **kw), id="asgi"),
    pytest.param(lambda **kw: WSGILoadBalancer(None, **kw), id="wsgi"),
]


def forwarding_of(front_end) -> tuple[int, float, list[int]]:
    settings = front_end.forwarding
    return settings.retries, settings.read_timeout, sorted(settings.fail_statuses)


@pytest.mark.parametrize("make", FRONT_ENDS)
def test_on_a_shared_balancer_a_front_end_reads_its_own_settings_from_lb_variables(
        make, monkeypatch):
    # The Balancer's settings are the pool's; the front-end's own (forwarding, proxy) come
    # from keywords, else LB_* variables, else their defaults.
    for name in [n for n in os.environ if n.startswith("LB_")]:
        monkeypatch.delenv(name)
    for name, value in SHARED_ENV.items():
        monkeypatch.setenv(name, value)
    pool = lb.Balancer.from_env()
    front_end = make(balancer=pool)
    assert front_end.balancer is pool
    assert forwarding_of(front_end) == (0, 3.0, [500, 503])
    if isinstance(front_end.settings, lb.ProxySettings):
        assert front_end.settings.prefix == "/api"
    # Keywords win over the variables; environ= replaces os.environ.
    assert forwarding_of(make(balancer=pool, retries=1)) == (1, 3.0, [500, 503])
    assert forwarding_of(make(balancer=pool, environ={"LB_RETRIES": "4"})) == (
        4, 60.0, [502, 503, 504])
    # A pool built from keywords too: nothing of the Balancer's is read or required.
    keywords_pool = lb.Balancer(["http://127.0.0.1:2"], max_fails=1)
    front_end = make(balancer=keywords_pool, environ={"LB_RETRIES": "0", "LB_MAX_FAILS": "9"})
    assert front_end.balancer.settings.max_fails == 1 and front_end.forwarding.retries == 0
