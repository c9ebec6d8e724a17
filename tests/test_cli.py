"""``python -m lbmiddleware``: ``--version``, ``serve --help`` showing defaults as a user types
them, ``serve --listen`` / ``--admin`` winning over ``LB_LISTEN`` / ``LB_ADMIN_LISTEN``, and
exit status 2 with ``python -m lbmiddleware serve: error: ...`` for a bad option or setting.

What the process does (exit status, stderr, the gateway it starts) is run as a subprocess;
what ``main(argv)`` decides before the gateway is imported runs in-process."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys

import pytest
import requests

import lbmiddleware
from lbmiddleware import __main__ as cli
from lbmiddleware.core.settings import describe
from lbmiddleware.gateway_settings import GROUPS

from .support.gateway import GatewayProcess

PROG = "python -m lbmiddleware"


def run(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(environ or {})
    return subprocess.run([sys.executable, "-m", "lbmiddleware", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- --version -------------------------------------------------------------------------------

def test_version_prints_the_installed_version() -> None:
    installed = importlib.metadata.version("lbmiddleware")
    assert installed == lbmiddleware.__version__
    for args in (["--version"], ["serve", "--version"]):
        result = run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (
            0, f"lbmiddleware {installed}\n", "")


def test_version_without_an_installed_distribution_is_the_sources_own(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert in_process(capsys, "--version") == (
        0, f"lbmiddleware {lbmiddleware.__version__} (not installed)\n", "")
    assert in_process(capsys, "serve", "--version") == (
        0, f"lbmiddleware {lbmiddleware.__version__} (not installed)\n", "")


# -- --help ----------------------------------------------------------------------------------

def test_serve_help_shows_each_default_as_a_user_types_it() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    for shown in ("LB_FAIL_TIMEOUT=10s", "LB_MAX_EJECTION_TIME=300s", "LB_RETRY_BUFFER=64KB",
                  "LB_POLICY=round_robin", "LB_PRESERVE_HOST=false",
                  "LB_FAIL_STATUSES=502,503,504", "LB_LISTEN=127.0.0.1:8000",
                  "LB_HEALTH_CHECK (off)", "LB_TRUSTED_PROXIES (none)", "LB_BACKENDS (required)"):
        assert f"  {shown}" in lines, shown
    for python_value in ("[10.0]", "[65536]", "'round_robin'", "[False]", "['']"):
        assert python_value not in result.stdout


def test_serve_help_lists_every_setting_with_its_whole_description() -> None:
    result = run("serve", "--help")
    text = " ".join(result.stdout.split())          # the descriptions are wrapped
    for variable, _default, description in describe(*GROUPS):
        assert variable in result.stdout
        assert " ".join(description.split()) in text, variable


def test_serve_help_names_the_options_and_what_a_bare_port_means(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = in_process(capsys, "serve", "--help")
    assert (status, err) == (0, "")
    text = " ".join(out.split())
    assert f"usage: {PROG} serve [-h] [--version] [--listen HOST:PORT] [--admin HOST:PORT]" in text
    assert "--listen HOST:PORT the address to listen on, instead of LB_LISTEN" in text
    assert "--admin HOST:PORT the admin listener's address, instead of LB_ADMIN_LISTEN" in text
    assert ":8000 means every interface (0.0.0.0:8000)" in text
    assert "[::]:8000 every IPv6 interface" in text


def test_the_top_level_help_lists_the_commands_and_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = in_process(capsys, "--help")
    assert status == 0
    assert "--version" in out and "serve" in out and "demo" in out and "register" in out


# -- bad options and settings: exit status 2 -------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["serve", "--listen", "8000"], "argument --listen: '8000': expected HOST:PORT with a port "
                                    "from 0 to 65535"),
    (["serve", "--listen", "*:8000"], "argument --listen: '*:8000': '*' is not a host name or "
                                      "address (every interface: :8000)"),
    (["serve", "--admin", "h:99999"], "argument --admin: 'h:99999': expected HOST:PORT with a "
                                      "port from 0 to 65535"),
    (["serve", "--port", "1"], "unrecognized arguments: --port 1"),
    (["serve", "--listen", "127.0.0.1:\u0663"], "argument --listen: '127.0.0.1:\u0663': "
                                               "expected HOST:PORT with a port from 0 to 65535"),
    (["serve", "--listen", "::1:0"], "argument --listen: '::1:0': an IPv6 address goes in "
                                     "brackets: [::1]:0"),
])
def test_a_bad_option_exits_2_naming_it(capsys: pytest.CaptureFixture[str], args: list[str],
                                        words: str) -> None:
    status, out, err = in_process(capsys, *args)
    assert (status, out) == (2, "")
    assert err.startswith(f"usage: {PROG} serve ")
    assert err.splitlines()[-1] == f"{PROG} serve: error: {words}"


def test_a_bad_option_from_the_process_exits_2() -> None:
    result = run("serve", "--listen", "nowhere", environ={"LB_BACKENDS": "http://127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"{PROG} serve: error: argument --listen: 'nowhere': expected HOST:PORT with a port "
        "from 0 to 65535")


@pytest.mark.parametrize("environ, message", [
    ({"LB_BACKENDS": "http://a:1;http://b:2"},
     "LB_BACKENDS has value 'http://a:1;http://b:2': backend list entry "
     "'http://a:1;http://b:2' has a ';': entries are separated by commas (did you mean "
     "'http://a:1, http://b:2'?)"),
    ({"LB_BACKENDS": "http://a:1", "LB_FAIL_TIMEOUT": "-1"},
     "LB_FAIL_TIMEOUT has value '-1': must not be negative"),
    ({"LB_BACKENDS": ","}, "LB_BACKENDS has value ',': backend list is empty: give at least "
                           "one URL"),
])
def test_a_bad_setting_exits_2_naming_it(environ: dict[str, str], message: str) -> None:
    result = run("serve", environ=environ)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == f"{PROG} serve: error: {message}"
    assert "Traceback" not in result.stderr


def test_an_admin_option_clashing_with_the_listen_variable_names_the_option() -> None:
    result = run("serve", "--admin", "127.0.0.1:8000", environ={"LB_BACKENDS": "http://a:1"})
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"{PROG} serve: error: LB_ADMIN_LISTEN (admin_listen) has value "
                           "'127.0.0.1:8000': the address of LB_LISTEN")
    assert last.endswith("(--admin set LB_ADMIN_LISTEN)")


# -- the options are used --------------------------------------------------------------------

def test_listen_and_admin_options_win_over_the_variables(backends) -> None:
    """The variables name a port another socket holds: the gateway starts only if it listens
    where the options say."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = f"127.0.0.1:{taken.getsockname()[1]}"
        process = GatewayProcess({"LB_BACKENDS": backends[0].url, "LB_SERVER": "uvicorn",
                                  "LB_LISTEN": held, "LB_ADMIN_LISTEN": held})
        process.args += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        with process:
            assert process.port not in (0, taken.getsockname()[1])
            assert process.admin_port not in (0, process.port, taken.getsockname()[1])
            answer = requests.get(f"{process.url}/", timeout=5)
            assert answer.status_code == 200 and answer.json()["server"] == "a"
            assert requests.get(f"{process.admin_url}/ready", timeout=5).status_code == 200


def test_without_the_options_the_variables_are_used(backends) -> None:
    """The same variables without the options: the held port is refused (exit status 1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run("serve", environ={"LB_BACKENDS": backends[0].url, "LB_SERVER": "uvicorn",
                                       "LB_LISTEN": held})
    assert result.returncode == 1
    assert re.search(rf"cannot listen on {held} \(LB_LISTEN\)", result.stderr)


# -- --workers (issue 15) ------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("0", "must be at least 1"),
    ("two", "not an integer"),
    ("257", "at most 256"),
])
def test_a_bad_workers_option_exits_2_naming_it(capsys: pytest.CaptureFixture[str], value: str,
                                                words: str) -> None:
    status, out, err = in_process(capsys, "serve", "--workers", value)
    assert (status, out) == (2, "")
    assert err.splitlines()[-1] == (f"{PROG} serve: error: argument --workers: {value!r}: "
                                    f"{words}")


def test_serve_help_names_the_workers_option() -> None:
    result = run("serve", "--help")
    assert "--workers N" in result.stdout
    assert "instead of LB_WORKERS" in " ".join(result.stdout.split())


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_more_than_one_worker_under_another_server_names_both_settings(server: str) -> None:
    result = run("serve", environ={"LB_BACKENDS": "http://127.0.0.1:1", "LB_SERVER": server,
                                   "LB_WORKERS": "2"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        f"{PROG} serve: error: LB_WORKERS has value 2: more than one worker needs the fast "
        f"server, and LB_SERVER has value {server!r}")


def test_the_workers_option_under_another_server_is_named_as_the_option() -> None:
    result = run("serve", "--workers", "3", environ={"LB_BACKENDS": "http://127.0.0.1:1",
                                                     "LB_SERVER": "uvicorn"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"{PROG} serve: error: LB_WORKERS has value 3: more than one worker needs the fast "
        "server, and LB_SERVER has value 'uvicorn' (--workers set LB_WORKERS)")


def test_workers_under_another_server_in_a_config_file_names_its_keys(tmp_path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nserver = "granian"\nworkers = 2\n[[route]]\nprefix = "/"\n'
                    'backends = ["http://127.0.0.1:1"]\n')
    result = run("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"{PROG} serve: error: workers in {path} has value 2: more than one worker needs "
        f"the fast server, and server in {path} has value 'granian'")


def test_the_workers_option_wins_over_the_variable(backends) -> None:
    process = GatewayProcess({"LB_BACKENDS": backends[0].url, "LB_SERVER": "fast",
                              "LB_WORKERS": "1"})
    process.args += ["--workers", "2"]
    with process:
        assert "(prefix /, policy round_robin, fast, 2 workers)" in process.banner
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as listed:
            assert len(listed.read().split()) == 2
        assert requests.get(f"{process.url}/", timeout=5).json()["server"] == "a"
