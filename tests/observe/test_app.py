"""The status apps under real servers (uvicorn for ASGI; wsgiref and waitress for WSGI), in
front of a pool of real loopback backends: the routes, GET/HEAD only, mounting under a prefix
(a Starlette Mount, a WSGI SCRIPT_NAME as Flask's and Django's dispatch set it), /ready
following the backends as they die and return, /metrics with and without prometheus_client."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sys
import threading
from collections.abc import Iterator

import pytest
import waitress
from starlette.applications import Starlette
from starlette.routing import Mount
from waitress import wasyncore

import lbmiddleware as lb
from lbmiddleware.observe import StatusApp, StatusWSGIApp, history_of
from lbmiddleware.observe.app import _route_path

from ..support.asgi_server import ServerThread
from ..support.ports import restartable_port
from ..support.waiting import wait_for
from ..support.wsgi_server import serve_wsgi

FAST_CHECKS = {"health_check": "/", "health_check_interval": 0.02, "health_check_fall": 1,
               "health_check_rise": 1}


def get(port: int, path: str, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a new connection: status, headers (any case), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def serve_asgi(app) -> Iterator[int]:
    with ServerThread(app) as server:
        yield server.port


@contextlib.contextmanager
def serve_waitress(app) -> Iterator[int]:
    """``app`` under waitress in a thread of this process, on 127.0.0.1; yields the port."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:        # closed on the server's own thread (from here it races its select())
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(5)
        server.task_dispatcher.shutdown()


SERVERS = {"uvicorn": (lb.status_app, serve_asgi), "wsgiref": (lb.status_wsgi_app, serve_wsgi),
           "waitress": (lb.status_wsgi_app, serve_waitress)}


@pytest.fixture(params=list(SERVERS))
def served(request, backends):
    """The status app of a pool of the three backends under each real server: the port."""
    make, serve = SERVERS[request.param]
    with lb.Balancer([b.url for b in backends]) as pool, serve(make(pool)) as port:
        yield port, pool


def test_the_page_the_json_and_the_redirect(served, backends):
    port, pool = served
    status, headers, body = get(port, "/status")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    page = body.decode()
    assert all(b.url in page for b in backends) and page.count("UP</span>") == 3
    status, headers, body = get(port, "/status.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    assert snap["schema"] == 1 and snap["ready"] is True
    assert [r["url"] for r in snap["pools"][0]["backends"]] == [b.url for b in backends]
    budget = snap["pools"][0]["retry_budget"]               # on by default: 0.2, 10/s, 10 s
    assert (budget["ratio"], budget["min_per_second"], budget["ttl"]) == (0.2, 10, 10)
    assert budget["exhausted_total"] == 0 and budget["available"] >= 100
    assert "retry budget" in page and "refused (20% + 10/s over 10s)" in page
    status, headers, _ = get(port, "/")
    assert status == 302 and headers["Location"] == "/status"


def test_get_and_head_only_and_404_elsewhere(served):
    port, _ = served
    status, headers, body = get(port, "/status", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert b"GET or HEAD" in body
    status, headers, body = get(port, "/ready", "HEAD")      # (a body that does not change)
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(b"ready\n"))
    status, headers, body = get(port, "/status.json", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100
    assert headers["Content-Type"] == "application/json"
    for path in ("/nope", "/status/", "/statusx", "/admin/status"):
        status, _, body = get(port, path)
        assert status == 404, path
        assert body.startswith(b"not found")


def test_ready_follows_the_backends_as_they_die_and_return(servers):
    a, b = servers("a"), servers("b", restartable_port())      # b returns on its port
    with lb.Balancer([a.url, b.url], **FAST_CHECKS) as pool, \
            serve_asgi(lb.status_app({"orders": pool})) as port:
        assert get(port, "/ready")[:3:2] == (200, b"ready\n")
        a.stop()
        assert wait_for(lambda: pool.pool_stats()["usable"] == 1)
        assert get(port, "/ready")[0] == 200            # one usable backend is enough
        b.stop()
        assert wait_for(lambda: get(port, "/ready")[0] == 503)
        assert get(port, "/ready")[2] == b"not ready: no usable backend in pool 'orders'\n"
        assert json.loads(get(port, "/status.json")[2])["ready"] is False
        servers("b", b.port)
        assert wait_for(lambda: get(port, "/ready")[0] == 200)
        assert json.loads(get(port, "/status.json")[2])["ready"] is True


def test_ready_names_every_pool_without_a_usable_backend(servers):
    up = servers("up")
    with lb.Balancer([up.url]) as healthy, \
            lb.Balancer(["http://127.0.0.1:9"], **FAST_CHECKS) as dead, \
            serve_wsgi(lb.status_wsgi_app([healthy, dead])) as port:
        assert wait_for(lambda: get(port, "/ready")[0] == 503)
        assert get(port, "/ready")[2] == b"not ready: no usable backend in pool 'pool2'\n"


def test_mounted_under_admin_in_starlette(backends):
    with lb.Balancer([b.url for b in backends]) as pool:
        app = Starlette(routes=[Mount("/admin", app=lb.status_app(pool))])
        with serve_asgi(app) as port:
            status, _, body = get(port, "/admin/status")
            assert status == 200 and backends[0].url.encode() in body
            assert b'<a href="status.json">' in body            # relative: /admin/status.json
            status, _, body = get(port, "/admin/status.json")
            assert status == 200 and json.loads(body)["schema"] == 1
            assert get(port, "/admin/ready")[0] == 200
            status, headers, _ = get(port, "/admin/")
            assert status == 302 and headers["Location"] == "/admin/status"
            assert get(port, "/status")[0] == 404               # Starlette's own 404


def dispatch(prefix: str, mounted, rest):
    """What Flask's DispatcherMiddleware (and a Django wsgi.py doing the same) does: the
    paths under ``prefix`` go to ``mounted`` with SCRIPT_NAME and PATH_INFO split there."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == prefix or path.startswith(prefix + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            environ["PATH_INFO"] = path[len(prefix):]
            return mounted(environ, start_response)
        return rest(environ, start_response)
    return app


def site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the site"]


@pytest.mark.parametrize("serve", [serve_wsgi, serve_waitress], ids=["wsgiref", "waitress"])
def test_mounted_under_admin_by_script_name(backends, serve):
    with lb.Balancer([b.url for b in backends]) as pool, \
            serve(dispatch("/admin", lb.status_wsgi_app(pool), site)) as port:
        status, _, body = get(port, "/admin/status")
        assert status == 200 and backends[0].url.encode() in body
        assert get(port, "/admin/status.json")[0] == 200
        status, headers, _ = get(port, "/admin")
        assert status == 302 and headers["Location"] == "/admin/status"
        assert get(port, "/status")[2] == b"the site"


# A mount point as the app gets it (decoded), the path a client asks for, and the Location
# of its root's redirect: percent-encoded, so a valid URI whatever the mount point holds.
ODD_MOUNTS = [("/\u7ba1\u7406", "/%E7%AE%A1%E7%90%86", "/%E7%AE%A1%E7%90%86/status"),
              ("/ops admin", "/ops%20admin", "/ops%20admin/status"),
              ("/a\r\nSet-Cookie: x=1", "/a%0D%0ASet-Cookie:%20x=1",
               "/a%0D%0ASet-Cookie:%20x=1/status"),
              ("/100%", "/100%25", "/100%25/status")]


@pytest.mark.parametrize("mount, target, location", ODD_MOUNTS)
def test_the_redirect_under_an_odd_mount_point_is_a_valid_location(backends, mount, target,
                                                                   location):
    """Starlette's root_path is decoded text: non-Latin-1 could not go in a header at all
    (a 500), a space or a line break would make Location no URI (or a header of its own)."""
    with lb.Balancer([b.url for b in backends]) as pool:
        app = Starlette(routes=[Mount(mount, app=lb.status_app(pool))])
        with serve_asgi(app) as port:
            status, headers, body = get(port, target + "/")
            assert (status, headers["Location"]) == (302, location)
            assert body == f"see {location}\n".encode() and "Set-Cookie" not in headers
            assert get(port, location)[0] == 200


@pytest.mark.parametrize("mount, target, location", ODD_MOUNTS)
def test_the_redirect_under_an_odd_script_name_is_a_valid_location(backends, mount, target,
                                                                   location):
    """WSGI's SCRIPT_NAME holds the path's bytes as Latin-1 text (PEP 3333), as wsgiref
    decodes PATH_INFO and a dispatcher cuts it."""
    prefix = mount.encode("utf-8").decode("latin-1")
    with lb.Balancer([b.url for b in backends]) as pool, \
            serve_wsgi(dispatch(prefix, lb.status_wsgi_app(pool), site)) as port:
        status, headers, body = get(port, target)
        assert (status, headers["Location"]) == (302, location)
        assert body == f"see {location}\n".encode() and "Set-Cookie" not in headers
        assert get(port, location)[0] == 200


def test_a_script_name_decoded_as_utf_8_against_pep_3333_is_quoted_as_utf_8():
    app = lb.status_wsgi_app(lb.Balancer(["http://a:1"]))
    started = []
    body = app({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/\u7ba1\u7406", "PATH_INFO": "/"},
               lambda status, headers: started.append((status, dict(headers))))
    (status, headers), = started
    assert (status, headers["Location"]) == ("302 Found", "/%E7%AE%A1%E7%90%86/status")
    assert b"".join(body) == b"see /%E7%AE%A1%E7%90%86/status\n"


def test_the_route_path_is_cut_below_root_path_whether_the_server_kept_it_or_not():
    assert _route_path({"path": "/admin/status", "root_path": "/admin"}, "/admin") == "/status"
    assert _route_path({"path": "/status", "root_path": "/admin"}, "/admin") == "/status"
    assert _route_path({"path": "/admin", "root_path": "/admin"}, "/admin") == ""
    assert _route_path({"path": "/adminx/status"}, "/admin") == "/adminx/status"


def test_metrics_in_prometheus_text_format(served, backends):
    port, pool = served
    pool.report(pool.pick(), latency=0.01, status=200)
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "lbmiddleware_backend_requests_total{" in text
    assert f'backend="{backends[0].url}"' in text and 'pool="default"' in text


def test_metrics_without_prometheus_client_is_a_404_naming_the_extra(backends, monkeypatch):
    for name in [*(m for m in sys.modules if m.startswith("prometheus_client.")),
                 "prometheus_client"]:
        monkeypatch.setitem(sys.modules, name, None)    # "not installed"
    with lb.Balancer([b.url for b in backends]) as pool, \
            serve_wsgi(lb.status_wsgi_app(pool)) as port:
        status, _, body = get(port, "/metrics")
        assert status == 404
        assert b"pip install 'lbmiddleware[metrics]'" in body
        assert get(port, "/status")[0] == 200                   # the rest works


def test_building_the_app_starts_each_pools_history(backends):
    with lb.Balancer([backends[0].url]) as one, lb.Balancer([backends[1].url]) as two:
        lb.status_app([one, two])
        assert history_of(one).running and history_of(two).running


def test_bad_arguments_are_refused_naming_them(backends):
    with pytest.raises(TypeError, match=r"status_app must be a Balancer.*not 'http://a:1'"):
        lb.status_app("http://a:1")
    with pytest.raises(TypeError, match=r"status_wsgi_app\[0\] must be a Balancer, not 3"):
        lb.status_wsgi_app([3])
    with lb.Balancer([backends[0].url]) as pool:
        with pytest.raises(lb.ConfigError, match="status_app: refresh has value 0"):
            lb.status_app(pool, refresh=0)
        with pytest.raises(lb.ConfigError, match="refresh has value 'soon'"):
            lb.status_wsgi_app(pool, refresh="soon")        # type: ignore[arg-type]
    assert isinstance(lb.status_app(lb.Balancer(["http://a:1"])), StatusApp)
    assert isinstance(lb.status_wsgi_app(lb.Balancer(["http://a:1"])), StatusWSGIApp)


def test_served_alone_it_answers_the_lifespan_and_refuses_a_websocket():
    app = lb.status_app(lb.Balancer(["http://a:1"]))

    async def lifespan() -> list[str]:
        incoming: asyncio.Queue[dict] = asyncio.Queue()
        sent: list[str] = []
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            incoming.put_nowait({"type": kind})

        async def send(message):
            sent.append(message["type"])

        await app({"type": "lifespan"}, incoming.get, send)
        websocket: list[dict] = []

        async def send_ws(message):
            websocket.append(message)

        await app({"type": "websocket", "path": "/status"}, incoming.get, send_ws)
        return [*sent, *(m["type"] for m in websocket)]

    assert asyncio.run(lifespan()) == ["lifespan.startup.complete",
                                       "lifespan.shutdown.complete", "websocket.close"]
