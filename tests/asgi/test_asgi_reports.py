"""What the ASGI middleware's attempts leave where an operator looks, under a real server
against real loopback backends: the latency histogram (lb.metrics, the status page's chart)
and the failed-attempt lines of ``lbmiddleware.attempts``."""

from __future__ import annotations

import http.client
import logging

from prometheus_client.parser import text_string_to_metric_families

import lbmiddleware as lb
from lbmiddleware.observe import History
from lbmiddleware.observe.metrics import exposition

from ..support.asgi_server import ServerThread
from ..support.waiting import wait_for


def get(port: int) -> int:
    """GET /x through the middleware on ``port``; the status (the body read whole)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/x")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def duration_buckets(pool: lb.Balancer, url: str) -> dict[str, float]:
    """``url``'s lbmiddleware_backend_request_duration_seconds buckets, by ``le``."""
    body, _ = exposition(pool)
    return {sample.labels["le"]: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "lbmiddleware_backend_request_duration_seconds_bucket"
            and sample.labels["backend"] == url}


def test_a_backend_that_refuses_connections_does_not_look_fast(servers):
    """B answers in about 50 ms, then dies: its refused attempts (a fraction of a millisecond
    each, every one retried on A) have no response head, so neither the histogram nor the
    chart's mean latency takes them; B never looks like the fastest backend of the pool."""
    a, b = servers("a"), servers("b")
    b.delay = 0.05
    pool = lb.Balancer([a.url, b.url], policy="round_robin", max_fails=0)
    history = History(pool)
    with ServerThread(lb.LoadBalancerMiddleware(balancer=pool, retries=2)) as server:
        assert [get(server.port) for _ in range(4)] == [200] * 4
        # the last answer's attempt ends just after its last byte went out: in this interval
        assert wait_for(lambda: not any(r["in_flight"] for r in pool.stats()))
        history.sample(1.0)
        b.stop()
        assert [get(server.port) for _ in range(20)] == [200] * 20
        history.sample(6.0)
    pool.close()
    row = next(r for r in pool.stats() if r["url"] == b.url)
    assert row["failures"] >= 10 and row["latency"] >= 0.05
    buckets = duration_buckets(pool, b.url)
    assert buckets["0.025"] == 0, f"B never answered under 50 ms: {buckets}"
    assert buckets["+Inf"] == row["latency_count"] == 2
    assert history.of(b.url).latency_ms[-1] is None         # no answer in that interval


def test_a_body_that_breaks_off_is_a_failed_attempt_line_not_a_library_warning(servers, caplog):
    """A backend that sends its head and half its body, then closes: a failure of the backend
    (counted, with the bytes that came) that no retry can follow, logged as every failed
    attempt is, one INFO line on lbmiddleware.attempts; not a WARNING per request on the
    package's logger, shown by default in any application that logs warnings."""
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    backend = servers("a")
    backend.behaviour = "truncate"
    backend.body_size = 100_000
    pool = lb.Balancer([backend.url], max_fails=0)      # no ejection: its lines are due
    with ServerThread(lb.LoadBalancerMiddleware(balancer=pool)) as server:
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("GET", "/x")
            response = connection.getresponse()
            try:
                response.read()
            except http.client.IncompleteRead:
                pass
            connection.close()
    pool.close()
    (row,) = pool.stats()
    assert (row["requests"], row["failures"], row["in_flight"]) == (3, 3, 0)
    assert row["bytes_received"] == 3 * 50_000
    assert row["latency_count"] == 3                    # each had its head: timed
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("lbmiddleware") and r.levelno >= logging.WARNING]
    assert warnings == []
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "lbmiddleware.attempts"]
    assert lines == [(logging.INFO, f"GET attempt 1 on {backend.url} failed: the response "
                      "body broke off after 50000 bytes (the backend closed the connection); "
                      "not retried: its response had begun to reach the client")] * 3
