"""Routes from a config file (``python -m lbmiddleware serve --config FILE``, issue 14 item 2):
each route's requests reach its own pool; a host's route before the host-less one of the same
prefix; the longest prefix first; 404 under no route; the admin port shows each route's pool
by its name.

In-process first (the router's choice, the Host header as it is read), then the gateway
process under each of its servers with loopback backends.
"""

from __future__ import annotations

import asyncio
import textwrap

import pytest
import requests

from lbmiddleware.gateway.app import RoutesGatewayApp
from lbmiddleware.gateway.config import parse_config, read_config
from lbmiddleware.gateway.routes import request_host
from lbmiddleware.gateway.run import banner_line
from lbmiddleware.gateway_settings import load_settings

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess


def write(tmp_path, text: str, name: str = "gateway.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- in-process: which route a request goes to ------------------------------------------

ROUTES = """
    [[route]]
    prefix = "/"
    backends = ["http://127.0.0.1:1"]
    [[route]]
    name = "api"
    prefix = "/api"
    backends = ["http://127.0.0.1:2"]
    [[route]]
    prefix = "/api/v2"
    backends = ["http://127.0.0.1:3"]
    [[route]]
    prefix = "/api"
    host = "API.example.com"
    backends = ["http://127.0.0.1:4"]
    [[route]]
    host = "static.example.com"
    backends = ["http://127.0.0.1:5"]
"""


@pytest.fixture
def router():
    app = RoutesGatewayApp(parse_config(textwrap.dedent(ROUTES)), reload_on_sighup=False)
    yield app.router
    asyncio.run(app.aclose())


@pytest.mark.parametrize(("host", "path", "route"), [
    (None, "/", "/"),
    (None, "/elsewhere", "/"),
    (None, "/api", "api"),
    (None, "/api/x", "api"),
    (None, "/apix", "/"),                           # a prefix is whole path segments
    (None, "/api/v2", "/api/v2"),                   # the longest prefix wins
    (None, "/api/v2/x", "/api/v2"),
    (None, "/api/v20", "api"),
    ("api.example.com", "/api/x", "api.example.com/api"),   # the host's route first
    ("api.example.com", "/api/v2/x", "/api/v2"),    # ... of the same prefix only
    ("api.example.com", "/other", "/"),
    ("static.example.com", "/api/x", "api"),
    ("static.example.com", "/x", "static.example.com/"),
    ("other.example.com", "/x", "/"),
])
def test_the_longest_prefix_wins_then_the_hosts_route(router, host, path, route):
    assert router.match(host, path).route.name == route


def test_the_host_header_is_read_only_while_a_route_names_a_host(router):
    """lookup: the Host header and the path, against one table (swap replaces both)."""
    headers = [(b"accept", b"*/*"), (b"host", b"API.example.com:8080")]
    assert router.hosts
    assert router.lookup(headers, "/api/x").route.name == "api.example.com/api"
    table = router.entries
    hostless = [entry for entry in table if entry.route.host is None]
    try:
        router.swap(hostless)
        assert not router.hosts
        assert router.lookup(headers, "/api/x").route.name == "api"
        assert router.lookup([], "/nowhere").route.name == "/"
    finally:
        router.swap(table)
    assert router.hosts and router.lookup(headers, "/api/x").route.host == "api.example.com"


def test_a_retired_entry_is_idle_when_its_last_request_leaves(router):
    entry = router.entries[0]
    idle: list[object] = []
    entry.on_idle = idle.append
    entry.enter()
    entry.enter()
    entry.retire()
    entry.leave()
    assert (entry.active, idle) == (1, [])
    entry.leave()
    assert (entry.active, idle) == (0, [entry])
    entry.enter()
    entry.leave()
    assert idle == [entry]                         # once


def test_the_router_counts_a_request_in_its_entry_until_it_ends(router):
    """Router.__call__ enters the entry for the request and leaves it when the middleware
    returns, raising or not."""
    entry = router.lookup([], "/api/x")
    seen: list[int] = []

    async def middleware(scope, receive, send):
        seen.append(entry.active)
        raise RuntimeError("the app failed")

    entry.middleware, real = middleware, entry.middleware
    scope = {"type": "http", "path": "/api/x", "headers": []}
    try:
        with pytest.raises(RuntimeError):
            asyncio.run(router(scope, None, None))
    finally:
        entry.middleware = real
    assert (seen, entry.active) == ([1], 0)


def test_a_path_under_no_route_has_no_entry():
    config = parse_config('[[route]]\nprefix = "/api"\nbackends = ["http://127.0.0.1:1"]\n')
    app = RoutesGatewayApp(config, reload_on_sighup=False)
    try:
        assert app.router.match(None, "/apix") is None
        assert app.router.match(None, "/") is None
        assert app.router.match(None, "/api/../admin") is None      # not under it
    finally:
        asyncio.run(app.aclose())


NO_ROUTE = b"404 Not Found: no route for this path\n"


async def websocket(app, path: str, extensions: dict | None = None,
                    first: str = "websocket.connect") -> list[dict]:
    """A ``websocket`` scope through ``app`` in-process; the messages it sent."""
    sent: list[dict] = []
    incoming = iter([{"type": first}])

    async def receive():
        return next(incoming, {"type": "websocket.disconnect", "code": 1005})

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"front.example")], "client": ("127.0.0.1", 5000),
             "scheme": "ws", "subprotocols": []}
    if extensions is not None:
        scope["extensions"] = extensions
    await app(scope, receive, send)
    return sent


def test_a_websocket_under_no_route_gets_the_404_where_the_server_can_send_it(access_log):
    """As the middleware answers a WebSocket outside its prefix: the 404 through the ASGI
    denial-response extension where the server has it (uvicorn and granian do), else a
    close before the handshake (the server answers 403) with 1008 and the 404's words;
    with an access line when a route logs, as for an HTTP request under no route."""
    config = parse_config('[[route]]\nprefix = "/api"\naccess_log = true\n'
                          'backends = ["http://127.0.0.1:1"]\n')
    app = RoutesGatewayApp(config, reload_on_sighup=False)
    denial = {"websocket.http.response": {}}
    try:
        denied = asyncio.run(websocket(app.router, "/chat", denial))
        closed = asyncio.run(websocket(app.router, "/chat"))
        gone = asyncio.run(websocket(app.router, "/chat", denial, "websocket.disconnect"))
    finally:
        asyncio.run(app.aclose())
    assert denied[0]["type"] == "websocket.http.response.start" and denied[0]["status"] == 404
    assert (b"content-type", b"text/plain; charset=utf-8") in denied[0]["headers"]
    assert denied[1] == {"type": "websocket.http.response.body", "body": NO_ROUTE,
                         "more_body": False}
    assert closed == [{"type": "websocket.close", "code": 1008,
                       "reason": "404 Not Found: no route for this path"}]
    assert gone == []                   # left before its handshake reached the router
    lines = [r.getMessage() for r in access_log.records if r.name == "lbmiddleware.access"]
    assert [line.split(" duration_ms")[0] for line in lines] == [
        "client=127.0.0.1 method=GET path=/chat status=404 backend=- attempts=0",
        "client=127.0.0.1 method=GET path=/chat status=403 backend=- attempts=0"]


def test_a_websocket_under_no_route_gets_404_under_uvicorn():
    """A real server: the client's handshake is answered 404 with the router's body."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from ..support.websocket_backend import WebSocketServer

    config = parse_config('[[route]]\nprefix = "/api"\nbackends = ["http://127.0.0.1:1"]\n')
    app = RoutesGatewayApp(config, reload_on_sighup=False)
    with WebSocketServer(app) as server:
        async def scenario():
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{server.url}/chat"):
                    pass
            return refused.value.response

        response = asyncio.run(scenario())
    assert response.status_code == 404 and response.body == NO_ROUTE


@pytest.mark.parametrize(("header", "host"), [
    (b"example.com", "example.com"),
    (b"Example.COM:8080", "example.com"),
    (b"example.com.", "example.com"),
    (b"127.0.0.1:8000", "127.0.0.1"),
    (b"[::1]:8000", "[::1]"),
    (b"[::1]", "[::1]"),
    (b"", None),
])
def test_the_request_host_is_its_host_header_without_port_in_lower_case(header, host):
    assert request_host([(b"accept", b"*/*"), (b"host", header)]) == host
    assert request_host([(b"accept", b"*/*")]) is None


# -- the gateway process: each route to its own backends -----------------------------------

def two_routes(server: str, a, b, c, **gateway: str) -> str:
    extra = "".join(f'{key} = "{value}"\n' for key, value in gateway.items())
    return f"""
        [gateway]
        server = "{server}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        {extra}
        [defaults]
        retries = 1
        read_timeout = "5s"

        [[route]]
        name = "orders"
        prefix = "/api"
        backends = ["{a.url}", "{b.url}"]
        policy = "round_robin"

        [[route]]
        prefix = "/auth"
        strip_prefix = true
        backends = ["{c.url}"]
    """


def server_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["server"]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_two_routes_each_reach_their_own_backends(server, backends, tmp_path):
    a, b, c = backends
    config = write(tmp_path, two_routes(server, a, b, c))
    with GatewayProcess({}, config=config) as gateway, requests.Session() as session:
        assert f"({server}, 2 routes from {config})" in gateway.banner
        assert f"/api [orders] -> {a.url}, {b.url}; /auth -> {c.url}" in gateway.banner
        api = [session.get(f"{gateway.url}/api/x", params={"n": n}, timeout=5)
               for n in range(4)]
        assert [server_of(r) for r in api] == ["a", "b", "a", "b"]
        assert api[0].json()["path"] == "/api/x?n=0"
        auth = session.get(f"{gateway.url}/auth/login", timeout=5)
        assert server_of(auth) == "c" and auth.json()["path"] == "/login"   # stripped
        for outside in ("/", "/apix", "/elsewhere/api"):
            response = session.get(f"{gateway.url}{outside}", timeout=5)
            assert response.status_code == 404, outside
            assert response.headers["Content-Type"].startswith("text/plain")
        # the admin port: each route's pool by its name, in the file's order
        status = session.get(f"{gateway.admin_url}/status.json", timeout=5).json()
        pools = {pool["name"]: pool for pool in status["pools"]}
        assert list(pools) == ["orders", "/auth"]
        assert [row["url"] for row in pools["orders"]["backends"]] == [a.url, b.url]
        assert [row["requests"] for row in pools["orders"]["backends"]] == [2, 2]
        assert [row["requests"] for row in pools["/auth"]["backends"]] == [1]
        assert session.get(f"{gateway.admin_url}/ready", timeout=5).status_code == 200
        output = gateway.stop()
    assert "Traceback" not in output
    assert (a.requests, b.requests, c.requests) == (2, 2, 1)


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_host_routes_and_the_longest_prefix_through_the_gateway(server, backends, tmp_path):
    a, b, c = backends
    config = write(tmp_path, f"""
        [gateway]
        server = "{server}"
        listen = "127.0.0.1:0"

        [[route]]
        prefix = "/"
        backends = ["{a.url}"]

        [[route]]
        prefix = "/api/v2"
        backends = ["{b.url}"]

        [[route]]
        host = "api.example.com"
        backends = ["{c.url}"]
    """)
    with GatewayProcess({}, config=config) as gateway, requests.Session() as session:
        def via(path: str, host: str | None = None) -> str:
            headers = {"Host": host} if host else {}
            return server_of(session.get(f"{gateway.url}{path}", headers=headers, timeout=5))

        assert via("/x") == "a"
        assert via("/api/v2/orders") == "b"
        assert via("/api/v20") == "a"
        assert via("/x", "api.example.com") == "c"
        assert via("/x", "API.Example.com:8443") == "c"
        assert via("/api/v2/orders", "api.example.com") == "b"     # the longer prefix
        assert via("/x", "www.example.com") == "a"
        # the Host goes upstream as the backend's, as for a single pool
        echoed = session.get(f"{gateway.url}/x", headers={"Host": "api.example.com"},
                             timeout=5).json()
        assert echoed["headers"]["Host"] == f"127.0.0.1:{c.port}"
        assert echoed["headers"]["X-Forwarded-Host"] == "api.example.com"
        output = gateway.stop()
    assert "Traceback" not in output


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_routes_sticky_cookie_has_its_prefix_as_path(server, backends, tmp_path):
    """Two routes' cookies do not meet: each route's middleware scopes its cookie."""
    a, b, c = backends
    config = write(tmp_path, f"""
        [gateway]
        server = "{server}"
        listen = "127.0.0.1:0"
        [defaults]
        sticky_cookie = "lb"
        [[route]]
        prefix = "/api"
        backends = ["{a.url}", "{b.url}"]
        [[route]]
        prefix = "/auth"
        backends = ["{c.url}"]
    """)
    with GatewayProcess({}, config=config) as gateway:
        api = requests.get(f"{gateway.url}/api/x", timeout=5)
        auth = requests.get(f"{gateway.url}/auth/x", timeout=5)
        assert "Path=/api;" in api.headers["Set-Cookie"]
        assert "Path=/auth;" in auth.headers["Set-Cookie"]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_access_log_lines_name_each_route_and_the_404s(server, backends, tmp_path):
    a, b, c = backends
    config = write(tmp_path, f"""
        [gateway]
        server = "{server}"
        listen = "127.0.0.1:0"
        log_level = "warning"
        [[route]]
        prefix = "/api"
        access_log = true
        backends = ["{a.url}"]
        [[route]]
        prefix = "/quiet"
        backends = ["{b.url}"]
    """)
    with GatewayProcess({}, config=config) as gateway:
        for path in ("/api/x", "/quiet/x", "/nowhere"):
            requests.get(f"{gateway.url}{path}", timeout=5)
        gateway.wait_for_output(r'path=/nowhere status=404')
        output = gateway.stop()
    lines = [line for line in output.splitlines() if "lbmiddleware.access" in line]
    assert len(lines) == 2, output
    assert "path=/api/x status=200" in lines[0] and f"backend={a.url}" in lines[0]


# -- the banner ----------------------------------------------------------------------------

def test_the_banner_says_https_when_the_gateway_terminates_tls(certificate, tmp_path):
    cert, key = certificate
    settings = load_settings({"LB_BACKENDS": "http://127.0.0.1:1", "LB_TLS_CERT": cert,
                              "LB_TLS_KEY": key})
    line = banner_line(settings, "uvicorn", "127.0.0.1", 8443, ("127.0.0.1", 9000))
    assert line == ("lbmiddleware gateway listening on https://127.0.0.1:8443 (prefix /, "
                    "policy round_robin, uvicorn) -> http://127.0.0.1:1; admin "
                    "http://127.0.0.1:9000/status")
    config = write(tmp_path, f"""
        [gateway]
        tls_cert = "{cert}"
        tls_key = "{key}"
        [[route]]
        prefix = "/api"
        host = "api.example.com"
        name = "orders"
        backends = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        [[route]]
        backends = ["http://127.0.0.1:3"]
    """)
    line = banner_line(read_config(str(config)), "granian", "::1", 443, None)
    assert line == (f"lbmiddleware gateway listening on https://[::1]:443 (granian, 2 routes "
                    f"from {config}): api.example.com/api [orders] -> http://127.0.0.1:1, "
                    f"http://127.0.0.1:2; / -> http://127.0.0.1:3")
