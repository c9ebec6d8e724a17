"""A rolling restart with nothing lost: three real backend processes
(tests/support/fleet_backend.py) restarted one after another while a bounded load of
keep-alive GETs and POSTs runs through the gateway (``python -m lbmiddleware serve``) and
through a requests Session with the LoadBalancingAdapter, both following the fleet from a
real registry:

* etcd: each backend registered by its own ``python -m lbmiddleware register ... --drain
  1s``; a restart is SIGTERM to the registration (it deletes the key, waits its drain and
  exits), SIGTERM to the backend (graceful: it finishes what it has and exits), start the
  backend on the same port, register it again, wait until it serves both clients again.
* DNS: a ``dns+http://`` source (``orders.lb.test``, the fixture's domain) served by a real
  dnsmasq (TTL 1 s), three backends on 127.0.0.2-4 with one port; a restart is: remove
  the backend's A record, wait until both pools left it (the adapter's stats no longer list
  it; the gateway sent it nothing for a while), stop and start the backend, add the
  record back, wait until it serves both clients again.

Every request carries a unique ``X-Request-Id``; the backends append each one they handled
to a log that survives their restarts. Nothing lost means: no client saw an error (every
response 200 from the backend, with its own id; no exception), every POST was handled
exactly once (no duplicate, none missing), every backend served both clients after its
restart, and none got a request after it had left both pools (its drain over: the pools
followed the registry, rather than a refused connection being retried). Backends take
20 ms per request, so some are always in flight when a pool leaves one. The load is
bounded in requests and in time, so a stuck pool fails the test instead of hanging it.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

import lbmiddleware as lb

from ..support.dnsmasq import DOMAIN
from ..support.etcd import EtcdServer
from ..support.fleet_backend import BackendProcess
from ..support.gateway import GatewayProcess
from ..support.ports import restartable_port

pytestmark = pytest.mark.timeout(90)

VHOST = "http://orders"
CLIENTS = ("gateway", "adapter")
THREADS = 2                 # load threads per client
LIMIT = 3000                # requests per thread, at most
PAUSE = 0.01                # seconds between two requests of a thread
LOAD_SECONDS = 60.0         # a thread stops after this, whatever happens
TIMEOUT = (2.0, 5.0)        # connect, read (seconds) for each request
WORK = 0.02                 # seconds a backend takes per request: some are always in flight


class Load:
    """``THREADS`` threads per client, each sending GET and POST in turn on one kept-alive
    session, until :meth:`stop` (at most ``LIMIT`` requests or ``LOAD_SECONDS``)."""

    def __init__(self, sessions: dict[str, Callable[[], tuple[requests.Session, str]]]) -> None:
        self.sessions = sessions
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.posts: list[str] = []          # ids of the POSTs answered 200 by their backend
        self.errors: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self._run, args=(client, n), daemon=True)
                        for client in sessions for n in range(THREADS)]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(TIMEOUT[0] + TIMEOUT[1] + 5)
        assert not any(thread.is_alive() for thread in self.threads), "a load thread hangs"

    def _run(self, client: str, number: int) -> None:
        session, base = self.sessions[client]()
        deadline = time.monotonic() + LOAD_SECONDS
        with session:
            for n in range(LIMIT):
                if self.stopping.is_set() or time.monotonic() > deadline:
                    return
                method = "POST" if n % 2 else "GET"
                request_id = f"{client}-{number}-{n}"
                self._one(session, base, client, method, request_id)
                time.sleep(PAUSE)

    def _one(self, session: requests.Session, base: str, client: str, method: str,
             request_id: str) -> None:
        try:
            response = session.request(
                method, f"{base}/orders", data=b"one order" if method == "POST" else None,
                headers={"X-Request-Id": request_id, "X-Client": client}, timeout=TIMEOUT)
            answer = response.text.split()
        except requests.RequestException as exc:
            error = f"{request_id}: {exc!r}"
        else:
            error = ("" if response.status_code == 200 and answer[1:] == [method, request_id]
                     else f"{request_id}: {response.status_code} {response.text[:200]!r}")
        with self.lock:
            self.counts[client] += 1
            if error:
                self.errors.append(error)
            elif method == "POST":
                self.posts.append(request_id)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def serves_both_clients(backend: BackendProcess, run: int) -> bool:
    return {line[2] for line in backend.lines(run)} >= set(CLIENTS)


def wait_for_traffic(backend: BackendProcess) -> None:
    """Until the backend's current run served a request of each client."""
    wait_until(lambda: serves_both_clients(backend, backend.runs - 1),
               f"{backend.name} serves the gateway and the adapter")


def check_nothing_lost(load: Load, backends: list[BackendProcess],
                       left: dict[str, float]) -> None:
    """No client error, every POST handled once, every backend served both clients after
    its restart, and none got a request after it had left the pools (at ``left[name]``,
    a ``time.time()``: its drain was over, just before it was stopped)."""
    assert load.errors == [], f"{len(load.errors)} client errors: {load.errors[:10]}"
    handled = collections.Counter(
        line[1] for backend in backends for line in backend.lines() if line[0] == "POST")
    twice = sorted(request_id for request_id, count in handled.items() if count > 1)
    assert twice == [], f"POSTs handled more than once: {twice[:10]}"
    assert set(handled) == set(load.posts), "POSTs answered but not handled, or the reverse"
    for backend in backends:
        assert backend.runs == 2
        assert serves_both_clients(backend, 1), f"{backend.name} idle after its restart"
        late = [line for line in backend.lines(0) if float(line[3]) > left[backend.name]]
        assert late == [], f"{backend.name} got requests after it had left the pools: {late}"
    assert all(load.counts[client] > 100 for client in CLIENTS), load.counts


@pytest.fixture
def fleet() -> Iterator[list[BackendProcess]]:
    """Makes room for three backends (named a, b, c) a test builds; stops them after."""
    made: list[BackendProcess] = []
    yield made
    for backend in made:
        with contextlib.suppress(RuntimeError):
            backend.stop()


@pytest.fixture
def gateway() -> Iterator[Callable[[dict[str, str]], GatewayProcess]]:
    """Starts ``python -m lbmiddleware serve`` with the LB_* settings given; stops it."""
    made: list[GatewayProcess] = []

    def start(environ: dict[str, str]) -> GatewayProcess:
        made.append(GatewayProcess(environ))
        return made[-1].start()

    yield start
    for process in made:
        process.stop()


def adapter_session(adapter: lb.LoadBalancingAdapter) -> Callable[[], tuple[requests.Session, str]]:
    def make() -> tuple[requests.Session, str]:
        session = requests.Session()
        session.mount(VHOST + "/", adapter)
        return session, VHOST
    return make


def gateway_session(process: GatewayProcess) -> Callable[[], tuple[requests.Session, str]]:
    return lambda: (requests.Session(), process.url)


# -- etcd ---------------------------------------------------------------------------------

PREFIX = "services/orders"


@pytest.fixture
def etcd(tmp_path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def registrations(tmp_path) -> Iterator[Callable[[str, str], subprocess.Popen[bytes]]]:
    """Starts ``python -m lbmiddleware register SOURCE URL --ttl 2s --drain 1s``; kills
    whatever is left of them after the test."""
    made: list[subprocess.Popen[bytes]] = []

    def register(source: str, url: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"register-{len(made)}.log", "wb")   # noqa: SIM115 (the child's)
        with log:
            made.append(subprocess.Popen(
                [sys.executable, "-m", "lbmiddleware", "register", source, url,
                 "--ttl", "2s", "--drain", "1s"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        return made[-1]

    yield register
    for process in made:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def deregister(registration: subprocess.Popen[bytes]) -> float:
    """SIGTERM the registration; it deletes its key, waits its drain and exits 0. Returns
    how long it took."""
    began = time.monotonic()
    registration.send_signal(signal.SIGTERM)
    assert registration.wait(10) == 0
    return time.monotonic() - began


def test_rolling_restart_behind_etcd(tmp_path, etcd, registrations, fleet, gateway):
    source = etcd.source(PREFIX)
    for name in "abc":
        backend = BackendProcess(name, "127.0.0.1", restartable_port(), tmp_path, delay=WORK)
        fleet.append(backend.start())
    registered = {b.name: registrations(source, b.url) for b in fleet}
    wait_until(lambda: len(etcd.get(PREFIX + "/")) == 3, "three backends registered")
    process = gateway({"LB_BACKENDS": source})
    adapter = lb.LoadBalancingAdapter([source])
    load = Load({"gateway": gateway_session(process), "adapter": adapter_session(adapter)})
    left: dict[str, float] = {}
    try:
        load.start()
        for backend in fleet:
            wait_for_traffic(backend)
        for backend in fleet:
            drained = deregister(registered[backend.name])
            left[backend.name] = time.time()
            assert 1.0 <= drained < 5.0
            backend.stop()
            backend.start()
            registered[backend.name] = registrations(source, backend.url)
            wait_for_traffic(backend)
        time.sleep(0.3)                 # the last one serves a little longer
    finally:
        load.stop()
        adapter.close()
    check_nothing_lost(load, fleet, left)


# -- DNS ----------------------------------------------------------------------------------

NAME = f"orders.{DOMAIN}"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
QUIET = 1.0                 # seconds without a request from the gateway: it left the backend


def quiet_for(backend: BackendProcess, client: str, seconds: float) -> bool:
    """Whether the backend's current run got no request of ``client`` for ``seconds``."""
    times = [float(line[3]) for line in backend.lines(backend.runs - 1) if line[2] == client]
    return not times or time.time() - max(times) >= seconds


def wait_until_left(backend: BackendProcess, pool: lb.Balancer) -> None:
    """Until the adapter's ``pool`` no longer lists ``backend`` (it left and its drain is
    over) and the gateway, whose pool cannot be seen from here, sent it nothing for
    ``QUIET`` seconds, at least a DNS refresh (TTL 1 s + 10%) after the change."""
    removed = time.monotonic()
    wait_until(lambda: all(row["url"].rstrip("/") != backend.url for row in pool.stats()),
               f"the adapter's pool leaves {backend.name}")
    wait_until(lambda: time.monotonic() - removed > 1.5 and quiet_for(backend, "gateway", QUIET),
               f"the gateway's pool leaves {backend.name}")


def test_rolling_restart_behind_dns(tmp_path, dnsmasq, fleet, gateway):
    port = restartable_port(HOSTS)
    for name, host in zip("abc", HOSTS, strict=True):
        fleet.append(BackendProcess(name, host, port, tmp_path, delay=WORK).start())
    dnsmasq.set_addresses(NAME, HOSTS)
    source = f"dns+http://{NAME}:{port}"
    process = gateway({"LB_BACKENDS": source, "LB_DNS_SERVERS": dnsmasq.address,
                       "LB_DNS_MIN_REFRESH": "200ms"})
    adapter = lb.LoadBalancingAdapter([source], dns_servers=dnsmasq.address,
                                      dns_min_refresh=0.2)
    load = Load({"gateway": gateway_session(process), "adapter": adapter_session(adapter)})
    left: dict[str, float] = {}
    try:
        load.start()
        for backend in fleet:
            wait_for_traffic(backend)
        for backend in fleet:
            dnsmasq.set_addresses(NAME, [b.host for b in fleet if b is not backend])
            wait_until_left(backend, adapter.balancer)
            left[backend.name] = time.time()
            backend.stop()
            backend.start()
            dnsmasq.set_addresses(NAME, HOSTS)
            wait_for_traffic(backend)
        time.sleep(0.3)
    finally:
        load.stop()
        adapter.close()
    check_nothing_lost(load, fleet, left)
