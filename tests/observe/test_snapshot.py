"""The status snapshot (status.json, schema 1) of pools in every state a person needs to see,
driven by a fake clock: ejected, down with its rise progress, draining, slow start, panic,
sources; what the page says of each; and how the pools argument is named and refused."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import pytest

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer as CoreBalancer
from lbmiddleware.discovery.status import SourceStatus
from lbmiddleware.observe import History, snapshot
from lbmiddleware.observe.page import render, state_text

from ..conftest import FakeClock

A, B, C = "http://a:1", "http://b:1", "http://c:1"
SOURCE = "dns+http://orders.test:8080"


def take(pool, clock=None):
    """The snapshot of ``pool`` with a History of its own (no sampling task)."""
    history = History(pool, timer=clock) if clock is not None else History(pool)
    return snapshot(pool, history=lambda _: history)


def rows(snap, pool=0):
    return {row["url"]: row for row in snap["pools"][pool]["backends"]}


def fail(pool, url, times):
    """``times`` failed attempts on ``url`` (refused: no response)."""
    for _ in range(times):
        backend = pool.pick(exclude=[b for b in pool.backends if b.url != url])
        pool.report(backend, ok=False)


def test_the_top_level_shape_and_every_stats_key_but_the_timer_readings():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock)
    pool.report(pool.pick(), latency=0.02, status=200, bytes_sent=3, bytes_received=7)
    snap = take(pool, clock)
    assert set(snap) == {"schema", "time", "ready", "pools"}
    assert snap["schema"] == 1 and snap["ready"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", snap["time"])
    [shown] = snap["pools"]
    assert shown["name"] == "default"
    assert set(pool.pool_stats()) | {"name", "hash_balance_factor", "sources",
                                     "backends"} == set(shown)
    assert shown["policy"] == "round_robin" and shown["members"] == shown["usable"] == 2
    assert shown["sources"] == []
    row = rows(snap)[A]
    stats = {r["url"]: r for r in pool.stats()}[A]
    assert set(row) == (set(stats) - {"ejected_until"}
                        | {"requests_per_second", "failures_per_second", "bytes_per_second",
                           "history"})
    assert (row["requests"], row["bytes_received"], row["latency"]) == (1, 7, 0.02)
    assert row["requests_per_second"] is None               # no interval sampled yet
    assert row["bytes_per_second"] is None
    assert row["history"] == {"interval": 5.0, "requests_per_second": [],
                              "failures_per_second": [], "latency_ms": [],
                              "bytes_per_second": []}
    json.dumps(snap, allow_nan=False)                       # plain JSON, nothing else


def test_the_retry_budget_as_it_stands_and_its_refusals_since_the_start():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, retry_budget=0.25, retry_budget_min_per_second=0.2,
                        retry_budget_ttl=5)
    for _ in range(8):                        # 8 new requests: 2 retries, and 1 of reserve
        pool.report(pool.pick(), latency=0.01, status=200)
    assert [pool.spend_retry() for _ in range(4)] == [True, True, True, False]
    budget = take(pool, clock)["pools"][0]["retry_budget"]
    assert budget == {"ratio": 0.25, "min_per_second": 0.2, "ttl": 5.0, "requests": 8,
                      "retries": 3, "available": 0.0, "exhausted_total": 1}
    clock.advance(5)                          # out of the window, but for the refusals
    budget = take(pool, clock)["pools"][0]["retry_budget"]
    assert (budget["requests"], budget["retries"], budget["available"],
            budget["exhausted_total"]) == (0, 0, 1.0, 1)
    assert take(CoreBalancer([A], retry_budget="off"))["pools"][0]["retry_budget"] is None
    json.dumps(take(pool, clock), allow_nan=False)


@pytest.mark.parametrize(("options", "factor"), [
    ({"policy": "ip_hash", "hash_balance_factor": 125}, 125),
    ({"policy": "ip_hash"}, 0),
    ({"policy": "least_conn", "hash_balance_factor": 125}, 0),     # (it does nothing there)
])
def test_the_bounded_load_factor_where_it_acts_and_its_overflows(options, factor):
    pool = CoreBalancer([A, B, C], **options)
    shown = take(pool)["pools"][0]
    assert (shown["hash_balance_factor"], shown["hash_overflows_total"]) == (factor, 0)


def test_an_overflow_is_counted_when_a_keys_home_is_full():
    pool = CoreBalancer([A, B, C], policy="ip_hash", hash_balance_factor=100)
    held = [pool.pick(key="198.51.100.23") for _ in range(2)]     # its home holds one only
    shown = take(pool)["pools"][0]
    assert shown["hash_overflows_total"] == 1
    assert {row["url"]: row["in_flight"] for row in shown["backends"]} == {
        url: sum(1 for b in held if b.url == url) for url in (A, B, C)}


def test_rates_and_charts_come_from_the_pools_history():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock)
    history = History(pool, timer=clock)
    history.sample(0.0)
    for _ in range(10):
        pool.report(pool.pick(exclude=[B]), latency=0.05, status=200, bytes_sent=100,
                    bytes_received=2400)
    pool.report(pool.pick(exclude=[A]), ok=False, latency=0.2, status=503)
    history.sample(5.0)
    snap = snapshot(pool, history=lambda _: history)
    a, b = rows(snap)[A], rows(snap)[B]
    assert (a["requests_per_second"], a["failures_per_second"]) == (2.0, 0.0)
    assert (b["requests_per_second"], b["failures_per_second"]) == (0.2, 0.2)
    assert (a["bytes_per_second"], b["bytes_per_second"]) == (5000.0, 0.0)
    assert a["history"] == {"interval": 5.0, "requests_per_second": [2.0],
                            "failures_per_second": [0.0], "latency_ms": [50.0],
                            "bytes_per_second": [5000.0]}
    assert b["history"]["failures_per_second"] == [0.2]
    assert b["history"]["latency_ms"] == [200.0]


def test_an_ejected_backend_shows_its_time_left_and_a_panic_its_age():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, max_fails=2, fail_timeout=30.0)
    fail(pool, A, 2)
    clock.advance(22.4)
    snap = take(pool, clock)
    a = rows(snap)[A]
    assert a["state"] == "ejected" and a["ejections"] == 1
    assert a["ejection_left"] == pytest.approx(7.6) and a["state_age"] == pytest.approx(22.4)
    assert "ejected_until" not in a
    assert state_text(a) == ("ejected 8s left", "bad")
    assert snap["ready"] is True and snap["pools"][0]["usable"] == 1
    fail(pool, B, 2)
    clock.advance(3)
    snap = take(pool, clock)
    shown = snap["pools"][0]
    assert shown["panic"] is True and shown["panic_age"] == pytest.approx(3.0)
    assert shown["usable"] == 0 and snap["ready"] is False
    page = render(snap)
    assert "panic for 3s" in page and "not ready" in page


def test_a_down_backend_shows_its_rise_progress_like_haproxy():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, health_check="/healthz")
    pool.report_probe(A, False, "status 503")       # a member at start: one failure, down
    clock.advance(4)
    snap = take(pool, clock)
    a = rows(snap)[A]
    check = a["health_check"]
    assert a["state"] == "down" and check["status"] == "down" and check["last"] == "status 503"
    assert check["checked_ago"] == pytest.approx(4.0) and "checked_at" not in check
    assert state_text(a) == ("DOWN", "bad")              # no pass yet
    pool.report_probe(A, True)
    a = rows(take(pool, clock))[A]
    assert state_text(a) == ("DOWN 1/2", "bad")
    pool.report_probe(A, True)
    a = rows(take(pool, clock))[A]
    assert a["state"] == "healthy" and state_text(a) == ("UP", "ok")
    pool.report_probe(A, False, "timed out after 2s")       # up, one of three failures
    a = rows(take(pool, clock))[A]
    assert state_text(a) == ("UP 1/3 failing", "warn")
    page = render(take(pool, clock))
    assert "timed out after 2s" in page and "UP 1/3 failing" in page


def test_a_joiner_waiting_for_its_first_check_says_so():
    clock = FakeClock()
    pool = CoreBalancer([A], timer=clock, health_check="/healthz")
    pool.update([A, B])
    b = rows(take(pool, clock))[B]
    assert b["state"] == "down" and state_text(b) == ("waiting for a first check", "idle")


def test_a_draining_backend_shows_the_time_left_of_its_drain():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, drain_timeout=30.0)
    pool.pick(exclude=[A])                  # B has a request in flight: it drains
    pool.drain(B)
    clock.advance(17.2)
    snap = take(pool, clock)
    b = rows(snap)[B]
    assert b["state"] == "draining" and b["drain_left"] == pytest.approx(12.8)
    assert b["in_flight"] == 1
    assert snap["pools"][0]["draining"] == 1 and snap["pools"][0]["members"] == 1
    assert state_text(b) == ("draining, 13s left", "drain")


def test_a_slow_start_shows_its_percentage_and_effective_weight():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, slow_start=30.0)
    pool.update([A, B, lb.Backend(C, weight=4)])
    clock.advance(10.5)
    snap = take(pool, clock)
    c = rows(snap)[C]
    assert c["state"] == "slow_start" and c["ramp"] == pytest.approx(0.35)
    assert c["effective_weight"] == pytest.approx(1.4) and c["weight"] == 4
    assert state_text(c) == ("slow start 35%", "info")
    assert snap["pools"][0]["slow_start"] == 30.0
    page = render(snap)
    assert "slow start 35%" in page and "of 4" in page      # the effective weight of 4


def test_probation_after_an_ejection_ends():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, max_fails=1, fail_timeout=10.0)
    fail(pool, A, 1)
    clock.advance(11)
    a = rows(take(pool, clock))[A]
    assert a["state"] == "probation" and state_text(a) == ("probation", "warn")


class StillWatcher:
    """A source's watcher that answers once and then only keeps its status: the test sets
    what it shows."""

    def __init__(self, source: str, *urls: str) -> None:
        self.source = lb.Source(source)
        self.status = SourceStatus(self.source.url, self.source.kind)
        self.urls = urls

    async def run(self, publish, emit) -> None:
        publish(tuple(lb.Backend(url, source=self.source.url) for url in self.urls))
        await asyncio.Event().wait()


def test_sources_show_ages_not_timer_readings_and_their_errors():
    watcher = StillWatcher(SOURCE, "http://127.0.0.2:8080", "http://127.0.0.3:8080")

    class Pool(lb.Balancer):
        def watcher(self, source):
            return watcher

    with Pool([A, SOURCE]) as pool:
        stats = pool.source_stats()[0]
        snap = take(pool)
        [source] = snap["pools"][0]["sources"]
        assert source["source"] == SOURCE and source["kind"] == "dns"
        assert not {"url", "last_success", "last_error_at", "next_refresh",
                    "failing_since"} & set(source)
        assert set(source) == (set(stats) - {"url", "last_success", "last_error_at",
                                              "next_refresh", "failing_since"} | {"source"})
        assert {"last_success_ago", "last_error", "last_error_ago", "next_refresh_in",
                "failing_for"} <= set(source)
        assert {r["source"] for r in snap["pools"][0]["backends"]} == {None, SOURCE}
        json.dumps(snap, allow_nan=False)


def test_pools_are_named_default_pool1_pool2_or_by_the_mapping():
    one, two = CoreBalancer([A]), CoreBalancer([B])
    assert [p["name"] for p in snapshot(one)["pools"]] == ["default"]
    assert [p["name"] for p in snapshot([one, two])["pools"]] == ["pool1", "pool2"]
    assert [p["name"] for p in snapshot(p for p in (two, one))["pools"]] == ["pool1", "pool2"]
    named = snapshot({"orders": one, "billing": two})
    assert [p["name"] for p in named["pools"]] == ["orders", "billing"]
    assert rows(named, 1)[B]["url"] == B


@pytest.mark.parametrize(("pools", "error", "message"), [
    ("http://a:1", TypeError, r"snapshot must be a Balancer, a list of Balancers or a mapping "
                              r"name -> Balancer, not 'http://a:1' \(str\)"),
    (42, TypeError, r"not 42 \(int\)"),
    ([CoreBalancer([A]), "http://b:1"], TypeError,
     r"snapshot\[1\] must be a Balancer, not 'http://b:1' \(str\)"),
    ({"orders": None}, TypeError, r"snapshot\['orders'\] must be a Balancer, not None"),
    ({"": CoreBalancer([A])}, lb.ConfigError, "a pool's name must be a non-empty string, not ''"),
    ([], lb.ConfigError, r"snapshot has value \[\]: no pool to show"),
])
def test_a_bad_pools_argument_is_refused_naming_it(pools, error, message):
    with pytest.raises(error, match=message):
        snapshot(pools)


def test_a_value_json_cannot_carry_becomes_null():
    clock = FakeClock()
    pool = CoreBalancer([A], timer=clock)
    pool.report(pool.pick(), ok=False, latency=float("inf"), status=503)
    snap = take(pool, clock)
    json.dumps(snap, allow_nan=False)
    assert rows(snap)[A]["latency_sum"] is None


# -- docs/status.md documents the schema field by field ------------------------------------

STATUS_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "status.md"


def documented(heading: str) -> set[str]:
    """The fields of the table under ``### heading`` in docs/status.md."""
    lines = STATUS_DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"### {heading}")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| field |"))
    fields = set()
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        fields.add(line.split("|")[1].strip().strip("`"))
    return fields


def test_docs_status_md_documents_every_field_and_no_other():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, health_check="/healthz")
    snap = take(pool, clock)
    [backend, _] = snap["pools"][0]["backends"]
    watcher = StillWatcher(SOURCE, "http://127.0.0.2:8080")

    class Pool(lb.Balancer):
        def watcher(self, source):
            return watcher

    with Pool([SOURCE]) as fleet_pool:
        [source] = take(fleet_pool)["pools"][0]["sources"]
    assert documented("Top level") == set(snap)
    assert documented("A pool") == set(snap["pools"][0])
    assert documented("A pool's retry_budget") == set(snap["pools"][0]["retry_budget"])
    assert documented("A source") == set(source)
    assert documented("A backend") == set(backend)
    assert documented("A backend's health_check") == set(backend["health_check"])
    assert documented("A backend's history") == set(backend["history"])
