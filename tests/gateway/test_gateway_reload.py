"""Reloading the config file (issue 14, item 3): SIGHUP re-reads it in the process that owns
the pools; a route whose pool settings changed only in their backends keeps its pool (the
backends that stay keep their state: counters, health, latency), another change builds a
new pool (the old one closed once its requests end), removed routes go; no request is cut;
a bad new file is a WARNING naming file, line and key, and the running routes stay.

In-process first (:class:`RoutesGatewayApp` with loopback backends, its reload awaited),
then the gateway process under each of its servers (granian's main process forwards SIGHUP
to its worker instead of starting a new one), with a bounded load running across the
reload.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import signal
import textwrap
import threading

import pytest
import requests

from lbmiddleware import fleet
from lbmiddleware.gateway import app as gateway_app
from lbmiddleware.gateway.app import RoutesGatewayApp
from lbmiddleware.gateway.config import read_config

from ..support.asgi_client import Call
from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.waiting import until, until_async


class Config:
    """A config file the test rewrites: ``write(routes, gateway=..., defaults=...)``."""

    def __init__(self, folder) -> None:
        self.path = folder / "gateway.toml"

    def write(self, routes: str, *, gateway: str = "", defaults: str = "") -> Config:
        text = textwrap.dedent(gateway) + "\n[defaults]\n" + textwrap.dedent(defaults)
        self.path.write_text(text + "\n" + textwrap.dedent(routes))
        return self

    def read(self):
        return read_config(str(self.path))


def route(prefix: str, *backends, **keys: object) -> str:
    lines = [f'[[route]]\nprefix = "{prefix}"',
             "backends = [" + ", ".join(f'"{b.url}"' for b in backends) + "]"]
    for key, value in keys.items():
        lines.append(f"{key} = {value!r}".replace("'", '"') if isinstance(value, str)
                     else f"{key} = {str(value).lower()}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(tmp_path)


async def served(name: str, app: RoutesGatewayApp, path: str) -> str:
    call = await Call(app, "GET", path).run()
    assert call.status == 200, (call.status, call.body)
    return call.json()["server"]


def requests_of(pool: fleet.Balancer) -> dict[str, int]:
    return {row["url"]: row["requests"] for row in pool.stats()}


# -- in-process ------------------------------------------------------------------------------

def test_a_route_whose_backends_change_keeps_its_pool_and_their_state(config, backends):
    a, b, c = backends
    config.write(route("/api", a, b))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            pool = app.pools["/api"]
            assert [await served("api", app, "/api/x") for _ in range(4)] == ["a", "b"] * 2
            config.write(route("/api", a, c))
            assert await app.reload() is True
            assert app.pools["/api"] is pool                # the same pool
            assert [bk.url for bk in pool.backends] == [a.url, c.url]
            assert requests_of(pool)[a.url] == 2            # a's state kept
            seen = [await served("api", app, "/api/x") for _ in range(4)]
            assert sorted(seen) == ["a", "a", "c", "c"]
            assert requests_of(pool)[a.url] == 4            # and counting on
            assert not pool.closed
        finally:
            await app.aclose()
        assert pool.closed

    asyncio.run(scenario())


def test_other_changes_build_a_new_pool_and_close_the_old(config, backends):
    a, b, c = backends
    config.write(route("/api", a, b) + route("/auth", c))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            api, auth = app.pools["/api"], app.pools["/auth"]
            api_entry = app.router.match(None, "/api")
            await served("api", app, "/api/x")
            # a pool setting: a new pool; a forwarding setting only: the pool kept
            config.write(route("/api", a, b, policy="random") + route("/auth", c, retries=0))
            assert await app.reload() is True
            assert app.pools["/api"] is not api and app.pools["/api"].policy == "random"
            assert requests_of(app.pools["/api"]) == {a.url: 0, b.url: 0}
            assert app.pools["/auth"] is auth
            assert app.router.match(None, "/auth").middleware.forwarding.retries == 0
            await until_async(lambda: api.closed, 3, "the old pool closed")
            assert api_entry.retired and not auth.closed
            assert await served("auth", app, "/auth/x") == "c"
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_routes_added_and_removed(config, backends):
    a, b, c = backends
    config.write(route("/api", a) + route("/old", b))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            old = app.pools["/old"]
            assert await served("old", app, "/old/x") == "b"
            config.write(route("/api", a) + route("/new", c))
            assert await app.reload() is True
            assert list(app.pools) == ["/api", "/new"]
            assert (await Call(app, "GET", "/old/x").run()).status == 404
            assert await served("new", app, "/new/x") == "c"
            await until_async(lambda: old.closed, 3, "the removed route's pool closed")
        finally:
            await app.aclose()

    asyncio.run(scenario())


class GatedBackend:
    """A loopback backend whose answers wait until ``gate`` is set; ``arrived`` counts the
    requests that came."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.arrived += 1
                owner.gate.wait(10)
                body = b'{"server": "gated"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gated():
    backend = GatedBackend()
    yield backend
    backend.stop()


def test_a_request_in_flight_ends_on_the_pool_it_began_with(config, gated, backends):
    a = backends[0]
    config.write(route("/api", gated))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            old = app.pools["/api"]
            slow = asyncio.ensure_future(Call(app, "GET", "/api/slow").run())
            await until_async(lambda: gated.arrived == 1, 5, "the request at the backend")
            config.write(route("/api", a, policy="least_conn"))
            assert await app.reload() is True
            assert await served("api", app, "/api/x") == "a"     # new requests: new pool
            assert not old.closed and not slow.done()        # the old one waits for it
            gated.gate.set()
            call = await slow
            assert (call.status, call.json()) == (200, {"server": "gated"})
            await until_async(lambda: old.closed, 3, "the old pool closed after it")
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_a_bad_new_file_is_a_warning_and_the_routes_stay(config, backends, caplog):
    a, b, _ = backends
    config.write(route("/api", a))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            pool = app.pools["/api"]
            config.write(route("/api", a, max_fails="x"))
            with caplog.at_level(logging.WARNING, logger="lbmiddleware.gateway"):
                assert await app.reload() is False
            assert app.pools == {"/api": pool} and app.reloads == 0
            assert await served("api", app, "/api/x") == "a"
            config.path.write_text("[[route]\n")
            assert await app.reload() is False
            config.write(route("/api", b))
            assert await app.reload() is True and app.pools["/api"] is pool
            assert await served("api", app, "/api/x") == "b"
        finally:
            await app.aclose()

    asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == (f"{config.path} was not reloaded (the running configuration is "
                           f"kept): {config.path}:7: route \"/api\": max_fails has value "
                           f"'x': not an integer")
    assert f"{config.path}:1: not valid TOML" in warnings[1]


def test_a_pool_that_cannot_be_built_keeps_the_running_routes(config, backends, caplog,
                                                            monkeypatch):
    a, b, _ = backends
    config.write(route("/api", a))

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            pool = app.pools["/api"]
            built = []

            class Failing(fleet.Balancer):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    built.append(self)
                    if len(built) == 2:
                        raise ModuleNotFoundError("source 'dns+http://x:1' needs dns")

            monkeypatch.setattr(gateway_app.fleet, "Balancer", Failing)
            config.write(route("/api", a, policy="random") + route("/b", b))
            with caplog.at_level(logging.WARNING, logger="lbmiddleware.gateway"):
                assert await app.reload() is False
            assert app.pools == {"/api": pool}
            assert built[0].closed              # what the refused reload built is closed
        finally:
            await app.aclose()

    asyncio.run(scenario())
    assert "was not reloaded (the running configuration is kept): source 'dns+http://x:1' " \
           "needs dns" in caplog.text


def test_gateway_keys_are_taken_at_the_next_start_only(config, backends, caplog):
    a = backends[0]
    config.write(route("/api", a), gateway='[gateway]\nheader_timeout = "10s"\n')

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            config.write(route("/api", a), gateway='[gateway]\nheader_timeout = "5s"\n'
                                                   'log_level = "debug"\n')
            with caplog.at_level(logging.INFO, logger="lbmiddleware.gateway"):
                assert await app.reload() is True
            assert app.config.routes[0].settings.core.backends[0].url == a.url
        finally:
            await app.aclose()

    asyncio.run(scenario())
    assert f"{config.path} reloaded: route '/api' kept its pool" in caplog.text
    assert (f"{config.path}: [gateway] header_timeout, log_level changed: taken at the next "
            f"start only") in caplog.text


def test_the_admin_port_shows_the_reloaded_pools(config, backends):
    a, b, c = backends
    config.write(route("/api", a) + route("/auth", b),
                 gateway='[gateway]\nadmin_listen = "127.0.0.1:0"\n')

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            def pools():
                reply = requests.get(f"{app.admin.url}/status.json", timeout=5).json()
                return {p["name"]: [b["url"] for b in p["backends"]] for p in reply["pools"]}

            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, pools) == {"/api": [a.url],
                                                              "/auth": [b.url]}
            config.write(route("/api", a, c) + route("/new", b),
                         gateway='[gateway]\nadmin_listen = "127.0.0.1:0"\n')
            assert await app.reload() is True
            assert await loop.run_in_executor(None, pools) == {"/api": [a.url, c.url],
                                                              "/new": [b.url]}
        finally:
            await app.aclose()

    asyncio.run(scenario())


def test_sighup_reloads_on_the_apps_loop_and_its_handler_goes_at_shutdown(config, backends):
    a, b, _ = backends
    config.write(route("/api", a))
    before = signal.getsignal(signal.SIGHUP)

    def kept(signum, frame):
        pass

    signal.signal(signal.SIGHUP, kept)
    try:
        async def scenario():
            app = RoutesGatewayApp(config.read())
            await app.ready()
            try:
                config.write(route("/api", b))
                os.kill(os.getpid(), signal.SIGHUP)
                await until_async(lambda: app.reloads == 1, 5, "the reload")
                assert await served("api", app, "/api/x") == "b"
            finally:
                await app.aclose()

        asyncio.run(scenario())
        assert signal.getsignal(signal.SIGHUP) is kept      # put back, not SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


# -- the gateway process: SIGHUP under load ---------------------------------------------------

class Load:
    """``threads`` clients on keep-alive sessions, each sending GETs to ``paths`` in turn
    until stopped or ``limit`` requests each; ``errors`` lists what was not a 200."""

    def __init__(self, base: str, paths: list[str], threads: int = 4, limit: int = 3000
                 ) -> None:
        self.base, self.paths, self.limit = base, paths, limit
        self.stopping = threading.Event()
        self.sent = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self) -> None:
        with requests.Session() as session:
            for n in range(self.limit):
                if self.stopping.is_set():
                    return
                path = self.paths[n % len(self.paths)]
                try:
                    response = session.get(f"{self.base}{path}", timeout=10)
                    ok = response.status_code == 200
                    problem = f"{path}: {response.status_code} {response.text[:80]!r}"
                except requests.RequestException as exc:
                    ok, problem = False, f"{path}: {type(exc).__name__}: {exc}"
                with self.lock:
                    self.sent += 1
                    if not ok:
                        self.errors.append(problem)

    def count(self) -> int:
        with self.lock:
            return self.sent


def pool_rows(gateway: GatewayProcess) -> dict[str, dict[str, dict]]:
    status = requests.get(f"{gateway.admin_url}/status.json", timeout=5).json()
    return {pool["name"]: {row["url"]: row for row in pool["backends"]}
            for pool in status["pools"]}


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_sighup_under_load_drops_nothing_and_kept_pools_keep_counting(server, config,
                                                                       servers):
    a, b, c, d = (servers(name) for name in "abcd")
    gateway_table = f'[gateway]\nserver = "{server}"\nlisten = "127.0.0.1:0"\n' \
                    f'admin_listen = "127.0.0.1:0"\n'
    config.write(route("/api", a, b) + route("/auth", c), gateway=gateway_table)
    with GatewayProcess({}, config=config.path) as gateway:
        worker = gateway.proxy_pid
        with Load(gateway.url, ["/api/x", "/auth/x"]) as load:
            until(lambda: load.count() >= 100, 30, "100 requests before the reload")
            config.write(route("/api", a, d) + route("/auth", c, policy="random"),
                         gateway=gateway_table)
            gateway.reload()
            gateway.wait_for_output(r"reloaded: route '/api' kept its pool \(backends: 1 "
                                    r"added, 1 removed\); route '/auth' has a new pool "
                                    r"\(policy changed\)", timeout=15)
            until(lambda: d.requests >= 50, 30, "50 requests to d after the reload")
        assert load.errors == [] and load.sent >= 150
        rows = pool_rows(gateway)
        assert gateway.proxy_pid == worker                  # no new worker under granian
        # the kept pool counted a's requests from the start; the new one c's since the reload
        assert rows["/api"][a.url]["requests"] == a.requests
        assert rows["/api"][d.url]["requests"] == d.requests
        assert b.url not in rows["/api"]
        assert 0 < rows["/auth"][c.url]["requests"] < c.requests
        output = gateway.stop()
    assert "Traceback" not in output and "Respawning" not in output


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_bad_new_file_is_logged_and_the_old_routes_answer(server, config, backends):
    a, b, c = backends
    gateway_table = f'[gateway]\nserver = "{server}"\nlisten = "127.0.0.1:0"\n'
    config.write(route("/api", a), gateway=gateway_table)
    with GatewayProcess({}, config=config.path) as gateway:
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "a"
        config.write(route("/api", b) + route("/auth", c, retrys=1), gateway=gateway_table)
        gateway.reload()
        line = gateway.wait_for_output("was not reloaded", timeout=15)
        assert " WARNING lbmiddleware.gateway: " in line
        assert (f"{config.path}:13: route \"/auth\": unknown key 'retrys' (did you mean "
                f"retries?)") in line
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "a"
        assert requests.get(f"{gateway.url}/auth/x", timeout=5).status_code == 404
        # fixed: the next SIGHUP takes it
        config.write(route("/api", b) + route("/auth", c), gateway=gateway_table)
        gateway.reload()
        gateway.wait_for_output(r"reloaded: route '/api' kept its pool", timeout=15)
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "b"
        assert requests.get(f"{gateway.url}/auth/x", timeout=5).json()["server"] == "c"
        output = gateway.stop()
    assert "Traceback" not in output


# Not granian: without a config file its main process starts a new worker, as granian does.
@pytest.mark.parametrize("server", ["fast", "uvicorn"])
def test_sighup_without_a_config_under_uvicorn_is_logged_not_fatal(server, backends):
    with GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": backends[0].url}) as gateway:
        gateway.reload()
        gateway.wait_for_output("SIGHUP: nothing to re-read: the gateway was started without "
                                "--config")
        assert requests.get(f"{gateway.url}/x", timeout=5).status_code == 200
        assert gateway.process.poll() is None


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
@pytest.mark.parametrize("with_config", [True, False])
def test_sighup_is_taken_from_the_start_of_serve(server, with_config, config, backends,
                                                 monkeypatch, caplog):
    """Before the server starts (here: as the sources' libraries are checked, before the
    address is bound), SIGHUP is logged, not SIGHUP's default (the end of the process);
    serve puts back the handler it found."""
    from lbmiddleware.errors import ConfigError
    from lbmiddleware.gateway import load_settings, run
    if with_config:
        settings = config.write(route("/", backends[0]),
                                gateway=f'[gateway]\nserver = "{server}"\n').read()
    else:
        settings = load_settings({}, backends=backends[0].url, server=server)
    seen = []

    def check_libraries(settings: object) -> None:
        handler = signal.getsignal(signal.SIGHUP)
        seen.append(handler)
        assert callable(handler)
        handler(signal.SIGHUP, None)                 # what a SIGHUP now does
        raise ConfigError("stop here")

    before = signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(run, "check_libraries", check_libraries)
    with caplog.at_level(logging.WARNING, "lbmiddleware.gateway"), \
            pytest.raises(ConfigError, match="stop here"):
        run.serve(settings)
    assert seen and seen[0] not in (signal.SIG_DFL, before)
    assert signal.getsignal(signal.SIGHUP) is before
    assert ("not re-read: the gateway is not serving yet" if with_config
            else "SIGHUP: nothing to re-read") in caplog.text


# -- [gateway] watch = true: a changed file is reloaded -------------------------------------

def test_a_watched_file_is_reloaded_when_it_changes(config, backends, caplog):
    a, b, c = backends
    watched = "[gateway]\nwatch = true\n"
    config.write(route("/api", a), gateway=watched)

    async def scenario():
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        await app.ready()
        try:
            config.write(route("/api", b), gateway=watched)
            await until_async(lambda: app.reloads == 1, 5, "the reload of the changed file")
            assert await served("api", app, "/api/x") == "b"
            config.write(route("/api", c, max_fails=-1), gateway=watched)
            await until_async(lambda: "was not reloaded" in caplog.text, 5, "the refusal")
            assert await served("api", app, "/api/x") == "b"
            config.write(route("/api", c), gateway="[gateway]\nwatch = false\n")
            await until_async(lambda: app.reloads == 2, 5, "the reload of the fixed file")
            assert await served("api", app, "/api/x") == "c"
            assert app._watching is None                # watch = false: no more looking
        finally:
            await app.aclose()

    with caplog.at_level(logging.WARNING, logger="lbmiddleware.gateway"):
        asyncio.run(scenario())
    assert caplog.text.count("was not reloaded") == 1


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_watched_file_is_reloaded_by_the_gateway_process(server, config, backends):
    a, b, _ = backends
    gateway_table = (f'[gateway]\nserver = "{server}"\nlisten = "127.0.0.1:0"\n'
                     f'watch = true\n')
    config.write(route("/api", a), gateway=gateway_table)
    with GatewayProcess({}, config=config.path) as gateway:
        worker = gateway.proxy_pid
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "a"
        config.write(route("/api", b), gateway=gateway_table)
        gateway.wait_for_output(r"reloaded: route '/api' kept its pool \(backends: 1 added, "
                                r"1 removed\)", timeout=15)
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "b"
        assert gateway.proxy_pid == worker


def test_a_file_changed_since_it_was_read_is_reloaded_at_the_start(config, backends):
    """granian's worker is made from the configuration its main process read: a file
    changed in between (or since, for a worker granian starts again) is read again."""
    a, b, _ = backends
    config.write(route("/api", a))
    read = config.read()
    config.write(route("/api", a, b))

    async def scenario():
        app = RoutesGatewayApp(read, reload_on_sighup=False)
        await app.ready()
        try:
            await until_async(lambda: app.reloads == 1, 5, "the reload at the start")
            assert [bk.url for bk in app.pools["/api"].backends] == [a.url, b.url]
        finally:
            await app.aclose()

    asyncio.run(scenario())


# -- WebSockets: a socket open across a reload ----------------------------------------------

def test_a_websocket_open_across_a_reload_stays_on_its_pool(config):
    """A WebSocket is a request in flight until it closes: it keeps its route's old pool
    (which least_conn and the admin port see it in) after a reload gave the route a new one;
    the old pool is closed once the socket is."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from ..support.websocket_backend import WebSocketBackend, WebSocketServer

    with WebSocketBackend("a") as a, WebSocketBackend("b") as b:
        config.write(route("/ws", a, strip_prefix=True))
        app = RoutesGatewayApp(config.read(), reload_on_sighup=False)
        loops: list[asyncio.AbstractEventLoop] = []

        async def served_app(scope, receive, send):
            if scope["type"] == "lifespan":
                loops.append(asyncio.get_running_loop())
            await app(scope, receive, send)

        with WebSocketServer(served_app) as server:
            def reload() -> bool:       # on the server's loop, as SIGHUP would
                return asyncio.run_coroutine_threadsafe(app.reload(), loops[0]).result(10)

            async def scenario():
                loop = asyncio.get_running_loop()
                async with connect(f"{server.url}/ws/name") as ws:
                    assert await ws.recv() == "a"
                    old = app.pools["/ws"]
                    config.write(route("/ws", b, strip_prefix=True, policy="least_conn"))
                    assert await loop.run_in_executor(None, reload) is True
                    async with connect(f"{server.url}/ws/name") as other:
                        assert await other.recv() == "b"           # the new pool
                    await ws.send("still here")
                    assert await ws.recv() == "still here"
                    assert not old.closed and old.stats()[0]["in_flight"] == 1
                await until_async(lambda: old.closed, 5, "the old pool closed with the socket")
                with pytest.raises(InvalidStatus) as refused:      # under no route
                    async with connect(f"{server.url}/elsewhere"):
                        pass
                return refused.value.response.status_code

            assert asyncio.run(scenario()) == 404      # (uvicorn has the denial extension)
        assert a.wait_closed(1) == [1000]
