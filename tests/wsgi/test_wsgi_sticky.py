"""What is particular to the WSGI middleware in the sticky cookie (the cookie itself, for
every proxy front-end, is in tests/contract/proxy_contract.py): mounted under a
``SCRIPT_NAME``, the cookie's ``Path`` is the mount point then the prefix, the URL the
client's browser sees (as a backend's redirect to itself comes back under it)."""

from __future__ import annotations

import pytest

from lbmiddleware.core.sticky import sticky_value
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.wsgi_client import call, environ_for


@pytest.mark.parametrize("script_name, prefix, path", [
    ("/app", "/api", "/app/api"), ("/app/", "/api", "/app/api"), ("/app", "/", "/app"),
    ("", "/api", "/api"), ("/caf\u00c3\u00a9;x", "/api", "/caf%C3%A9%3Bx/api")])
@pytest.mark.parametrize("strip", [False, True])
def test_under_a_mount_point_the_cookies_path_is_the_mount_point_then_the_prefix(
        backends, script_name, prefix, path, strip):
    """A dispatcher mounts the middleware at /app (SCRIPT_NAME, which the backend never
    sees): the client's URLs are /app/api/..., so the cookie's Path is /app/api; with Path
    /api the browser would never send it back. (SCRIPT_NAME is latin-1 text of the URL's
    bytes, PEP 3333: é is two characters, sent percent-encoded, and a ';' would end the
    Path.)"""
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url], prefix=prefix, strip_prefix=strip,
                                  sticky_cookie="lb")
    try:
        result = call(middleware, environ_for("GET", prefix.rstrip("/") + "/x",
                                              SCRIPT_NAME=script_name))
        again = call(middleware, environ_for("GET", prefix.rstrip("/") + "/x",
                                             SCRIPT_NAME=script_name,
                                             HTTP_COOKIE=f"lb={sticky_value(a.url)}"))
    finally:
        middleware.close()
    assert result.header("Set-Cookie") == [
        f"lb={sticky_value(a.url)}; Path={path}; HttpOnly; SameSite=Lax"]
    assert again.header("Set-Cookie") == []         # it named the backend that answered


def test_under_a_mount_point_over_https_the_cookie_stays_secure(backends):
    a = backends[0]
    middleware = WSGILoadBalancer(None, backends=[a.url], prefix="/api", sticky_cookie="lb",
                                  trusted_proxies=["192.0.2.10"])
    try:
        direct = call(middleware, environ_for("GET", "/api/x", SCRIPT_NAME="/app",
                                              **{"wsgi.url_scheme": "https"}))
        terminated = call(middleware, environ_for("GET", "/api/x", SCRIPT_NAME="/app",
                                                  HTTP_X_FORWARDED_PROTO="https"))
    finally:
        middleware.close()
    cookie = f"lb={sticky_value(a.url)}; Path=/app/api; HttpOnly; SameSite=Lax; Secure"
    assert direct.header("Set-Cookie") == terminated.header("Set-Cookie") == [cookie]
