"""``python -m lbmiddleware serve``: the gateway in a subprocess on port 0, under each of its
servers (the fast one, granian, uvicorn)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
import requests

from lbmiddleware import errors as lb_errors
from lbmiddleware.core import forwarding as lb_forwarding
from lbmiddleware.core.settings import describe
from lbmiddleware.gateway_settings import GROUPS, GatewaySettings, load_settings, parse_listen
from lbmiddleware.proxy import settings as lb_proxy_settings

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess


def run_serve(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(environ)
    return subprocess.run([sys.executable, "-m", "lbmiddleware", "serve", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes to the gateway, read until it closes or goes quiet."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


@pytest.fixture(params=GATEWAY_SERVERS)
def gateway(backends, request):
    urls = ", ".join(b.url for b in backends[:2])
    with GatewayProcess({"LB_BACKENDS": urls, "LB_PREFIX": "/api", "LB_READ_TIMEOUT": "500ms",
                         "LB_TRUSTED_PROXIES": "10.0.0.0/8",
                         "LB_SERVER": request.param}) as process:
        process.server = request.param
        yield process


def test_serve_proxies_round_robin_and_prints_its_address(gateway, backends):
    a, b = backends[:2]
    assert gateway.banner.startswith(f"lbmiddleware gateway listening on {gateway.url} ")
    assert a.url in gateway.banner and f"policy round_robin, {gateway.server})" in gateway.banner
    with requests.Session() as session:
        seen = [session.get(f"{gateway.url}/api/x", params={"n": i}, timeout=5).json()
                for i in range(4)]
        assert [s["server"] for s in seen] == ["a", "b", "a", "b"]
        assert seen[0]["path"] == "/api/x?n=0"
        headers = seen[0]["headers"]
        assert headers["Host"] == f"127.0.0.1:{a.port}"
        assert headers["X-Forwarded-For"] == "127.0.0.1"
        assert headers["X-Forwarded-Host"] == f"127.0.0.1:{gateway.port}"
        outside = session.get(f"{gateway.url}/elsewhere", timeout=5)
        assert outside.status_code == 404
        # the backend's Date and Server are hidden; the server's own, one each
        response = session.get(f"{gateway.url}/api/", timeout=5)
        assert not any(v.startswith("BaseHTTP") for v in response.raw.headers.getlist("Server"))
        assert len(response.raw.headers.getlist("Server")) <= 1
        assert len(response.raw.headers.getlist("Date")) == 1
    assert a.requests + b.requests == 5


def test_serve_answers_504_then_502_with_short_bodies(gateway, backends):
    a, b = backends[:2]
    a.behaviour = b.behaviour = "hang"
    response = requests.get(f"{gateway.url}/api/slow", timeout=10)
    assert response.status_code == 504
    assert response.text == "504 Gateway Timeout: the backend did not answer in time\n"
    a.stop()
    b.stop()
    response = requests.get(f"{gateway.url}/api/gone", timeout=10)
    assert response.status_code == 502
    assert response.text == "502 Bad Gateway: no backend gave a response\n"


def test_a_smuggled_request_never_reaches_a_backend(gateway, backends):
    smuggle = (b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               b"GET /api/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n")
    raw_exchange(gateway.port, smuggle, timeout=1.0)
    paths = [path for server in backends for _, path, _, _ in server.received]
    assert not any("smuggled" in path for path in paths)


def test_client_disconnect_mid_response_closes_the_upstream_connection(gateway, backends):
    a, b = backends[:2]
    for server in (a, b):
        server.behaviour = "stall"
        server.body_size = 1_000_000
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /api/big HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
    assert a.peer_closed.wait(3)


def test_spoofed_x_forwarded_for_is_appended_not_believed(gateway, backends):
    seen = requests.get(f"{gateway.url}/api/", headers={"X-Forwarded-For": "1.2.3.4"},
                        timeout=5).json()
    assert seen["headers"]["X-Forwarded-For"] == "1.2.3.4, 127.0.0.1"


@pytest.mark.parametrize("environ, message", [
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_MAX_FAILS": "x"},
     "LB_MAX_FAILS has value 'x': not an integer"),
    ({"LB_BACKENDS": "ftp://127.0.0.1:1"}, "LB_BACKENDS has value 'ftp://127.0.0.1:1'"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_LISTEN": "nowhere"},
     "LB_LISTEN has value 'nowhere'"),
    ({}, "LB_BACKENDS is not set"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_SERVER": "gunicorn"},
     "LB_SERVER has value 'gunicorn'"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_MAX_CONNECTIONS": "0"},
     "LB_MAX_CONNECTIONS has value '0': must be at least 1"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_HEADER_TIMEOUT": "0"},
     "LB_HEADER_TIMEOUT has value '0': must be greater than zero"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_SHUTDOWN_TIMEOUT": "soon"},
     "LB_SHUTDOWN_TIMEOUT has value 'soon': not a duration"),
    # granian once crashed on them (OverflowError), at its start or on SIGTERM
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_HEADER_TIMEOUT": "1e17"},
     "LB_HEADER_TIMEOUT has value '1e17': at most 86400 s (one day)"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_SHUTDOWN_TIMEOUT": "1e12"},
     "LB_SHUTDOWN_TIMEOUT has value '1e12': at most 86400 s (one day)"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_LOG_LEVEL": "loud"},
     "LB_LOG_LEVEL has value 'loud': expected debug, info, warning, error or critical"),
    # read before the others (logging is configured first): still an error naming it
    ({"LB_LOG_LEVEL": "loud"}, "LB_LOG_LEVEL has value 'loud'"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_ADMIN_LISTEN": "admin"},
     "LB_ADMIN_LISTEN has value 'admin': expected HOST:PORT"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_ADMIN_LISTEN": "127.0.0.1:8000"},
     "LB_ADMIN_LISTEN (admin_listen) has value '127.0.0.1:8000': the address of LB_LISTEN "
     "(listen), which has value '127.0.0.1:8000' (its default)"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_ACCESS_LOG": "maybe"},
     "LB_ACCESS_LOG has value 'maybe': not a boolean"),
])
def test_a_bad_setting_prints_the_config_error_and_exits_2(environ, message):
    result = run_serve(environ)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_dns_source_without_dnspython_is_a_bad_setting_before_the_server_starts(
        tmp_path, server):
    # dnspython missing: a sitecustomize on PYTHONPATH hides it from the gateway's process
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['dns'] = None\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = run_serve({"LB_BACKENDS": "dns+http://orders.test:8080", "LB_SERVER": server,
                        "LB_LISTEN": "127.0.0.1:0", "PYTHONPATH": path})
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "python -m lbmiddleware serve: error: source 'dns+http://orders.test:8080' needs dns, "
        "which is not installed: pip install 'lbmiddleware[dns]'\n")
    assert result.stdout == ""


@pytest.mark.parametrize("variable", ["LB_HEADER_TIMEOUT", "LB_SHUTDOWN_TIMEOUT"])
def test_server_durations_are_bounded_by_one_day(variable):
    base = {"LB_BACKENDS": "http://127.0.0.1:1"}
    field = variable[3:].lower()
    assert getattr(GatewaySettings.from_env({**base, variable: "86400s"}), field) == 86400.0
    assert getattr(load_settings({**base, variable: "86400s"})[GatewaySettings], field) == 86400.0
    for value in ("86400.5", "1e17", "1e400"):
        with pytest.raises(lb_errors.ConfigError, match=f"{variable} has value '{value}'"):
            GatewaySettings.from_env({**base, variable: value})
        with pytest.raises(lb_errors.ConfigError, match=f"{variable} has value '{value}'"):
            load_settings({**base, variable: value})


def test_an_address_in_use_is_an_error_without_traceback():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_serve({"LB_BACKENDS": "http://127.0.0.1:1", "LB_LISTEN": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_setting():
    result = run_serve({}, "--help")
    assert result.returncode == 0
    rows = describe(*GROUPS)
    assert {row[0] for row in rows} >= {"LB_BACKENDS", "LB_RETRIES", "LB_PREFIX", "LB_LISTEN"}
    for variable, _default, description in rows:
        assert variable in result.stdout
        assert (description in result.stdout.replace("\n  ", " ")
                or description[:30] in result.stdout)


def test_the_server_can_be_chosen_and_auto_prefers_the_fast_one(monkeypatch):
    """auto: the fast server, else granian, else uvicorn (the first whose modules are
    installed)."""
    from lbmiddleware import gateway
    settings = GatewaySettings()
    assert gateway.choose_server(settings) == "fast"
    for server in GATEWAY_SERVERS:
        assert gateway.choose_server(settings.replace(server=server)) == server
    real = importlib.util.find_spec
    hidden: set[str] = {"uvloop"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name in hidden else real(name))
    assert gateway.choose_server(settings) == "granian"
    with pytest.raises(lb_errors.ConfigError,
                       match="LB_SERVER has value 'fast': uvloop is not installed"):
        gateway.choose_server(settings.replace(server="fast"))
    hidden.add("granian")
    assert gateway.choose_server(settings) == "uvicorn"
    with pytest.raises(lb_errors.ConfigError,
                       match="LB_SERVER has value 'granian': granian is not installed"):
        gateway.choose_server(settings.replace(server="granian"))


def test_top_level_help_names_both_commands():
    result = subprocess.run([sys.executable, "-m", "lbmiddleware", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "serve" in result.stdout and "demo" in result.stdout


def test_the_gateway_stops_cleanly_on_sigterm(backends):
    process = GatewayProcess({"LB_BACKENDS": backends[0].url}).start()
    assert json.loads(requests.get(process.url, timeout=5).text)["server"] == "a"
    errors = process.stop()
    assert "Traceback" not in errors


def test_uvicorn_is_chosen_only_with_httptools(monkeypatch):
    """The gateway's uvicorn protocol (head timeout, connection limit) extends httptools'."""
    from lbmiddleware import gateway
    settings = GatewaySettings()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name in ("granian", "httptools") else real(name))
    with pytest.raises(lb_errors.ConfigError, match="LB_SERVER has value 'uvicorn': httptools is "
                                                    r"not installed \(pip install httptools\)"):
        gateway.choose_server(settings.replace(server="uvicorn"))
    with pytest.raises(lb_errors.ConfigError, match=r"uvloop, httptools and uvicorn for the "
                                                    r"fast server; or granian"):
        gateway.choose_server(settings)


# -- the gateway's settings ----------------------------------------------------------------------

def test_load_settings_reads_every_class_the_gateway_reads():
    settings = load_settings({
        "LB_BACKENDS": "http://127.0.0.1:8001", "LB_POLICY": "latency", "LB_RETRIES": "0",
        "LB_PRESERVE_HOST": "1", "LB_PREFIX": "api/", "LB_LISTEN": "[::1]:9000",
        "LB_SERVER": "uvicorn", "LB_MAX_CONNECTIONS": "7"})
    assert [type(group) for group in settings] == list(GROUPS)
    assert (settings.core.policy, [b.url for b in settings.core.backends]) == (
        "latency", ["http://127.0.0.1:8001"])
    forwarding = settings[lb_forwarding.ForwardingSettings]
    assert forwarding.retries == 0 and forwarding.preserve_host
    assert settings[lb_proxy_settings.ProxySettings].prefix == "/api"
    gateway = settings[GatewaySettings]
    assert (gateway.listen_address, gateway.server, gateway.max_connections) == (
        ("::1", 9000), "uvicorn", 7)
    assert load_settings({"LB_BACKENDS": "http://127.0.0.1:8001"}, retries=3)[
        lb_forwarding.ForwardingSettings].retries == 3
    with pytest.raises(TypeError, match=r"load_settings\(\) got an unexpected keyword argument"):
        load_settings({"LB_BACKENDS": "http://127.0.0.1:8001"}, nope=1)


def test_gateway_settings_defaults():
    settings = GatewaySettings()
    assert settings.listen_address == ("127.0.0.1", 8000)
    assert (settings.server, settings.workers, settings.shutdown_timeout,
            settings.header_timeout, settings.max_connections) == ("auto", 1, 30.0, 30.0, 512)
    assert (settings.admin_listen, settings.admin_address, settings.log_level) == ("", None, "info")
    assert [row[0] for row in GatewaySettings.describe()] == [
        "LB_SERVER", "LB_WORKERS", "LB_LISTEN", "LB_ADMIN_LISTEN", "LB_SHUTDOWN_TIMEOUT",
        "LB_HEADER_TIMEOUT", "LB_MAX_CONNECTIONS", "LB_LOG_LEVEL", "LB_TLS_CERT", "LB_TLS_KEY"]
    assert (settings.tls_cert, settings.tls_key) == ("", "")


@pytest.mark.parametrize("given, level", [
    ("info", "info"), ("WARNING", "warning"), (" warn ", "warning"), ("Debug", "debug"),
    ("error", "error"), ("CRITICAL", "critical"), ("fatal", "critical")])
def test_log_levels_are_logging_names_in_any_case(given, level):
    assert GatewaySettings.from_env({"LB_LOG_LEVEL": given}).log_level == level


def test_a_bad_log_level_names_the_variable_and_the_levels():
    for value in ("loud", "", "20", "notset"):
        with pytest.raises(lb_errors.ConfigError,
                           match=f"LB_LOG_LEVEL has value '{value}': expected debug, info, "
                                 "warning, error or critical"):
            GatewaySettings.from_env({"LB_LOG_LEVEL": value})


@pytest.mark.parametrize("given, shown, address", [
    ("", "", None), ("  ", "", None), ("127.0.0.1:9901", "127.0.0.1:9901", ("127.0.0.1", 9901)),
    (":0", "0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9901", "[::1]:9901", ("::1", 9901))])
def test_the_admin_address_is_empty_or_host_and_port(given, shown, address):
    settings = GatewaySettings.from_env({"LB_ADMIN_LISTEN": given})
    assert (settings.admin_listen, settings.admin_address) == (shown, address)


@pytest.mark.parametrize("listen, admin", [
    ("127.0.0.1:8000", "127.0.0.1:8000"), ("127.0.0.1:9000", ":9000"),
    ("0.0.0.0:9000", "127.0.0.1:9000"), ("[::1]:9000", "[::]:9000")])
def test_the_admin_address_cannot_be_the_proxys(listen, admin):
    with pytest.raises(lb_errors.ConfigError) as caught:
        GatewaySettings.from_env({"LB_LISTEN": listen, "LB_ADMIN_LISTEN": admin})
    message = str(caught.value)
    assert message.startswith("LB_ADMIN_LISTEN (admin_listen) has value")
    assert f"the address of LB_LISTEN (listen), which has value '{listen}'" in message
    assert ("(its default)" in message) == (listen == "127.0.0.1:8000")
    assert "set LB_ADMIN_LISTEN to another port" in message
    with pytest.raises(lb_errors.ConfigError, match="LB_ADMIN_LISTEN"):
        GatewaySettings(listen=listen, admin_listen=admin)


@pytest.mark.parametrize("listen, admin", [
    ("127.0.0.1:0", "127.0.0.1:0"), ("127.0.0.1:8000", "127.0.0.1:8001"),
    ("127.0.0.1:9000", "127.0.0.2:9000")])
def test_distinct_admin_and_proxy_addresses_are_taken(listen, admin):
    settings = GatewaySettings(listen=listen, admin_listen=admin)
    assert settings.admin_address != settings.listen_address or settings.listen.endswith(":0")


@pytest.mark.parametrize("value, words", [
    ("localhost", "LB_LISTEN has value 'localhost'"),
    ("h:99999", "port from 0 to 65535"),
    ("http://127.0.0.1:8000", r"an address HOST:PORT, not a URL: 127.0.0.1:8000$"),
    ("https://[::1]:8443/", r"an address HOST:PORT, not a URL: \[::1\]:8443$"),
    ("unix:///run/lb.sock", r"an address HOST:PORT, not a URL$"),
])
def test_a_bad_listen_address_names_the_variable(value, words):
    with pytest.raises(lb_errors.ConfigError, match=words):
        GatewaySettings.from_env({"LB_LISTEN": value})


def test_listen_addresses():
    assert parse_listen(":8080") == ("0.0.0.0", 8080)      # every interface, as uvicorn reads it
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    with pytest.raises(ValueError):
        parse_listen("[zz::1]:80")


def test_the_gateways_settings_module_imports_only_the_standard_library():
    code = ("import sys, lbmiddleware.gateway_settings as g\n"
            "g.load_settings({'LB_BACKENDS': 'http://a:1'})\n"
            "third = {'requests', 'urllib3', 'starlette', 'uvicorn', 'granian', 'httpx'}\n"
            "print(sorted(third & set(sys.modules)), 'lbmiddleware.asgi' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"
