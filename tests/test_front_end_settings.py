"""Every front-end takes its settings the same way, through the one resolver: keywords,
``settings=`` (a ready object, or several at once), ``balancer=`` and ``environ=``."""

from __future__ import annotations

import pytest

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.gateway_settings import GatewaySettings, load_settings
from lbmiddleware.wsgi import WSGILoadBalancer

URLS = ["http://127.0.0.1:1"]
ENV = {"LB_BACKENDS": "http://127.0.0.1:2", "LB_RETRIES": "1", "LB_PREFIX": "/env"}

PROXIES = [
    pytest.param(lambda **kw: LoadBalancerMiddleware(None, **kw), "LoadBalancerMiddleware",
                 id="asgi"),
    pytest.param(lambda **kw: WSGILoadBalancer(None, **kw), "WSGILoadBalancer", id="wsgi"),
]
FRONT_ENDS = [
    pytest.param(lambda **kw: LoadBalancingAdapter(**kw), "LoadBalancingAdapter", id="adapter"),
    *PROXIES,
]


@pytest.mark.parametrize("make, name", PROXIES)
@pytest.mark.parametrize("given, shown", [
    ({"prefix": "/x"}, "{'prefix': '/x'} (a dict)"), ("/x", "'/x' (a str)"),
    (GatewaySettings(), "GatewaySettings(...)")])
def test_a_settings_object_of_a_class_not_read_is_a_type_error(make, name, given, shown):
    # Never ignored (it used to fall back to LB_* and proxy everything under /).
    with pytest.raises(TypeError) as info:
        make(settings=given, environ=ENV)
    assert str(info.value).startswith(
        f"{name}() got settings={shown}: it takes a Settings or ForwardingSettings or "
        "ProxySettings, or a FrontEndSettings holding them")


def test_the_adapter_refuses_a_settings_object_it_does_not_read():
    with pytest.raises(TypeError, match=r"^LoadBalancingAdapter\(\) got settings="
                                        r"ProxySettings\(\.\.\.\): it takes a Settings or "
                                        r"ForwardingSettings, or a FrontEndSettings"):
        LoadBalancingAdapter(URLS, settings=lb.ProxySettings())


@pytest.mark.parametrize("make, name", FRONT_ENDS)
def test_every_front_end_takes_ready_settings_objects(make, name):
    front_end = make(settings=lb.ForwardingSettings(retries=0), environ=ENV)
    assert front_end.forwarding.retries == 0
    assert [b.url for b in front_end.balancer.backends] == ["http://127.0.0.1:2"]
    front_end = make(settings=lb.Settings(backends=URLS), environ=ENV)
    assert [b.url for b in front_end.balancer.backends] == URLS
    assert front_end.forwarding.retries == 2        # keywords and objects alone: no LB_*
    whole = load_settings({**ENV, "LB_READ_TIMEOUT": "7"})
    front_end = make(settings=whole, environ={})    # every setting at once: nothing read
    assert front_end.balancer.settings == whole.core
    assert front_end.forwarding == whole[lb.ForwardingSettings]


@pytest.mark.parametrize("make, name", FRONT_ENDS)
def test_every_front_end_reads_environ_as_it_would_os_environ(make, name):
    front_end = make(environ=ENV)
    assert [b.url for b in front_end.balancer.backends] == ["http://127.0.0.1:2"]
    assert front_end.forwarding.retries == 1
    if isinstance(front_end.settings, lb.ProxySettings):
        assert front_end.settings.prefix == "/env"
    with pytest.raises(lb.ConfigError, match="^LB_BACKENDS is not set: it is required$"):
        make(environ={})


@pytest.mark.parametrize("make, name", PROXIES)
def test_a_prefix_of_none_is_not_given(make, name):
    # As WSGILoadBalancer(app, prefix=None) always did: the variable, else the default "/"
    # (the ASGI middleware used to proxy under "/None").
    assert make(backends=URLS, prefix=None).settings.prefix == "/"
    assert make(prefix=None, environ=ENV).settings.prefix == "/env"
    pool = lb.Balancer(URLS)
    assert make(balancer=pool, prefix=None, environ={}).settings.prefix == "/"
    with pytest.raises(lb.ConfigError, match="^prefix has value 5: not a path"):
        make(backends=URLS, prefix=5)


def test_the_gateways_prefix_of_none_is_not_given():
    assert load_settings(ENV, prefix=None)[lb.ProxySettings].prefix == "/env"
    assert load_settings({"LB_BACKENDS": URLS[0]}, prefix=None)[lb.ProxySettings].prefix == "/"


def test_the_adapters_from_env_with_a_shared_balancer_reads_its_own_settings_only():
    pool = lb.Balancer(URLS, max_fails=1)
    adapter = LoadBalancingAdapter.from_env({**ENV, "LB_MAX_FAILS": "9"}, balancer=pool)
    assert adapter.balancer is pool and adapter.balancer.settings.max_fails == 1
    assert adapter.settings.retries == 1
    adapter = LoadBalancingAdapter.from_env(ENV, balancer=pool, retries=3, pool_maxsize=4)
    assert adapter.settings.retries == 3 and adapter._pool_maxsize == 4
    with pytest.raises(lb.ConfigError, match="^max_fails given with balancer="):
        LoadBalancingAdapter.from_env(ENV, balancer=pool, max_fails=2)
    # Without a balancer, from_env reads the variables even beside backends.
    adapter = LoadBalancingAdapter.from_env(ENV, backends=URLS)
    assert [b.url for b in adapter.balancer.backends] == URLS and adapter.settings.retries == 1


def test_the_middleware_takes_app_as_a_keyword_as_starlette_before_0_35_passes_it():
    async def inner(scope, receive, send):  # pragma: no cover - never called here
        pass

    middleware = LoadBalancerMiddleware(app=inner, backends=URLS)
    assert middleware.app is inner
    with pytest.raises(TypeError, match="multiple values for argument 'app'"):
        LoadBalancerMiddleware(inner, app=inner, backends=URLS)
