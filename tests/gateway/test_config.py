"""The gateway's config file (``serve --config FILE``, issue 14 item 2): what it holds, how it
is read (TOML: tomllib, tomli before 3.11), and every way it is refused, with the file, the
line and the key named; through ``python -m lbmiddleware serve --config``, exit status 2.

In-process for the reading (:func:`parse_config`), a subprocess for what a user sees.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import requests

from lbmiddleware.core.backend import Source
from lbmiddleware.core.forwarding import ForwardingSettings
from lbmiddleware.gateway.config import (
    ConfigFileError,
    GatewayConfig,
    ignored_variables,
    parse_config,
    read_config,
)
from lbmiddleware.gateway_settings import GatewaySettings
from lbmiddleware.proxy.settings import ProxySettings

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"


def parse(text: str, **kwargs) -> GatewayConfig:
    return parse_config(textwrap.dedent(text), "gw.toml", **kwargs)


def refusal(text: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    return caught.value


def run_serve(*args: str, environ: dict[str, str] | None = None,
              cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(environ or {})
    return subprocess.run([sys.executable, "-m", "lbmiddleware", "serve", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=30)


# -- what a file holds ----------------------------------------------------------------------

def test_every_table_and_the_values_as_toml_or_as_the_variables_text():
    config = parse("""
        [gateway]
        listen = ":8080"
        admin_listen = "127.0.0.1:9000"
        shutdown_timeout = 5
        log_level = "warning"
        watch = true

        [defaults]
        retries = 1
        read_timeout = "30s"            # the variable's text
        connect_timeout = 0.5           # a TOML number: seconds
        fail_statuses = [502, 503]
        trusted_proxies = ["10.0.0.0/8"]

        [[route]]
        prefix = "/api/"
        host = "API.Example.com."
        backends = ["http://127.0.0.1:8001", "http://127.0.0.1:8002 weight=2"]
        policy = "latency"
        retries = 0                     # the route's own wins over [defaults]

        [[route]]
        name = "auth"
        prefix = "/auth"
        backends = "dns+http://accounts.internal:8080, http://127.0.0.1:8003 backup"
        sticky_cookie = "lb_auth"
        strip_prefix = true
    """)
    gateway = config[GatewaySettings]
    assert config.watch is True
    assert (gateway.listen, gateway.admin_listen, gateway.shutdown_timeout,
            gateway.log_level) == ("0.0.0.0:8080", "127.0.0.1:9000", 5.0, "warning")
    api, auth = sorted(config.routes, key=lambda route: route.line)
    assert (api.name, api.prefix, api.host, api.line) == (
        "api.example.com/api", "/api", "api.example.com", 16)
    assert [(b.url, b.weight) for b in api.settings.core.backends] == [
        ("http://127.0.0.1:8001", 1), ("http://127.0.0.1:8002", 2)]
    assert api.settings.core.policy == "latency"
    forwarding = api.settings[ForwardingSettings]
    assert (forwarding.retries, forwarding.read_timeout, forwarding.connect_timeout,
            forwarding.fail_statuses) == (0, 30.0, 0.5, frozenset({502, 503}))
    assert auth.settings[ForwardingSettings].retries == 1
    assert (auth.name, auth.host, auth.settings[ProxySettings].strip_prefix) == (
        "auth", None, True)
    assert auth.settings.core.sources == (Source("dns+http://accounts.internal:8080"),)
    assert auth.settings[ForwardingSettings].sticky_cookie == "lb_auth"
    assert [str(n) for n in auth.settings[ProxySettings].trusted_proxies] == ["10.0.0.0/8"]


def test_routes_are_kept_longest_prefix_first_a_hosts_before_the_host_less():
    config = parse("""
        [defaults]
        backends = ["http://127.0.0.1:1"]      # each route still gets its own pool
        [[route]]
        [[route]]
        prefix = "/a"
        [[route]]
        prefix = "/a"
        host = "x.test"
        [[route]]
        prefix = "/a/b"
    """)
    assert [route.name for route in config.routes] == ["/a/b", "x.test/a", "/a", "/"]
    assert all(route.settings.core.static_backends[0].url == "http://127.0.0.1:1"
               for route in config.routes)


def test_options_win_over_the_file_and_lb_log_level_fills_in_for_it():
    config = parse("""
        [gateway]
        listen = "127.0.0.1:8000"
        [[route]]
        backends = ["http://127.0.0.1:1"]
    """, options={"listen": "127.0.0.1:9999", "admin_listen": None}, log_level="debug")
    assert config[GatewaySettings].listen == "127.0.0.1:9999"
    assert config[GatewaySettings].log_level == "debug"
    assert config.options == (("listen", "127.0.0.1:9999"),)
    written = parse("""
        [gateway]
        log_level = "error"
        [[route]]
        backends = ["http://127.0.0.1:1"]
    """, log_level="debug")
    assert written[GatewaySettings].log_level == "error"


def test_a_file_path_is_relative_to_the_files_folder(tmp_path, certificate):
    cert, key = certificate
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "ca.pem").write_bytes(pathlib.Path(cert).read_bytes())
    (folder / "gw.toml").write_text(textwrap.dedent("""
        [[route]]
        backends = ["https://127.0.0.1:1"]
        backend_ca = "ca.pem"
    """))
    config = read_config(str(folder / "gw.toml"))
    assert config.routes[0].settings.core.backend_ca == str(folder / "ca.pem")


@pytest.mark.parametrize("where", ["route", "defaults"])
def test_backend_tls_files_that_cannot_be_loaded_name_their_line(tmp_path, certificate,
                                                                  where):
    """Found as the file is read (at the start, and on a reload: the running configuration
    kept), by the key's name and line, not only when the pool is built."""
    cert, key = certificate
    (tmp_path / "not.pem").write_text("not a certificate\n")
    defaults = 'backend_ca = "not.pem"' if where == "defaults" else ""
    own = 'backend_ca = "not.pem"' if where == "route" else ""
    (tmp_path / "gw.toml").write_text(textwrap.dedent(f"""\
        [defaults]
        {defaults}

        [[route]]
        prefix = "/api"
        backends = ["https://127.0.0.1:1"]
        {own}
    """))
    with pytest.raises(ConfigFileError) as caught:
        read_config(str(tmp_path / "gw.toml"))
    error = caught.value
    assert (error.line, error.key) == ((2 if where == "defaults" else 7), "backend_ca")
    assert re.search(r'gw.toml:\d: route "/api": backend_ca has value .*not.pem\': no PEM '
                     r"certificate in it", str(error)), str(error)
    # A client certificate and a key that is not its own; verification off: the CA unused.
    (tmp_path / "gw.toml").write_text(textwrap.dedent(f"""\
        [[route]]
        backends = ["https://127.0.0.1:1"]
        backend_verify = false
        backend_ca = "not.pem"
        backend_client_cert = "{cert}"
        backend_client_key = "{(tmp_path / 'client.key')}"
    """))
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out",
                    str(tmp_path / "client.key")], check=True, capture_output=True, timeout=30)
    with pytest.raises(ConfigFileError) as caught:
        read_config(str(tmp_path / "gw.toml"))
    assert caught.value.line == 5 and caught.value.key == "backend_client_cert"
    assert "the key is not the certificate's" in str(caught.value)
    assert "LB_" not in str(caught.value)


def test_the_lb_variables_a_config_does_not_read():
    environ = {"LB_RETRIES": "1", "LB_LOG_LEVEL": "debug", "LB_BACKENDS": "http://a:1",
               "LB_NOT_A_SETTING": "x", "PATH": "/bin"}
    assert ignored_variables(environ) == ["LB_BACKENDS", "LB_RETRIES"]


def test_the_example_file_reads(monkeypatch):
    config = read_config(str(EXAMPLE))
    assert len(config.routes) >= 2
    assert any(route.settings.core.sources for route in config.routes)     # a DNS source
    assert any(route.host for route in config.routes)


# -- every refusal names the file, the line and the key ----------------------------------

@pytest.mark.parametrize(("text", "line", "key", "words"), [
    # TOML's own errors, at their line
    ("[gateway]\nlisten = \n", 2, "listen", "gw.toml:2: listen: not valid TOML: Invalid value"),
    ('[gateway]\nlisten = "a:1"\nlisten = "b:2"\n', 3, "listen", "Cannot overwrite a value"),
    ('[defaults]\nretries = 1\n[defaults]\n', 3, None, "not valid TOML"),
    # unknown keys, with the closest known one
    ("[defaults]\nretry = 1\n", 2, "retry",
     "gw.toml:2: [defaults]: unknown key 'retry' (did you mean retries?)"),
    ('[[route]]\nbackends = ["http://a:1"]\nmax-fails = 2\n', 3, "max-fails",
     "(did you mean max_fails?)"),
    ("[gateway]\nlisen = ':80'\n", 2, "lisen", "(did you mean listen?)"),
    ("[defaults]\nLB_RETRIES = 1\n", 2, "LB_RETRIES",
     "LB_RETRIES is the variable's name; in the file the key is retries"),
    ("[defaults]\nzzz = 1\n", 2, "zzz", "the keys of [defaults] are: access_log, backend_ca"),
    # keys in the wrong table
    ("[gateway]\nretries = 1\n", 2, "retries",
     "[gateway]: retries is a setting of each route's pool: put it in [defaults] or a [[route]]"),
    ('[[route]]\nbackends = ["http://a:1"]\nlisten = ":1"\n', 3, "listen",
     "listen is the server's setting: put it in [gateway]"),
    ('[defaults]\nprefix = "/api"\n', 2, "prefix", "prefix is a route's own key"),
    ("[defaults]\nwatch = true\n", 2, "watch", "put it in [gateway]"),
    ('[gateway]\nwatch = "often"\n', 2, "watch", "watch has value 'often': "),
    ("retries = 1\n", 1, "retries", "retries at the top of the file: put it in [defaults]"),
    ('[routes]\nprefix = "/"\n', 1, "routes", "unknown table 'routes' (did you mean [[route]]?)"),
    ('[route]\nprefix = "/"\n', 1, "route", "write [[route]] (two brackets)"),
    # values the settings refuse, in their words
    ('[[route]]\nprefix = "/api"\nbackends = ["http://a:1"]\nmax_fails = "x"\n', 4, "max_fails",
     "gw.toml:4: route \"/api\": max_fails has value 'x': not an integer"),
    ('[defaults]\n\nfail_timeout = -1\n', 3, "fail_timeout",
     "[defaults]: fail_timeout has value -1: must not be negative"),
    ('[[route]]\nname = "api"\nbackends = [\n  "http://a:1",\n  "ftp://b",\n]\n', 3, "backends",
     "route \"api\": backends has value ['http://a:1', 'ftp://b']: backend URL 'ftp://b'"),
    ('[[route]]\nbackends = []\n', 2, "backends", "backend list is empty"),
    ('[[route]]\nbackends = ["http://a:1"]\nretries = {count = 1}\n', 3, "retries",
     "retries has a table as its value"),
    ('[[route]]\nbackends = ["http://a:1"]\npolicy = "fastest"\n', 3, "policy",
     "policy has value 'fastest': unknown policy"),
    ('[[route]]\nbackends = ["http://a:1"]\nhost = "a.test:8080"\n', 3, "host",
     "a host name without port"),
    ('[[route]]\nbackends = ["http://a:1"]\nhost = "*.a.test"\n', 3, "host", "no wildcards"),
    ('[gateway]\ntls_cert = "missing.pem"\n', 2, "tls_cert",
     "tls_cert has value 'missing.pem': no such file"),
    # across keys, and across [defaults] and the route
    ('[defaults]\nfail_timeout = "20s"\n[[route]]\nbackends = ["http://a:1"]\n'
     'max_ejection_time = "10s"\n', 2, "fail_timeout",
     "route \"/\": LB_FAIL_TIMEOUT (fail_timeout) has value 20s: larger than"),
    ('[gateway]\nlisten = "127.0.0.1:8000"\nadmin_listen = ":8000"\n', 3, "admin_listen",
     "the admin listener needs a port of its own"),
    # routes
    ('[[route]]\nprefix = "/x"\n', 1, "backends",
     "route \"/x\": no backends: set backends in the route (or in [defaults])"),
    ("[gateway]\n", 1, None, "no [[route]]: a gateway needs at least one"),
    ('[[route]]\nbackends = ["http://a:1"]\n[[route]]\nprefix = "/"\nbackends = ["http://b:1"]\n',
     4, "prefix", "the prefix '/' and no host of the route at line 1"),
    ('[[route]]\nname = "x"\nbackends = ["http://a:1"]\n[[route]]\nprefix = "/y"\nname = "x"\n'
     'backends = ["http://b:1"]\n', 6, "name", "name 'x' is the route's at line 1"),
    # routes as an array of inline tables, and a route's sub-table, at their own lines
    ('route = [\n  {prefix = "/a", backends = ["http://a:1"]},\n  # {max_fails = 1}\n'
     '  {name = "b #1 [x]", prefix = "/b", backends = ["http://b:1"], max_fails = "x"},\n]\n',
     4, "max_fails", 'gw.toml:4: route "b #1 [x]": max_fails has value'),
    ('route = [{prefix = "/a", backends = ["http://a:1"]},\n  {name = "b"}]\n', 2, "backends",
     'gw.toml:2: route "b": no backends'),
    ('[[route]]\nbackends = ["http://a:1"]\n\n[route.health]\npath = "/x"\n', 4, "health",
     "gw.toml:4: route \"/\": unknown key 'health'"),
    ('[[route]]\nbackends = ["http://a:1"]\n[[route]]\nprefix = "/b"\nbackends = ["http://b:1"]'
     '\n[route.retries]\ncount = 1\n', 6, "retries", "retries has a table as its value"),
])
def test_a_bad_file_is_refused_naming_its_line_and_key(text, line, key, words):
    error = refusal(text)
    assert (error.line, error.key) == (line, key), str(error)
    assert str(error).startswith(f"gw.toml:{line}: ")
    assert words in str(error)


def test_the_keys_a_route_takes_are_listed_once_each():
    listed = str(refusal('[[route]]\nbackends = ["http://a:1"]\nzzz = 1\n')).split(
        "are: ", 1)[1].rstrip(")").split(", ")
    assert "prefix" in listed and len(listed) == len(set(listed))


def test_a_key_inside_a_multi_line_string_is_no_key():
    text = '''
        [[route]]
        backends = ["http://a:1"]
        name = """
        max_fails = 1
        """
        max_fails = "x"
    '''
    error = refusal(text)
    assert (error.line, error.key) == (7, "max_fails")
    assert parse(text.replace('"x"', "2")).routes[0].name == "max_fails = 1"


def test_a_file_that_cannot_be_read_or_is_not_utf8(tmp_path):
    with pytest.raises(ConfigFileError, match=r"missing\.toml: cannot read the config file: "
                                              r"No such file or directory"):
        read_config(str(tmp_path / "missing.toml"))
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[route]]\n# caf\xe9\nbackends = ["http://a:1"]\n')
    with pytest.raises(ConfigFileError, match=r"latin\.toml:2: not UTF-8 text"):
        read_config(str(latin))


# -- what a user sees: python -m lbmiddleware serve --config ---------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ('[defaults]\nretry = 1\n[[route]]\nbackends = ["http://a:1"]\n',
     "gateway.toml:2: [defaults]: unknown key 'retry' (did you mean retries?)"),
    ('[[route]]\nprefix = "/api"\nbackends = ["http://a:1"]\nmax_fails = "x"\n',
     "gateway.toml:4: route \"/api\": max_fails has value 'x': not an integer"),
    ("[[route]]\nbackends = [\n", "gateway.toml:3: not valid TOML:"),
])
def test_serve_refuses_a_bad_file_with_exit_status_2(tmp_path, text, message):
    (tmp_path / "gateway.toml").write_text(text)
    result = run_serve("--config", "gateway.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"python -m lbmiddleware serve: error: {message}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_serve_refuses_a_missing_file_with_exit_status_2(tmp_path):
    result = run_serve("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"error: {tmp_path / 'nope.toml'}: cannot read the config file: "
        f"No such file or directory")


def test_serve_with_a_config_reads_no_lb_variable_but_lb_log_level(tmp_path, backends):
    a = backends[0]
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:0"\n'
                      f'[[route]]\nprefix = "/api"\nbackends = ["{a.url}"]\n')
    environ = {"LB_BACKENDS": backends[1].url, "LB_PREFIX": "/"}
    with GatewayProcess(environ, config=config) as gateway:
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "a"
        assert requests.get(f"{gateway.url}/x", timeout=5).status_code == 404
        line = gateway.wait_for_output("set but not read")
    assert (f"WARNING lbmiddleware.gateway: LB_BACKENDS, LB_PREFIX are set but not read: with "
            f"--config the settings come from {config}") in line
    # LB_LOG_LEVEL is read: at error, that warning is not written
    with GatewayProcess({**environ, "LB_LOG_LEVEL": "error"}, config=config) as gateway:
        assert requests.get(f"{gateway.url}/api/x", timeout=5).json()["server"] == "a"
        output = gateway.stop()
    assert "WARNING" not in output


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_backends_base_path_not_in_ascii_is_proxied(tmp_path, backends, server):
    """A base path written in UTF-8 (TOML files are) goes upstream percent-encoded: not a
    500 on every request."""
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:0"\nserver = "{server}"\n'
                      f'[[route]]\nbackends = ["{backends[0].url}/bücher"]\n',
                      encoding="utf-8")
    with GatewayProcess({}, config=config) as gateway:
        assert f"-> {backends[0].url}/b%C3%BCcher" in gateway.banner
        response = requests.get(f"{gateway.url}/ä?q=1", timeout=5)
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/b%C3%BCcher/%C3%A4?q=1"


def test_serve_listen_option_wins_over_the_file(tmp_path, backends):
    a = backends[0]
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:1"\n'          # (a port it cannot bind)
                      f'[[route]]\nbackends = ["{a.url}"]\n')
    gateway = GatewayProcess({}, config=config)
    gateway.args += ["--listen", "127.0.0.1:0"]
    with gateway:
        assert requests.get(f"{gateway.url}/x", timeout=5).json()["server"] == "a"


def test_an_address_taken_names_the_files_key(tmp_path, backends):
    with GatewayProcess({"LB_BACKENDS": backends[0].url}) as taken:
        config = tmp_path / "gateway.toml"
        config.write_text(f'[gateway]\nlisten = "127.0.0.1:{taken.port}"\nserver = "uvicorn"\n'
                          f'[[route]]\nbackends = ["{backends[0].url}"]\n')
        result = run_serve("--config", str(config))
    assert result.returncode == 1
    assert f"(listen in {config}): Address already in use" in result.stderr
