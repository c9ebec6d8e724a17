"""Shared fixtures (a fake clock, loopback backends: three, or started by name; scripted raw
backends, a certificate, a private CA's PKI and https backends (tests/support/tls.py), a DNS
server, the access log captured) and the core/integration split.

``pytest -m core`` runs the fast standard-library tests alone, in seconds: every module
under tests/core/ and the modules listed in ``CORE_FILES`` (sans-I/O parts outside the core:
the proxy rules, the parser, discovery's back-off and watcher, the status snapshot and page on
a fake clock; the layering test). No server, no gateway process, no sleeping (a few quick
interpreter starts: the hash seed, the import of the package). Every other test module (real
loopback servers, gateway processes, the quick quality benchmark) is marked ``integration``;
CI runs both. A new module under tests/core/ is core; elsewhere it is integration unless
listed here.
"""

from __future__ import annotations

import logging
import pathlib
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from .support.dnsmasq import Dnsmasq, running_dnsmasq
from .support.raw_backends import RawBackend, ScriptedBackend
from .support.servers import BackendServer
from .support.tls import https_backend, mutual_backend, other_pki, pki  # noqa: F401 (fixtures)

TESTS = pathlib.Path(__file__).resolve().parent
CORE_FOLDER = TESTS / "core"
# Core test modules outside tests/core/ (paths relative to tests/).
CORE_FILES = frozenset({"proxy/test_proxy_rules.py", "proxy/test_sticky_cookie.py",
                        "proxy/test_redirects.py",
                        "upstream/test_parser.py", "test_layering.py",
                        "discovery/test_backoff.py", "discovery/test_watcher.py",
                        "observe/test_snapshot.py", "observe/test_page.py"})
# The DNS name on the test certificate beside 127.0.0.1 (the ``certificate`` fixture).
CERTIFICATE_NAME = "backend.lbmiddleware.test"
# Core modules' tests that take more than a second or two.
SLOW_CORE_TESTS = frozenset({"test_quick_benchmark_meets_every_target_but_the_known_misses"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "core: standard-library core tests; no I/O, seconds in all")
    config.addinivalue_line("markers", "needs(applies, what): a contract test that applies "
                            "only to front-ends for which applies(front_end_class, params) holds")
    config.addinivalue_line("markers", "integration: real servers, processes or long runs")
    config.addinivalue_line("markers", "prometheus: runs a real Prometheus server (integration)")
    config.addinivalue_line("markers", "browser: runs headless Chromium (integration)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _deselect_what_does_not_apply(config, items)
    for item in items:
        core = is_core(item.path, item.originalname)
        item.add_marker(pytest.mark.core if core else pytest.mark.integration)


def is_core(module: pathlib.Path, test: str) -> bool:
    """True when the test function ``test`` of ``module`` belongs to the core run."""
    path = module.resolve()
    return ((CORE_FOLDER in path.parents or path.relative_to(TESTS).as_posix() in CORE_FILES)
            and test not in SLOW_CORE_TESTS)


def _deselect_what_does_not_apply(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the contract tests marked ``needs`` (tests/contract/proxy_contract.py) whose
    front-end cannot do what they need: they do not apply there, so they are not run (and
    not reported as skipped, which would read as a missing feature)."""
    kept, dropped = [], []
    for item in items:
        mark = item.get_closest_marker("needs")
        front_end = getattr(item.cls, "front_end_class", None)
        params = getattr(getattr(item, "callspec", None), "params", {})
        applies = mark is None or front_end is None or mark.args[0](front_end, params)
        (kept if applies else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class FakeClock:
    """A timer to inject as ``timer=``; tests move it with ``advance``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the access log (INFO on ``lbmiddleware.access``, which is off by
    default); ``tests.proxy.test_access.access_records`` reads its lines back."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.access")
    return caplog


@pytest.fixture
def dnsmasq(tmp_path: pathlib.Path) -> Iterator[Dnsmasq]:
    """A real DNS server for ``lb.test`` on a loopback port (TTL 1 s), whose records the test
    sets (tests/support/dnsmasq.py); stopped after the test."""
    with running_dnsmasq(tmp_path / "dnsmasq") as server:
        yield server


@pytest.fixture
def backends():
    """Three running loopback backends named a, b, c (stopped after the test)."""
    servers = [BackendServer(name).start() for name in "abc"]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def servers():
    """Starts loopback backends by name (``servers("a")``; ``port=`` one of
    tests/support/ports.py for a backend the test restarts); stops them after the test."""
    started: list[BackendServer] = []

    def start(name: str, port: int = 0) -> BackendServer:
        started.append(BackendServer(name, port).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def raw_backend():
    """Makes :class:`RawBackend` s (``raw_backend(*answers, tls=None)``); stops them after."""
    made: list[RawBackend] = []

    def make(*answers: list, tls: ssl.SSLContext | None = None) -> RawBackend:
        made.append(RawBackend(*answers, tls=tls))
        return made[-1]

    yield make
    for backend in made:
        backend.stop()


@pytest.fixture
def scripted():
    """Makes :class:`ScriptedBackend` s (``scripted(*scripts)``); stops them after."""
    made: list[ScriptedBackend] = []

    def make(*scripts: list) -> ScriptedBackend:
        made.append(ScriptedBackend(*scripts))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and the name :data:`CERTIFICATE_NAME` (a
    backend reached by address whose server name is on the certificate), made with the
    openssl command: ``(cert.pem, key.pem)``."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1",
                    "-addext", f"subjectAltName=IP:127.0.0.1,DNS:{CERTIFICATE_NAME}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    return cert, key
