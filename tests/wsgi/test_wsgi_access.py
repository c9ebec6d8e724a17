"""The WSGI middleware's access log (``access_log=True``) as a middleware user gets it: under
a threaded wsgiref server, over loopback backends, one record per proxied request on the
``lbmiddleware.access`` logger once its response is closed, read from ``caplog``."""

from __future__ import annotations

import requests

from lbmiddleware.wsgi import WSGILoadBalancer

from ..proxy.test_access import access_records
from ..support.servers import refused_url
from ..support.waiting import until
from ..support.wsgi_server import serve_wsgi


def local_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"local"]


def test_each_proxied_request_gets_one_line(access_log, servers):
    a = servers("a")
    dead = refused_url()
    middleware = WSGILoadBalancer(local_app, prefix="/api", backends=[dead, a.url],
                                  max_fails=1, retries=1, access_log=True,
                                  trusted_proxies=["127.0.0.1"])
    try:
        with serve_wsgi(middleware) as port, requests.Session() as session:
            base = f"http://127.0.0.1:{port}"
            assert session.get(f"{base}/api/one?secret=1", timeout=5).status_code == 200
            assert session.get(f"{base}/api/caf%C3%A9%20%22q%22", timeout=5,
                               headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 200
            assert session.post(f"{base}/api/form", data=b"abc", timeout=5).status_code == 200
            assert session.get(f"{base}/local", timeout=5).text == "local"    # the app's
            until(lambda: len(access_records(access_log)) == 3, 5, "three access lines")
    finally:
        middleware.close()
    lines = {line["path"]: line for line in access_records(access_log)}
    assert len(lines) == 3
    one, cafe, form = lines["/api/one"], lines['/api/caf\u00e9 "q"'], lines["/api/form"]
    assert one == {"client": "127.0.0.1", "method": "GET", "path": "/api/one", "status": "200",
                   "backend": a.url, "attempts": "2", "duration_ms": one["duration_ms"]}
    assert float(one["duration_ms"]) > 0
    assert (cafe["client"], cafe["attempts"], cafe["backend"]) == ("198.51.100.4", "1", a.url)
    assert (form["method"], form["status"]) == ("POST", "200")


def test_the_proxys_own_answers_are_logged_too(access_log):
    first, second = refused_url(), refused_url()
    middleware = WSGILoadBalancer(None, backends=[first, second], retries=1, access_log=True)
    try:
        with serve_wsgi(middleware) as port:
            assert requests.get(f"http://127.0.0.1:{port}/x", timeout=5).status_code == 502
            until(lambda: access_records(access_log), 5, "the access line")
    finally:
        middleware.close()
    (line,) = access_records(access_log)
    assert (line["path"], line["status"], line["attempts"], line["backend"]) == (
        "/x", "502", "2", second)


def test_a_request_refused_before_forwarding_names_no_backend(access_log, servers):
    a = servers("a")
    middleware = WSGILoadBalancer(None, prefix="/api", backends=[a.url], access_log=True)
    try:
        with serve_wsgi(middleware) as port:
            assert requests.get(f"http://127.0.0.1:{port}/else", timeout=5).status_code == 404
            until(lambda: access_records(access_log), 5, "the access line")
    finally:
        middleware.close()
    (line,) = access_records(access_log)
    assert (line["status"], line["backend"], line["attempts"]) == ("404", "-", "0")
    assert a.requests == 0


def test_the_access_log_is_off_by_default(access_log, servers):
    a = servers("a")
    middleware = WSGILoadBalancer(None, backends=[a.url])
    try:
        with serve_wsgi(middleware) as port:
            for _ in range(3):
                assert requests.get(f"http://127.0.0.1:{port}/x", timeout=5).ok
    finally:
        middleware.close()
    assert access_records(access_log) == []
