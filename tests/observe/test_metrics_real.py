"""lb.metrics with real parts: Prometheus' own linter (``promtool check metrics``) on the
exposition of pools driven through every state, a DNS source's answers and failures against
a real dnsmasq, and a real Prometheus server scraping a live pool and answering queries."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.observe import metrics

from ..support.gateway import GatewayProcess
from ..support.prometheus import Prometheus, promtool_check_metrics
from ..support.waiting import wait_for
from .test_metrics import Scrape, backend

A, B, C = "http://a:1", "http://b:1", "http://c:1"
WEB = "web.lb.test"


def every_state(clock) -> Balancer:
    """A pool whose backends are healthy, ejected, down, draining and in slow start (a
    return and a joiner), after requests (ok and failed), a retry and probes."""
    u = [f"http://10.0.0.{i}:8080" for i in range(6)]
    pool = Balancer(u[:5], timer=clock, health_check="/h", health_check_fall=1,
                    max_fails=2, fail_timeout=5.0, slow_start="30s")
    for i in range(40):
        pool.report(pool.pick(), True, 0.001 * (i + 1), bytes_sent=100, bytes_received=900)
    pool.report(backend(pool, u[0]), False)
    for url in u[:5]:
        pool.report_probe(url, True)
    pool.report(pool.pick(exclude=[backend(pool, u[0])]), True, 0.02)    # a retry
    for _ in range(2):
        pool.report(backend(pool, u[1]), False)      # ejected...
    clock.advance(6)                                 # ...and back: slow start
    for _ in range(2):
        pool.report(backend(pool, u[2]), False)      # ejected
    pool.report_probe(u[3], False, "status 503")     # down
    held = pool.pick(exclude=u[:4])                  # in flight at u[4]...
    assert held.url == u[4]
    pool.update([*u[:4], u[5]])                      # ...which leaves: draining
    pool.report_probe(u[5], True)                    # joined and up: slow start
    assert [row["state"] for row in pool.stats()] == [
        "healthy", "slow_start", "ejected", "down", "slow_start", "draining"]
    return pool


def test_promtool_passes_on_pools_in_every_state(clock):
    registry = CollectorRegistry()
    metrics.register(every_state(clock), registry, name="orders")
    panicking = Balancer([A, B], max_fails=1)
    for url in (A, B):
        panicking.report(backend(panicking, url), False)
    metrics.register(panicking, registry, name="payments")
    probation = Balancer([A, B], timer=clock, max_fails=1, fail_timeout=5.0)
    probation.report(backend(probation, A), False)
    clock.advance(6)
    metrics.register(probation, registry, name="search")
    refusing = Balancer([A], retry_budget=0, retry_budget_min_per_second=0)
    assert refusing.spend_retry() is False
    metrics.register(refusing, registry, name="billing")
    bounded = Balancer([A, B, C], policy="ip_hash", hash_balance_factor=100)
    held = [bounded.pick(key="k") for _ in range(2)]
    assert held[0] != held[1]
    metrics.register(bounded, registry, name="sessions")
    text = generate_latest(registry)
    result = Scrape(text)
    assert result.value("lbmiddleware_retry_budget_exhausted_total", pool="billing") == 1
    assert result.value("lbmiddleware_retry_budget_available_retries", pool="billing") == 0
    assert result.value("lbmiddleware_hash_overflow_total", pool="sessions") == 1
    assert result.value("lbmiddleware_panic", pool="payments") == 1
    assert result.state(A, pool="search") == "probation"
    assert result.value("lbmiddleware_retries_total", pool="orders") == 2   # picks with exclude
    checked = promtool_check_metrics(text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_promtool_passes_on_the_exposition_of_a_pool_with_a_source(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.1"])
    with lb.Balancer([f"dns+http://{WEB}:8080", A], dns_servers=dnsmasq.address) as pool:
        body, _ = metrics.exposition(pool)
    assert b"lbmiddleware_discovery_updates_total{" in body
    checked = promtool_check_metrics(body)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_discovery_updates_count_a_sources_answers_and_failures(dnsmasq):
    source = f"dns+http://{WEB}:8080"
    dnsmasq.set_addresses(WEB, ["127.0.0.1"])
    with lb.Balancer([source], dns_servers=dnsmasq.address, dns_min_refresh=0.05,
                     dns_max_refresh=0.2) as pool:

        def count(result: str) -> float:
            return Scrape(metrics.exposition(pool)[0]).value(
                "lbmiddleware_discovery_updates_total", pool="default", source=source,
                result=result)

        assert wait_for(lambda: count("success") >= 3, timeout=10)
        assert count("failure") == 0
        dnsmasq.stop()
        assert wait_for(lambda: count("failure") >= 2, timeout=10)
        answered = count("success")
        time.sleep(0.5)
        assert count("success") == answered          # no answer while the server is down


def poll(condition, timeout: float) -> bool:
    """``condition()`` until true, every quarter second (a query costs the server a little)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.25)
    return bool(condition())


@pytest.fixture
def prometheus(tmp_path):
    """Starts a real Prometheus scraping the given targets (``prometheus(["host:port"])``);
    stopped after the test, whatever happened."""
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus{len(started)}", targets)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.mark.prometheus
def test_prometheus_reads_the_gateways_requests_from_its_admin_port(prometheus, backends):
    environ = {"LB_BACKENDS": ",".join(b.url for b in backends), "LB_POLICY": "round_robin",
               "LB_ADMIN_LISTEN": "127.0.0.1:0"}
    with GatewayProcess(environ) as gateway:
        assert gateway.admin_port, gateway.banner
        server = prometheus([f"127.0.0.1:{gateway.admin_port}"])
        sent = 30
        for i in range(sent):
            with urllib.request.urlopen(f"{gateway.url}/item/{i}", timeout=10) as answer:
                assert answer.status == 200
        counts = {b.url: b.requests for b in backends}
        assert sum(counts.values()) == sent and min(counts.values()) > 0

        def scraped() -> dict[str, float]:
            rows = server.query('lbmiddleware_backend_requests_total{outcome="success"}')
            return {row["metric"]["backend"]: float(row["value"][1]) for row in rows}

        assert poll(lambda: scraped() == counts, timeout=30), (scraped(), counts,
                                                               server.targets())
        [failures] = server.query('sum(lbmiddleware_backend_requests_total{outcome="failure"})')
        assert float(failures["value"][1]) == 0
        [target] = server.targets()
        assert target["health"] == "up" and target["labels"]["instance"] == \
            f"127.0.0.1:{gateway.admin_port}"


@pytest.mark.prometheus
def test_prometheus_reads_refused_retries_and_the_bytes_through_the_gateway(prometheus,
                                                                             backends):
    """Every backend sheds load with 503 and the retry budget allows no retry: each request
    gets its first 503, a refusal is counted for each, and no backend is tried twice. The
    bytes are each attempt's bodies: the 300 sent and the 1,000 each backend answered."""
    for server in backends:
        server.status, server.body_size = 503, 1000
    environ = {"LB_BACKENDS": ",".join(b.url for b in backends), "LB_POLICY": "round_robin",
               "LB_ADMIN_LISTEN": "127.0.0.1:0", "LB_RETRY_BUDGET": "0",
               "LB_RETRY_BUDGET_MIN_PER_SECOND": "0", "LB_MAX_FAILS": "0"}
    sent = 30
    with GatewayProcess(environ) as gateway:
        server = prometheus([f"127.0.0.1:{gateway.admin_port}"])
        for i in range(sent):
            request = urllib.request.Request(f"{gateway.url}/item/{i}", data=b"u" * 300,
                                             method="PUT")
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=10)
            assert answer.value.code == 503 and len(answer.value.read()) == 1000
        assert [b.requests for b in backends] == [10, 10, 10]          # none tried twice

        def scraped(expression: str) -> dict[str, float]:
            return {row["metric"].get("backend", ""): float(row["value"][1])
                    for row in server.query(expression)}

        assert poll(lambda: scraped("lbmiddleware_retry_budget_exhausted_total") == {
            "": sent}, timeout=30), (scraped("lbmiddleware_retry_budget_exhausted_total"),
                                     server.targets())
        assert scraped("lbmiddleware_retry_budget_available_retries") == {"": 0}
        assert scraped("lbmiddleware_retries_total") == {"": 0}
        urls = {b.url for b in backends}
        assert scraped('lbmiddleware_backend_requests_total{outcome="failure"}') == dict.fromkeys(
            urls, 10)
        assert scraped("lbmiddleware_backend_sent_bytes_total") == dict.fromkeys(urls, 3000)
        assert scraped("lbmiddleware_backend_received_bytes_total") == dict.fromkeys(
            urls, 10000)
        with urllib.request.urlopen(f"{gateway.admin_url}/status.json", timeout=10) as answer:
            [pool] = json.load(answer)["pools"]
        assert pool["retry_budget"]["exhausted_total"] == sent
        assert (pool["retry_budget"]["ratio"], pool["retry_budget"]["min_per_second"]) == (0, 0)
