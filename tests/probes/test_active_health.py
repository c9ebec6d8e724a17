"""Active health checks end to end: a real core Balancer, the Prober on a loop thread of its
own (as the fleet runs it), real loopback backends whose health a test switches, and client
requests sent for real (``pool.pick`` + an HTTP request + ``pool.report``).

Intervals of 50-400 ms keep each test well under two seconds of real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import itertools
import random
import threading
import time

from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import BackendDown, BackendUp
from lbmiddleware.probes import Prober

from ..support import waiting
from ..support.health_backend import HealthBackend

until = functools.partial(waiting.until, limit=5.0)


@contextlib.contextmanager
def probing(pool, seed=1):
    """Run a Prober for ``pool`` on a loop thread of its own; cancel it and join on exit."""
    prober = Prober(pool, pool.settings, rng=random.Random(seed))
    started = threading.Event()
    box = {}

    async def main():
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await prober.run()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="probes", daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield prober
    finally:
        box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join(5)
        assert not thread.is_alive()


class Transitions:
    """The pool's BackendDown/BackendUp events, each with ``snapshot()`` taken as it came."""

    def __init__(self, pool, snapshot=lambda: None):
        self.seen = []
        self._snapshot = snapshot
        pool.subscribe(self)

    def __call__(self, event):
        if isinstance(event, (BackendDown, BackendUp)):
            self.seen.append((type(event).__name__, event.backend.url, event.reason,
                              self._snapshot()))

    def of(self, url):
        return [entry for entry in self.seen if entry[1] == url]


class Client:
    """Real requests through the pool from a thread: pick, GET, report; until stopped."""

    def __init__(self, pool, timeout=1.0):
        self.pool = pool
        self.timeout = timeout
        self.answers: dict[str, int] = {}
        self.failures: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        for _ in range(100_000):                # bounded; stopped long before
            if self._stop.is_set():
                return
            backend = self.pool.pick()
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection(backend.host, backend.port,
                                                        timeout=self.timeout)
                try:
                    connection.request("GET", "/work")
                    body = connection.getresponse().read()
                finally:
                    connection.close()
            except OSError as exc:
                self.pool.report(backend, ok=False)
                self.failures.append((backend.url, repr(exc)))
            else:
                self.pool.report(backend, ok=True, latency=time.monotonic() - started)
                name = body.decode()
                self.answers[name] = self.answers.get(name, 0) + 1
            time.sleep(0.002)


def statuses(server, status):
    return sum(1 for probe in server.probes_of() if probe.status == status)


def test_a_failing_healthz_leaves_rotation_after_fall_probes_and_returns_after_rise():
    with HealthBackend("a") as a, HealthBackend("b") as b:
        pool = Balancer([a.url, b.url], policy="round_robin", health_check="/healthz",
                        health_check_interval=0.05, health_check_timeout=0.5,
                        health_check_rise=2, health_check_fall=3)
        seen = Transitions(pool, lambda: (statuses(a, 503), statuses(a, 200)))
        with probing(pool):
            until(lambda: statuses(a, 200) >= 2, what="two passes")      # fully up
            a.health[""] = 503
            until(lambda: seen.of(a.url), what="a down")
            assert {pool.pick().url for _ in range(10)} == {b.url}        # out of rotation
            passes_before = statuses(a, 200)
            a.health[""] = 200
            until(lambda: len(seen.of(a.url)) == 2, what="a up")
            picked = [pool.pick().url for _ in range(10)]
    (down_kind, _, down_reason, (fails, _)), (up_kind, _, up_reason, (_, passes)) = seen.of(a.url)
    assert (down_kind, down_reason, fails) == ("BackendDown", "status 503", 3)     # fall
    assert (up_kind, up_reason, passes - passes_before) == ("BackendUp", "status 200", 2)  # rise
    assert set(picked) == {a.url, b.url}                                  # back in rotation
    assert seen.of(b.url) == []


def test_a_backend_that_joins_and_never_answers_gets_no_client_request():
    with HealthBackend("good") as good, HealthBackend("silent", host="127.0.0.2") as silent:
        silent.hang_all, silent.health[""] = True, "hang"
        pool = Balancer([good.url], health_check="/healthz", health_check_interval=0.05,
                        health_check_timeout=0.2, health_check_rise=2, health_check_fall=2)
        seen = Transitions(pool)
        with probing(pool), Client(pool) as client:
            until(lambda: sum(client.answers.values()) >= 10, what="traffic")
            pool.update([good.url, silent.url])             # joins later: pending
            until(lambda: len(silent.probes_of()) >= 3, what="three probe timeouts")
            row = next(row for row in pool.stats() if row["url"] == silent.url)
    assert client.failures == []
    assert silent.requests == 0                             # only probes reached it
    assert client.answers["good"] >= 10
    assert all(probe.status is None for probe in silent.probes_of())      # none answered
    assert [entry[:3] for entry in seen.of(silent.url)] == [
        ("BackendDown", silent.url, "timeout after 200ms")]
    assert row["health_check"]["status"] == "down"
    assert row["health_check"]["last"] == "timeout after 200ms"


def test_a_member_that_never_answers_is_taken_down_by_its_first_timeout_and_kept_out():
    with HealthBackend("good") as good, HealthBackend("silent", host="127.0.0.2") as silent:
        silent.hang_all, silent.health[""] = True, "hang"
        pool = Balancer([good.url, silent.url], health_check="/healthz",
                        health_check_interval=0.05, health_check_timeout=0.2,
                        health_check_rise=2, health_check_fall=3)
        seen = Transitions(pool)
        with probing(pool):
            # A member at start is up with h = rise: its first failed probe takes it down.
            until(lambda: seen.of(silent.url), what="silent down")
            assert len(silent.probes_of()) == 1
            with Client(pool) as client:
                until(lambda: len(silent.probes_of()) >= 4 and sum(client.answers.values()) >= 20,
                      what="more probes and traffic")
    assert client.failures == [] and silent.requests == 0
    assert [entry[0] for entry in seen.of(silent.url)] == ["BackendDown"]


def test_first_probes_are_spread_over_the_interval_on_the_server_side():
    servers = [HealthBackend(f"s{k}", host=f"127.0.0.{k + 2}") for k in range(8)]
    try:
        pool = Balancer([server.url for server in servers], health_check="/healthz",
                        health_check_interval=0.6, health_check_timeout=0.3)
        started = time.monotonic()
        with probing(pool):
            until(lambda: all(len(server.probes_of()) >= 1 for server in servers))
        first = [server.probes_of()[0].arrived for server in servers]
    finally:
        for server in servers:
            server.stop()
    # The k-th of 8 at k * 0.6 / 8 = 75 ms after the first (late by up to 0.1 s on a busy
    # machine; 25 ms early for a server thread that stamps its arrival late).
    assert first[0] - started < 0.2
    for k, at in enumerate(first):
        assert k * 0.075 - 0.025 <= at - first[0] <= k * 0.075 + 0.1, (k, at - first[0])


def test_probes_of_one_backend_never_overlap_and_wait_an_interval_after_the_last():
    servers = [HealthBackend(f"s{k}", host=f"127.0.0.{k + 2}") for k in range(3)]
    for server in servers:
        server.health_delay = 0.1           # each answer takes longer than the interval
    try:
        pool = Balancer([server.url for server in servers], health_check="/healthz",
                        health_check_interval=0.05, health_check_timeout=1.0)
        with probing(pool):
            until(lambda: all(len(server.probes_of()) >= 5 for server in servers))
        probes = [server.probes_of() for server in servers]
    finally:
        for server in servers:
            server.stop()
    for server, seen in zip(servers, probes, strict=True):
        assert server.most_at_once == 1
        ended = [probe for probe in seen if probe.ended is not None]
        for before, after in itertools.pairwise(ended):
            gap = after.arrived - before.ended      # this one arrived, after that one ended
            assert 0.035 <= gap <= 0.055 + 0.05, gap


def test_many_backends_on_a_few_servers_are_all_probed_and_the_failing_ones_go_down():
    servers = [HealthBackend(f"s{k}", host=f"127.0.0.{k + 2}") for k in range(4)]
    bases = [f"/b{j}" for j in range(50)]
    failing = {(0, "/b3"), (1, "/b10"), (2, "/b0"), (3, "/b49"), (3, "/b25")}
    for k, base in failing:
        servers[k].health[base] = 503
    urls = {server.url + base: (k, base) for k, server in enumerate(servers) for base in bases}
    try:
        pool = Balancer(list(urls), health_check="healthz", health_check_interval=0.3,
                        health_check_timeout=1.0, health_check_fall=1)
        seen = Transitions(pool)
        with probing(pool):
            until(lambda: all(len(servers[k].probes_of(base)) >= 3
                              for k, base in urls.values()), limit=10)
            up = {pool.pick().url for _ in range(2000)}
        firsts = sorted(servers[k].probes_of(base)[0].arrived for k, base in urls.values())
    finally:
        for server in servers:
            server.stop()
    assert {urls[url] for _, url, _, _ in seen.seen} == failing
    assert {entry[0] for entry in seen.seen} == {"BackendDown"}
    assert up == {url for url, where in urls.items() if where not in failing}
    assert all(server.most_at_once == 1 for server in servers)
    # The first round of 200 spread over the interval, not opened at once.
    assert firsts[-1] - firsts[0] >= 0.25
