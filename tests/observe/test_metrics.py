"""lb.metrics: SEMANTICS part four's metrics read from a pool's live state, checked by parsing
the exposition with prometheus_client's own parser after driving a core Balancer on a fake
clock through requests, ejections, probes, drain, slow start, retries and panic."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import textwrap

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.load import LATENCY_BUCKETS
from lbmiddleware.observe import metrics

A, B, C = "http://a:1", "http://b:1", "http://c:1"

PER_BACKEND = {
    "lbmiddleware_backend_requests": "counter",
    "lbmiddleware_backend_request_duration_seconds": "histogram",
    "lbmiddleware_backend_in_flight_requests": "gauge",
    "lbmiddleware_backend_up": "gauge",
    "lbmiddleware_backend_state": "gauge",
    "lbmiddleware_backend_weight": "gauge",
    "lbmiddleware_backend_ejections": "counter",
    "lbmiddleware_backend_health_checks": "counter",
    "lbmiddleware_backend_sent_bytes": "counter",
    "lbmiddleware_backend_received_bytes": "counter",
}
POOL_WIDE = {
    "lbmiddleware_retries": "counter",
    "lbmiddleware_panic": "gauge",
    "lbmiddleware_discovery_updates": "counter",
    "lbmiddleware_retry_budget_exhausted": "counter",
    "lbmiddleware_retry_budget_available_retries": "gauge",
    "lbmiddleware_hash_overflow": "counter",
}


class Scrape:
    """One exposition parsed: sample values by name and labels."""

    def __init__(self, text: bytes) -> None:
        self.text = text.decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{self.text}"
        return found[0]

    def backends(self, name: str) -> set[str]:
        return {s.labels["backend"] for s in self.samples if s.name == name}

    def state(self, url: str, pool: str = "default") -> str:
        """The state whose series is 1 (checking that exactly one is)."""
        values = {s.labels["state"]: s.value for s in self.samples
                  if s.name == "lbmiddleware_backend_state" and s.labels["backend"] == url
                  and s.labels["pool"] == pool}
        assert sorted(values) == sorted(metrics.STATES)
        (now,) = [state for state, value in values.items() if value == 1]
        assert sum(values.values()) == 1
        return now


def scrape(pools) -> Scrape:
    body, content_type = metrics.exposition(pools)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(body)


def backend(pool: Balancer, url: str) -> lb.Backend:
    (found,) = [b for b in pool.backends if b.url == url]
    return found


class TestNamesAndLabels:
    def test_every_metric_of_semantics_part_four_with_its_type(self):
        pool = Balancer([A], health_check="/h")
        families = scrape(pool).families
        assert {name: f.type for name, f in families.items()} == {**PER_BACKEND, **POOL_WIDE}

    def test_pool_on_every_series_backend_on_each_backends(self, clock):
        pool = Balancer([A, B], timer=clock, health_check="/h")
        pool.report(pool.pick(), True, 0.01)
        result = scrape(pool)
        for sample in result.samples:
            assert sample.labels["pool"] == "default"
            family = sample.name.removesuffix("_total").removesuffix("_bucket") \
                .removesuffix("_sum").removesuffix("_count")
            assert ("backend" in sample.labels) == (family in PER_BACKEND), sample
        assert result.backends("lbmiddleware_backend_up") == {A, B}

    def test_labels_never_carry_request_data(self, clock):
        pool = Balancer([A, B], policy="ip_hash", timer=clock)
        for client in ("203.0.113.7", "198.51.100.23"):
            pool.report(pool.pick(key=client), True, 0.01)
            pool.report(pool.pick(key=client, exclude=[pool.lookup(client)]), False)
        result = scrape(pool)
        names = {name for s in result.samples for name in s.labels}
        assert names == {"pool", "backend", "outcome", "state", "le"}
        assert "203.0.113.7" not in result.text and "198.51.100" not in result.text


class TestPerBackend:
    def test_requests_by_outcome_and_in_flight(self, clock):
        pool = Balancer([A, B], policy="round_robin", timer=clock)
        a, b = pool.pick(), pool.pick()
        assert (a.url, b.url) == (A, B)
        pool.report(a, True, 0.01)
        pool.report(pool.pick(), False, 0.02)      # A again: a failure
        pool.report(pool.pick(), True)             # B: success without a latency
        result = scrape(pool)
        value = result.value
        assert value("lbmiddleware_backend_requests_total", pool="default", backend=A,
                     outcome="success") == 1
        assert value("lbmiddleware_backend_requests_total", pool="default", backend=A,
                     outcome="failure") == 1
        assert value("lbmiddleware_backend_requests_total", pool="default", backend=B,
                     outcome="success") == 1
        assert value("lbmiddleware_backend_in_flight_requests", pool="default", backend=A) == 0
        assert value("lbmiddleware_backend_in_flight_requests", pool="default", backend=B) == 1

    def test_the_duration_histogram_has_the_cores_buckets(self, clock):
        pool = Balancer([A], timer=clock)
        for latency, ok, status in ((0.003, True, 200), (0.2, True, 200), (0.05, False, 503),
                                    (30.0, True, 200)):
            pool.report(pool.pick(), ok, latency, status=status)
        pool.report(pool.pick(), False)           # no response head: not in the histogram
        pool.report(pool.pick(), False, 0.0004)   # refused: no head either, however fast
        result = scrape(pool)
        buckets = {s.labels["le"]: s.value for s in result.samples
                   if s.name == "lbmiddleware_backend_request_duration_seconds_bucket"}
        assert list(buckets) == [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        assert [buckets[le] for le in ("0.0025", "0.005", "0.05", "0.1", "0.25", "10.0",
                                       "+Inf")] == [0, 1, 2, 2, 3, 3, 4]
        labels = {"pool": "default", "backend": A}
        assert result.value("lbmiddleware_backend_request_duration_seconds_count",
                            **labels) == 4
        assert result.value("lbmiddleware_backend_request_duration_seconds_sum",
                            **labels) == pytest.approx(30.253)

    def test_bytes_sent_and_received(self, clock):
        pool = Balancer([A], timer=clock)
        pool.report(pool.pick(), True, 0.01, bytes_sent=120, bytes_received=4000)
        pool.report(pool.pick(), False, None, bytes_sent=80, bytes_received=0)
        result = scrape(pool)
        labels = {"pool": "default", "backend": A}
        assert result.value("lbmiddleware_backend_sent_bytes_total", **labels) == 200
        assert result.value("lbmiddleware_backend_received_bytes_total", **labels) == 4000

    def test_the_bandwidth_policy_weighs_the_bytes_these_counters_show(self, clock):
        # The bandwidth policy is told sent + received of each attempt as it is reported:
        # the same numbers, at the same moment, as these counters add up.
        pool = Balancer([A, B], policy="bandwidth", timer=clock, rng=random.Random(3))
        told: dict[str, int] = {A: 0, B: 0}
        transferred = pool._policy.transferred

        def counting(state, nbytes, now=None):
            told[state.backend.url] += nbytes
            transferred(state, nbytes, now)

        pool._policy.transferred = counting
        for size in (100, 5000, 70, 0, 12000, 300):
            backend = pool.pick()
            pool.report(backend, True, 0.01, bytes_sent=size // 10, bytes_received=size)
        result = scrape(pool)
        for url in (A, B):
            labels = {"pool": "default", "backend": url}
            total = (result.value("lbmiddleware_backend_sent_bytes_total", **labels)
                     + result.value("lbmiddleware_backend_received_bytes_total", **labels))
            assert total == told[url]
        assert sum(told.values()) == sum(size + size // 10 for size in
                                         (100, 5000, 70, 0, 12000, 300))

    def test_an_ejection_its_return_on_probation_and_the_way_back(self, clock):
        pool = Balancer([A, B], policy="round_robin", timer=clock, max_fails=1,
                        fail_timeout=10.0)
        pool.report(backend(pool, A), False)
        result = scrape(pool)
        labels = {"pool": "default", "backend": A}
        assert result.state(A) == "ejected" and result.state(B) == "healthy"
        assert result.value("lbmiddleware_backend_up", **labels) == 0
        assert result.value("lbmiddleware_backend_ejections_total", **labels) == 1
        clock.advance(10.5)
        result = scrape(pool)
        assert result.state(A) == "probation"
        assert result.value("lbmiddleware_backend_up", **labels) == 1
        assert result.value("lbmiddleware_backend_ejections_total", **labels) == 1

    def test_active_checks_down_and_up_with_their_counts(self, clock):
        pool = Balancer([A, B], timer=clock, health_check="/h", health_check_rise=2,
                        health_check_fall=1)
        pool.report_probe(A, False, "status 503")
        result = scrape(pool)
        labels = {"pool": "default", "backend": A}
        assert result.state(A) == "down"
        assert result.value("lbmiddleware_backend_up", **labels) == 0
        assert result.value("lbmiddleware_backend_health_checks_total", result="fail",
                            **labels) == 1
        pool.report_probe(A, True)
        pool.report_probe(A, True)
        pool.report_probe(B, True)
        result = scrape(pool)
        assert result.state(A) == "healthy"
        assert result.value("lbmiddleware_backend_health_checks_total", result="pass",
                            **labels) == 2
        assert result.value("lbmiddleware_backend_health_checks_total", result="fail",
                            **labels) == 1
        assert result.value("lbmiddleware_backend_health_checks_total", result="pass",
                            pool="default", backend=B) == 1

    def test_no_health_check_series_while_checks_are_off(self):
        result = scrape(Balancer([A]))
        assert result.backends("lbmiddleware_backend_health_checks_total") == set()

    def test_a_draining_backend_and_its_departure(self, clock):
        pool = Balancer([A, B], policy="round_robin", timer=clock)
        held = pool.pick()
        assert held.url == A
        pool.update([B])                  # A leaves with a request in flight: it drains
        result = scrape(pool)
        assert result.state(A) == "draining"
        assert result.value("lbmiddleware_backend_up", pool="default", backend=A) == 0
        assert result.value("lbmiddleware_backend_in_flight_requests", pool="default",
                            backend=A) == 1
        pool.report(held, True, 0.01)     # its last request ends: it has left
        result = scrape(pool)
        for name in ("lbmiddleware_backend_requests_total", "lbmiddleware_backend_up",
                     "lbmiddleware_backend_request_duration_seconds_bucket"):
            assert result.backends(name) == {B}

    def test_a_draining_backends_failure_is_a_failure_not_a_success(self, clock):
        pool = Balancer([A, B], policy="round_robin", timer=clock)
        held = [pool.pick() for _ in range(6)]       # A, B, A, B, A, B
        pool.drain(A)                                # held[4] keeps it draining
        pool.report(held[0], False)                  # refused while draining
        pool.report(held[2], False, 0.05, status=503)
        pool.report(held[1], False)                  # B, a member: the same count
        result = scrape(pool)
        for url, state in ((A, "draining"), (B, "healthy")):
            assert result.state(url) == state
            labels = {"pool": "default", "backend": url}
            assert result.value("lbmiddleware_backend_requests_total", outcome="failure",
                                **labels) == (2 if url == A else 1)
            assert result.value("lbmiddleware_backend_requests_total", outcome="success",
                                **labels) == 0

    def test_slow_start_shows_its_state_and_effective_weight(self, clock):
        pool = Balancer([A], timer=clock, slow_start="10s")
        pool.update([A, lb.Backend(B, weight=2)])
        result = scrape(pool)
        labels = {"pool": "default", "backend": B}
        assert result.state(B) == "slow_start" and result.state(A) == "healthy"
        assert result.value("lbmiddleware_backend_up", **labels) == 1
        assert result.value("lbmiddleware_backend_weight", **labels) == pytest.approx(0.2)
        clock.advance(5)
        assert scrape(pool).value("lbmiddleware_backend_weight", **labels) == pytest.approx(1.0)
        clock.advance(6)
        result = scrape(pool)
        assert result.state(B) == "healthy"
        assert result.value("lbmiddleware_backend_weight", **labels) == 2


class TestPoolWide:
    def test_retries_count_picks_that_exclude(self):
        pool = Balancer([A, B], rng=random.Random(1))
        first = pool.pick()
        pool.report(first, False)
        pool.report(pool.pick(exclude=[first]), True, 0.01)
        pool.report(pool.pick(), True, 0.01)
        assert scrape(pool).value("lbmiddleware_retries_total", pool="default") == 1

    def test_panic_while_nothing_is_usable(self, clock):
        pool = Balancer([A, B], timer=clock, max_fails=1, fail_timeout=10.0)
        assert scrape(pool).value("lbmiddleware_panic", pool="default") == 0
        pool.report(backend(pool, A), False)
        pool.report(backend(pool, B), False)         # none left: panic
        assert scrape(pool).value("lbmiddleware_panic", pool="default") == 1
        assert {scrape(pool).state(url) for url in (A, B)} == {"ejected"}
        pool.report(pool.pick(), True, 0.01)         # an answer ends the outage
        assert scrape(pool).value("lbmiddleware_panic", pool="default") == 0

    def test_the_retry_budget_counts_refused_retries_and_shows_what_is_left(self, clock):
        pool = Balancer([A, B], timer=clock, retry_budget=0.5,
                        retry_budget_min_per_second=0.1, retry_budget_ttl=10)
        labels = {"pool": "default"}
        result = scrape(pool)
        assert result.value("lbmiddleware_retry_budget_available_retries", **labels) == 1.0
        assert result.value("lbmiddleware_retry_budget_exhausted_total", **labels) == 0
        for _ in range(4):                    # four new requests: two retries more
            pool.report(pool.pick(), False)
        assert scrape(pool).value("lbmiddleware_retry_budget_available_retries",
                                  **labels) == 3.0
        assert [pool.spend_retry() for _ in range(4)] == [True, True, True, False]
        result = scrape(pool)
        assert result.value("lbmiddleware_retry_budget_available_retries", **labels) == 0
        assert result.value("lbmiddleware_retry_budget_exhausted_total", **labels) == 1
        clock.advance(10)                     # the window has passed: the reserve is back
        result = scrape(pool)
        assert result.value("lbmiddleware_retry_budget_available_retries", **labels) == 1.0
        assert result.value("lbmiddleware_retry_budget_exhausted_total", **labels) == 1

    def test_no_retry_budget_series_while_the_budget_is_off(self):
        pool = Balancer([A], retry_budget="off")
        assert pool.spend_retry() is True
        result = scrape(pool)
        assert [s for s in result.samples if s.name.startswith("lbmiddleware_retry_budget")
                ] == []
        assert result.value("lbmiddleware_retries_total", pool="default") == 0

    def test_hash_overflow_counts_picks_that_left_their_keys_full_home(self, clock):
        pool = Balancer([A, B, C], policy="ip_hash", hash_balance_factor=100, timer=clock)
        overflow = {"pool": "default"}
        assert scrape(pool).value("lbmiddleware_hash_overflow_total", **overflow) == 0
        home = pool.pick(key="203.0.113.7")
        # one request in flight of three backends' fair share: a second one is one too many
        moved = pool.pick(key="203.0.113.7")
        assert moved != home
        assert scrape(pool).value("lbmiddleware_hash_overflow_total", **overflow) == 1
        pool.report(home, True, 0.01)
        pool.report(moved, True, 0.01)
        again = pool.pick(key="203.0.113.7")     # its home has room again: it never moves
        assert again == home
        result = scrape(pool)
        assert result.value("lbmiddleware_hash_overflow_total", **overflow) == 1
        assert "203.0.113.7" not in result.text

    @pytest.mark.parametrize("options", [{"policy": "ip_hash"},
                                         {"policy": "round_robin", "hash_balance_factor": 125}])
    def test_no_hash_overflow_series_without_bounded_load(self, options):
        result = scrape(Balancer([A, B], **options))
        assert [s for s in result.samples if s.name == "lbmiddleware_hash_overflow_total"] == []

    def test_a_core_pool_has_no_discovery_series(self):
        result = scrape(Balancer([A]))
        assert [s for s in result.samples
                if s.name == "lbmiddleware_discovery_updates_total"] == []


class TestRegister:
    def test_register_exposes_the_pool_in_the_registry(self, clock):
        registry = CollectorRegistry()
        pool = Balancer([A], timer=clock)
        collector = metrics.register(pool, registry)
        pool.report(pool.pick(), True, 0.01)
        result = Scrape(generate_latest(registry))
        assert result.value("lbmiddleware_backend_requests_total", pool="default", backend=A,
                            outcome="success") == 1
        assert collector.name == "default" and collector.pool is pool

    def test_the_default_registry_by_default(self):
        from prometheus_client import REGISTRY
        pool = Balancer([A])
        collector = metrics.register(pool, name="test-default-registry")
        try:
            result = Scrape(generate_latest(REGISTRY))
            assert result.backends("lbmiddleware_backend_up") >= {A}
        finally:
            collector.unregister()

    def test_several_pools_in_one_registry_by_name(self):
        registry = CollectorRegistry()
        orders, payments = Balancer([A, B]), Balancer([A, C])
        metrics.register(orders, registry, name="orders")
        metrics.register(payments, registry, name="payments")
        payments.report(payments.pick(), False)
        result = Scrape(generate_latest(registry))
        ups = {(s.labels["pool"], s.labels["backend"]) for s in result.samples
               if s.name == "lbmiddleware_backend_up"}
        assert ups == {("orders", A), ("orders", B), ("payments", A), ("payments", C)}
        assert result.value("lbmiddleware_panic", pool="orders") == 0
        failures = sum(result.value("lbmiddleware_backend_requests_total", pool="payments",
                                    backend=url, outcome="failure") for url in (A, C))
        assert failures == 1
        # one TYPE line per family, whatever the number of pools
        assert result.text.count("# TYPE lbmiddleware_backend_up gauge") == 1

    def test_a_second_pool_with_the_same_name_is_refused(self):
        registry = CollectorRegistry()
        metrics.register(Balancer([A]), registry, name="orders")
        kept = Balancer([A])
        metrics.register(kept, registry)          # "default": another name
        with pytest.raises(lb.ConfigError, match="'orders' is already registered"):
            metrics.register(Balancer([B]), registry, name="orders")
        with pytest.raises(lb.ConfigError, match="'default' is already registered"):
            metrics.register(kept, registry)
        metrics.register(Balancer([B]), CollectorRegistry(), name="orders")   # another registry

    def test_unregister_frees_the_name_and_removes_the_series(self):
        registry = CollectorRegistry()
        collector = metrics.register(Balancer([A]), registry, name="orders")
        collector.unregister()
        collector.unregister()                                  # idempotent
        assert "lbmiddleware_backend_up{" not in generate_latest(registry).decode()
        metrics.register(Balancer([B]), registry, name="orders")
        assert Scrape(generate_latest(registry)).backends("lbmiddleware_backend_up") == {B}

    def test_the_pool_is_held_weakly(self):
        registry = CollectorRegistry()
        gone = metrics.register(Balancer([A]), registry, name="orders")
        gc.collect()
        assert gone.pool is None
        assert "lbmiddleware_backend_up{" not in generate_latest(registry).decode()
        pool = Balancer([B])
        metrics.register(pool, registry, name="orders")           # the name is free again
        gone.unregister()                                         # not the new pool's place
        assert Scrape(generate_latest(registry)).backends("lbmiddleware_backend_up") == {B}

    def test_a_bad_pool_or_name_is_refused_naming_it(self):
        with pytest.raises(TypeError, match="takes an lb.Balancer, got 'http://a:1'"):
            metrics.register(A, CollectorRegistry())
        with pytest.raises(lb.ConfigError, match="name has value ''"):
            metrics.register(Balancer([A]), CollectorRegistry(), name="")

    def test_the_collector_alone_yields_its_pool(self):
        registry = CollectorRegistry()
        metrics.register(Balancer([A]), registry, name="orders")
        pool = Balancer([B])
        collector = metrics.register(pool, registry, name="payments")
        ups = [(s.labels["pool"], s.labels["backend"]) for family in collector.collect()
               for s in family.samples if s.name == "lbmiddleware_backend_up"]
        assert ups == [("payments", B)]

    def test_a_registry_collector_that_clashes_is_refused_by_the_registry(self):
        from prometheus_client import Gauge
        registry = CollectorRegistry()
        Gauge("lbmiddleware_panic", "mine", registry=registry)
        with pytest.raises(ValueError, match="lbmiddleware_panic"):
            metrics.register(Balancer([A]), registry)


class TestExposition:
    def test_one_pool_is_named_default(self):
        assert scrape(Balancer([A])).value("lbmiddleware_panic", pool="default") == 0

    def test_a_list_is_named_pool1_pool2_and_a_mapping_by_its_keys(self):
        listed = scrape([Balancer([A]), Balancer([B])])
        assert {(s.labels["pool"], s.labels["backend"]) for s in listed.samples
                if s.name == "lbmiddleware_backend_up"} == {("pool1", A), ("pool2", B)}
        mapped = scrape({"orders": Balancer([A]), "payments": Balancer([B])})
        assert mapped.value("lbmiddleware_backend_up", pool="payments", backend=B) == 1

    def test_it_reads_the_pools_as_they_are_now(self, clock):
        pool = Balancer([A], timer=clock)
        before = scrape(pool)
        pool.report(pool.pick(), True, 0.01)
        after = scrape(pool)
        labels = {"pool": "default", "backend": A, "outcome": "success"}
        assert before.value("lbmiddleware_backend_requests_total", **labels) == 0
        assert after.value("lbmiddleware_backend_requests_total", **labels) == 1


def test_lb_metrics_is_the_module():
    assert lb.metrics is metrics


def test_without_prometheus_client_the_module_loads_and_register_names_the_extra():
    script = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None          # as if not installed
        import lbmiddleware as lb
        from lbmiddleware.core.balancer import Balancer
        lb.metrics
        for call in (lambda: lb.metrics.register(Balancer(["http://a:1"])),
                     lambda: lb.metrics.exposition(Balancer(["http://a:1"]))):
            try:
                call()
            except ModuleNotFoundError as exc:
                print(exc.name, "|", exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    register_line, exposition_line = run.stdout.splitlines()
    assert register_line == (
        "prometheus_client | lb.metrics.register() needs prometheus_client, which is not "
        "installed: pip install 'lbmiddleware[metrics]'")
    assert exposition_line.endswith("pip install 'lbmiddleware[metrics]'")
