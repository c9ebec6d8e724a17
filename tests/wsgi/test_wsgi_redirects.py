"""What is particular to the WSGI middleware in the redirect rule (the rule itself, for every
proxy front-end, is in tests/contract/proxy_contract.py): a middleware mounted under a
``SCRIPT_NAME`` puts it back in front of the route's path, and under a real WSGI server the
client's ``Host`` is the address a backend's redirect goes back to."""

from __future__ import annotations

import http.client

import pytest

from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.redirect_backend import RedirectBackend
from ..support.wsgi_client import call, environ_for
from ..support.wsgi_server import serve_wsgi


@pytest.fixture
def redirecting():
    with RedirectBackend("r") as backend:
        yield backend


@pytest.mark.parametrize("strip, upstream", [(False, "/api/a/old"), (True, "/a/old")])
def test_a_mount_points_script_name_comes_back_in_front_of_the_route(redirecting, strip,
                                                                     upstream):
    """Mounted at /gw (a dispatcher's SCRIPT_NAME, which the backend never sees), the
    client's URL is /gw/api/...: so is the redirect's."""
    middleware = WSGILoadBalancer(None, backends=[redirecting.url], prefix="/api",
                                  strip_prefix=strip)
    try:
        result = call(middleware, environ_for("GET", "/api/a/old", SCRIPT_NAME="/gw",
                                              HTTP_HOST="front.example"), validate=False)
    finally:
        middleware.close()
    assert result.code == 302 and result.json()["path"] == upstream
    assert result.header("Location") == ["http://front.example/gw/api/a/new"]


def test_under_a_real_server_the_clients_host_is_the_redirects(redirecting):
    middleware = WSGILoadBalancer(None, backends=[redirecting.url], prefix="/api")
    try:
        with serve_wsgi(middleware) as port:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/api/created", headers={"Host": f"localhost:{port}"})
            response = connection.getresponse()
            response.read()
            connection.close()
    finally:
        middleware.close()
    assert response.status == 201
    assert response.getheader("Location") == f"http://localhost:{port}/api/items/7"
    assert response.getheader("Content-Location") == f"http://localhost:{port}/api/items/7"
