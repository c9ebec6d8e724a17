"""What the ASGI middleware's attempts leave where an operator looks, under a real server
against real loopback backends: the latency histogram (lb.metrics, the status page's chart)
and the failed-attempt lines of ``lbmiddleware.attempts``."""

from __future__ import annotations

import http.client

from prometheus_client.parser import text_string_to_metric_families

import lbmiddleware as lb
from lbmiddleware.observe import History
from lbmiddleware.observe.metrics import exposition

from ..support.asgi_server import ServerThread


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
