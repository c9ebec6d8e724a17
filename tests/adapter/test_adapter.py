"""LoadBalancingAdapter against real loopback backends (tests/support/servers.py).

Every backend answers with JSON naming itself, so a test sees which one served a call
and what reached it. In-flight counts are checked after every kind of ending.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import random
import threading
from collections import Counter

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

import lbmiddleware as lb
from lbmiddleware.adapter import AdapterSettings, LoadBalancingAdapter, NoHealthyBackendError

from ..support.servers import refused_url

VHOST = "http://svc"
SHORT = (1.0, 0.3)          # connect, read: a hanging backend costs 0.3 s


def mounted(adapter: LoadBalancingAdapter) -> requests.Session:
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    return session


def served_by(response: requests.Response) -> str:
    return response.json()["server"]


def in_flight(pool: lb.Balancer) -> list[int]:
    return [row["in_flight"] for row in pool.stats()]


def stat(pool: lb.Balancer, url: str) -> dict:
    return next(row for row in pool.stats() if row["url"] == url)


# -- spreading ------------------------------------------------------------------------------

def test_round_robin_spreads_exactly(backends):
    adapter = LoadBalancingAdapter([s.url for s in backends])
    session = mounted(adapter)
    counts = Counter(served_by(session.get(f"{VHOST}/x")) for _ in range(30))
    assert counts == {"a": 10, "b": 10, "c": 10}
    assert in_flight(adapter.balancer) == [0, 0, 0]
    assert [row["requests"] for row in adapter.balancer.stats()] == [10, 10, 10]


def test_weights_are_honoured(backends):
    a, b, c = backends
    adapter = LoadBalancingAdapter(
        [lb.Backend(a.url, 5), lb.Backend(b.url, 3), lb.Backend(c.url, 2)])
    session = mounted(adapter)
    order = [served_by(session.get(f"{VHOST}/")) for _ in range(10)]
    assert order == list("abcaabacba")


@pytest.mark.parametrize("policy", ["random", "least_conn", "ip_hash"])
def test_other_policies_serve_every_call(backends, policy):
    pool = lb.Balancer([s.url for s in backends], policy=policy, rng=random.Random(3))
    session = mounted(LoadBalancingAdapter(balancer=pool))
    counts = Counter(served_by(session.get(f"{VHOST}/")) for _ in range(30))
    assert sum(counts.values()) == 30
    assert set(counts) == {"a", "b", "c"}
    if policy != "random":  # sequential calls: least_conn ties and keyless ip_hash go round-robin
        assert counts == {"a": 10, "b": 10, "c": 10}
    assert in_flight(pool) == [0, 0, 0]


def test_latency_policy_avoids_the_slow_backend(backends):
    a, b, c = backends
    b.delay = 0.02
    pool = lb.Balancer([s.url for s in backends], policy="latency", rng=random.Random(5))
    session = mounted(LoadBalancingAdapter(balancer=pool))
    counts = Counter(served_by(session.get(f"{VHOST}/")) for _ in range(40))
    assert counts["b"] <= 3
    assert counts["a"] + counts["c"] >= 37
    assert stat(pool, b.url)["latency"] >= 0.015     # time to head was measured


# -- the request as it reaches the backend ----------------------------------------------------

def test_method_path_query_body_headers_cookies_and_auth_are_preserved(backends):
    a = backends[0]
    session = mounted(LoadBalancingAdapter([a.url]))
    response = session.post(f"{VHOST}/api/items", params={"page": 2, "q": "a b"},
                            json={"n": 1}, headers={"X-Custom": "yes"},
                            cookies={"sid": "s1"}, auth=("user", "pw"))
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/api/items?page=2&q=a+b"
    assert echo["body"] == '{"n": 1}'
    assert echo["headers"]["X-Custom"] == "yes"
    assert echo["headers"]["Cookie"] == "sid=s1"
    assert echo["headers"]["Authorization"].startswith("Basic ")
    assert echo["headers"]["Content-Type"] == "application/json"
    assert echo["headers"]["Host"] == f"127.0.0.1:{a.port}"
    assert response.url == f"{VHOST}/api/items?page=2&q=a+b"
    assert response.request.url == response.url


def test_backend_base_path_is_prefixed(backends):
    a = backends[0]
    session = mounted(LoadBalancingAdapter([a.url + "/v1/"]))
    assert session.get(f"{VHOST}/api/items?x=1").json()["path"] == "/v1/api/items?x=1"
    assert session.get(VHOST).json()["path"] == "/v1/"


def test_preserve_host_sends_the_virtual_host(backends):
    a = backends[0]
    session = requests.Session()
    session.mount("http://svc:8080/", LoadBalancingAdapter([a.url], preserve_host=True))
    assert session.get("http://svc:8080/x").json()["headers"]["Host"] == "svc:8080"
    explicit = session.get("http://svc:8080/x", headers={"Host": "other"})
    assert explicit.json()["headers"]["Host"] == "other"


def test_cookies_and_redirects_stay_on_the_virtual_host(backends):
    a, b, _ = backends
    for server in (a, b):
        server.extra_headers = [("Set-Cookie", "sid=abc; Path=/")]
        server.redirects = {"/old": "/new"}
    session = mounted(LoadBalancingAdapter([a.url, b.url]))
    first = session.get(f"{VHOST}/old")
    assert first.history[0].status_code == 302
    assert first.url == f"{VHOST}/new"
    assert first.json()["path"] == "/new"
    assert [c.domain for c in session.cookies] == ["svc.local"]
    assert session.get(f"{VHOST}/again").json()["headers"]["Cookie"] == "sid=abc"
    # every call went through the adapter: the redirect was followed on the pool
    assert a.requests + b.requests == 3


# -- failures and retries ---------------------------------------------------------------------

def test_refused_backend_gives_no_errors_and_is_ejected(backends):
    a, _, c = backends
    dead = refused_url()
    adapter = LoadBalancingAdapter([a.url, dead, c.url], max_fails=3)
    session = mounted(adapter)
    counts = Counter(served_by(session.get(f"{VHOST}/")) for _ in range(30))
    assert sum(counts.values()) == 30
    row = stat(adapter.balancer, dead)
    assert row["state"] == "ejected"
    assert row["failures"] == 3
    assert in_flight(adapter.balancer) == [0, 0, 0]


def test_connect_failure_is_retried_for_post_too(backends):
    a = backends[0]
    dead = refused_url()
    session = mounted(LoadBalancingAdapter([dead, a.url]))
    response = session.post(f"{VHOST}/orders", data=b"one order")
    assert served_by(response) == "a"
    assert a.received[0][3] == b"one order"


def test_every_backend_refusing_raises_connection_error_naming_them():
    dead = [refused_url(), refused_url()]
    adapter = LoadBalancingAdapter(dead)
    session = mounted(adapter)
    with pytest.raises(requests.ConnectionError) as info:
        session.get(f"{VHOST}/")
    assert all(url in str(info.value) for url in dead)
    assert info.value.request.url == f"{VHOST}/"
    assert [row["failures"] for row in adapter.balancer.stats()] == [1, 1]
    assert in_flight(adapter.balancer) == [0, 0]


def test_errors_keep_the_arguments_requests_gives_them(backends):
    a = backends[0]
    dead = refused_url()
    with pytest.raises(requests.ConnectionError) as info:
        mounted(LoadBalancingAdapter([dead])).get(f"{VHOST}/")
    refused = info.value
    assert isinstance(refused.args[0], MaxRetryError)                # as requests raises it
    assert isinstance(refused.args[0].reason, NewConnectionError)
    assert refused.backends_tried == (dead,)

    a.behaviour = "hang"
    with pytest.raises(requests.ReadTimeout) as info:
        mounted(LoadBalancingAdapter([a.url], retries=0)).get(f"{VHOST}/", timeout=SHORT)
    timeout = info.value
    assert type(timeout.args[0]) is ReadTimeoutError and len(timeout.args) == 1
    assert "Read timed out" in timeout.args[0].args[0]              # requests' test_stream_timeout
    assert a.url in str(timeout) and timeout.backends_tried == (a.url,)
    assert timeout.request.url == f"{VHOST}/" and timeout.response is None
    copy = pickle.loads(pickle.dumps(timeout))
    assert isinstance(copy, requests.ReadTimeout) and type(copy.args[0]) is ReadTimeoutError
    assert copy.backends_tried == (a.url,) and str(copy).endswith(f"(backends tried: {a.url})")


def test_hanging_backend_get_is_retried_post_is_not(backends):
    a, b, _ = backends
    a.behaviour = "hang"
    adapter = LoadBalancingAdapter([a.url, b.url])
    response = mounted(adapter).get(f"{VHOST}/", timeout=SHORT)
    assert served_by(response) == "b"
    assert stat(adapter.balancer, a.url)["failures"] == 1

    adapter = LoadBalancingAdapter([a.url, b.url])
    with pytest.raises(requests.ReadTimeout) as info:
        mounted(adapter).post(f"{VHOST}/", data=b"x", timeout=SHORT)
    assert a.url in str(info.value) and b.url not in str(info.value)
    assert [m for m, *_ in b.received] == ["GET"]
    assert in_flight(adapter.balancer) == [0, 0]


def test_settings_timeouts_apply_when_the_call_gives_none(backends):
    a, b, _ = backends
    a.behaviour = "hang"
    adapter = LoadBalancingAdapter([a.url], read_timeout=0.3, retries=0)
    with pytest.raises(requests.ReadTimeout):
        mounted(adapter).get(f"{VHOST}/")
    adapter = LoadBalancingAdapter([a.url, b.url], read_timeout=0.3, retries=0)
    with pytest.raises(requests.ReadTimeout):                  # retries=0: no second try
        mounted(adapter).get(f"{VHOST}/")
    assert b.requests == 0


def test_retry_non_idempotent_opts_in(backends):
    a, b, _ = backends
    a.behaviour = "hang"
    adapter = LoadBalancingAdapter([a.url, b.url], retry_non_idempotent=True)
    response = mounted(adapter).post(f"{VHOST}/", data=b"x", timeout=SHORT)
    assert served_by(response) == "b"


def test_fail_status_is_retried_for_get(backends):
    a, b, _ = backends
    a.status = 503
    adapter = LoadBalancingAdapter([a.url, b.url])
    session = mounted(adapter)
    response = session.get(f"{VHOST}/")
    assert (response.status_code, served_by(response)) == (200, "b")
    assert stat(adapter.balancer, a.url)["failures"] == 1
    # the 503's connection was read and kept: the next call to a reuses it
    adapter.balancer.update([a.url])
    assert session.get(f"{VHOST}/").status_code == 503
    assert a.connections == 1


@pytest.mark.parametrize("stream", [False, True])
def test_all_fail_statuses_return_the_last_response(backends, stream):
    for server in backends:
        server.status = 503
    adapter = LoadBalancingAdapter([s.url for s in backends], retries=2)
    response = mounted(adapter).get(f"{VHOST}/", stream=stream)
    assert response.status_code == 503
    assert served_by(response) == "c"
    assert [s.requests for s in backends] == [1, 1, 1]
    response.close()
    assert in_flight(adapter.balancer) == [0, 0, 0]
    assert [row["failures"] for row in adapter.balancer.stats()] == [1, 1, 1]


def test_retries_are_bounded(backends):
    for server in backends:
        server.status = 502
    adapter = LoadBalancingAdapter([s.url for s in backends], retries=1)
    assert mounted(adapter).get(f"{VHOST}/").status_code == 502
    assert [s.requests for s in backends] == [1, 1, 0]


def test_fail_status_on_post_is_returned_without_retry(backends):
    a, b, _ = backends
    a.status = 503
    response = mounted(LoadBalancingAdapter([a.url, b.url])).post(f"{VHOST}/", data=b"x")
    assert (response.status_code, served_by(response)) == (503, "a")
    assert b.requests == 0


def test_seekable_body_is_replayed_generator_body_is_not(backends):
    a, b, _ = backends
    a.status = 503
    session = mounted(LoadBalancingAdapter([a.url, b.url]))
    body = io.BytesIO(b"skip:payload")
    body.seek(5)
    response = session.put(f"{VHOST}/doc", data=body, timeout=SHORT)
    assert served_by(response) == "b"
    assert b.received[-1][3] == b"payload"

    session = mounted(LoadBalancingAdapter([a.url, b.url]))
    response = session.put(f"{VHOST}/doc", data=iter([b"pay", b"load"]), timeout=SHORT)
    assert (response.status_code, served_by(response)) == (503, "a")
    assert a.received[-1][3] == b"payload"
    assert b.requests == 1


def test_connection_closed_before_the_head(backends):
    a, b, _ = backends
    a.behaviour = "close"
    assert served_by(mounted(LoadBalancingAdapter([a.url, b.url])).get(f"{VHOST}/")) == "b"
    adapter = LoadBalancingAdapter([a.url, b.url])
    with pytest.raises(requests.ConnectionError) as info:
        mounted(adapter).post(f"{VHOST}/", data=b"x")
    assert a.url in str(info.value)
    assert b.requests == 1
    assert in_flight(adapter.balancer) == [0, 0]


def test_connection_closed_mid_body(backends):
    a, b, _ = backends
    a.behaviour = "truncate"
    adapter = LoadBalancingAdapter([a.url, b.url])
    assert served_by(mounted(adapter).get(f"{VHOST}/")) == "b"  # the caller saw nothing: retried
    assert stat(adapter.balancer, a.url)["failures"] == 1

    adapter = LoadBalancingAdapter([a.url, b.url])
    response = mounted(adapter).get(f"{VHOST}/", stream=True)       # bytes reached the caller
    assert response.status_code == 200
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        response.content
    assert in_flight(adapter.balancer) == [0, 0]


def test_a_body_that_stops_coming_fails_as_the_requests_step_it_stands_for(backends):
    """A read timeout after the head: read whole (stream=False) it is a ConnectionError, as
    requests' Response.content gives it, the body encoded or not; read by the prefetch,
    inside send, it is a ReadTimeout, as send gives one (the WSGI proxy answers 504)."""
    a = backends[0]
    a.behaviour, a.body_size = "stall", 1          # the head, then nothing
    for encoding in ([], [("Content-Encoding", "identity")]):
        a.extra_headers = encoding
        adapter = LoadBalancingAdapter([a.url], retries=0)
        with pytest.raises(requests.ConnectionError) as info:
            mounted(adapter).get(f"{VHOST}/", timeout=SHORT)
        assert not isinstance(info.value, requests.Timeout)
        assert type(info.value.args[0]) is ReadTimeoutError
        assert in_flight(adapter.balancer) == [0]
    adapter = LoadBalancingAdapter([a.url], retries=0)
    adapter.prefetch = 1024
    with pytest.raises(requests.ReadTimeout):
        mounted(adapter).get(f"{VHOST}/", timeout=SHORT, stream=True)
    assert in_flight(adapter.balancer) == [0]


def test_a_body_that_fails_to_decode_is_not_the_backends_fault(backends):
    a, b, _ = backends
    for server in (a, b):
        server.extra_headers = [("Content-Encoding", "gzip")]      # a JSON body: not gzip
    adapter = LoadBalancingAdapter([a.url, b.url])
    with pytest.raises(requests.exceptions.ContentDecodingError):  # as plain requests raises
        mounted(adapter).get(f"{VHOST}/")
    assert (a.requests, b.requests) == (1, 0)                      # not replayed
    assert [row["failures"] for row in adapter.balancer.stats()] == [0, 0]
    assert in_flight(adapter.balancer) == [0, 0]


def test_user_max_retries_work_beneath(backends):
    a, b, _ = backends
    a.status = 500                                   # not a fail status for the balancer
    retry = Retry(total=1, status_forcelist=[500], backoff_factor=0, raise_on_status=False)
    session = mounted(LoadBalancingAdapter([a.url], max_retries=retry))
    assert session.get(f"{VHOST}/").status_code == 500
    assert a.requests == 2                           # urllib3 retried on the same backend

    retry = Retry(total=1, status_forcelist=[500], backoff_factor=0)   # exhausted: RetryError
    adapter = LoadBalancingAdapter([a.url, b.url], max_retries=retry)
    assert served_by(mounted(adapter).get(f"{VHOST}/")) == "b"
    assert a.requests == 4
    assert stat(adapter.balancer, a.url)["failures"] == 1


def test_empty_pool_raises_no_healthy_backend_as_a_requests_error(backends):
    pool = lb.Balancer([backends[0].url])
    pool.update([])
    session = mounted(LoadBalancingAdapter(balancer=pool))
    with pytest.raises(requests.RequestException) as info:
        session.get(f"{VHOST}/")
    assert isinstance(info.value, NoHealthyBackendError)
    assert isinstance(info.value, lb.NoHealthyBackend)
    assert isinstance(info.value, requests.ConnectionError)
    assert info.value.request.url == f"{VHOST}/"


# -- in flight never leaks -------------------------------------------------------------------

@pytest.fixture
def big(backends):
    backends[0].body_size = 1_000_000
    return backends[0]


def test_stream_counts_in_flight_until_closed(big):
    adapter = LoadBalancingAdapter([big.url])
    session = mounted(adapter)
    response = session.get(f"{VHOST}/", stream=True)
    next(response.iter_content(4096))
    assert in_flight(adapter.balancer) == [1]
    assert adapter.balancer.stats()[0]["requests"] == 0
    response.close()
    response.close()
    assert in_flight(adapter.balancer) == [0]
    assert adapter.balancer.stats()[0]["requests"] == 1

    with session.get(f"{VHOST}/", stream=True) as response:
        next(response.iter_content(4096))
        assert in_flight(adapter.balancer) == [1]
    assert in_flight(adapter.balancer) == [0]


def test_stream_read_to_the_end_ends_the_attempt(big):
    adapter = LoadBalancingAdapter([big.url])
    session = mounted(adapter)
    response = session.get(f"{VHOST}/", stream=True)
    assert sum(len(chunk) for chunk in response.iter_content(65536)) == 1_000_000
    assert in_flight(adapter.balancer) == [0]
    session.get(f"{VHOST}/")
    assert big.connections == 1                      # the connection went back to the pool
    assert adapter.balancer.stats()[0]["requests"] == 2


def test_abandoned_stream_ends_when_collected(big):
    adapter = LoadBalancingAdapter([big.url])
    response = mounted(adapter).get(f"{VHOST}/", stream=True)
    assert in_flight(adapter.balancer) == [1]
    del response
    gc.collect()
    assert in_flight(adapter.balancer) == [0]


def test_exception_from_the_callers_body_releases_without_a_failure(backends):
    def body():
        yield b"part"
        raise RuntimeError("the caller's generator broke")

    adapter = LoadBalancingAdapter([backends[0].url])
    with pytest.raises(RuntimeError):
        mounted(adapter).post(f"{VHOST}/", data=body())
    row = adapter.balancer.stats()[0]
    assert (row["in_flight"], row["failures"], row["requests"]) == (0, 0, 0)


def test_exception_from_key_func_picks_nothing(backends):
    def key_func(request):
        raise LookupError("no key")

    adapter = LoadBalancingAdapter([backends[0].url], policy="ip_hash", key_func=key_func)
    with pytest.raises(LookupError):
        mounted(adapter).get(f"{VHOST}/")
    assert in_flight(adapter.balancer) == [0]


# -- stickiness ------------------------------------------------------------------------------

def test_ip_hash_by_header_sticks_and_moves_only_the_dead_backends_keys(backends, clock):
    a, b, c = backends
    pool = lb.Balancer([s.url for s in backends], policy="ip_hash",
                       max_fails=1, fail_timeout=10.0, timer=clock)
    session = mounted(LoadBalancingAdapter(balancer=pool, hash_key="header:X-User-Id"))

    def owners() -> dict[str, str]:
        return {f"user-{i}": served_by(session.get(f"{VHOST}/", headers={"X-User-Id": f"user-{i}"}))
                for i in range(30)}

    before = owners()
    assert set(before.values()) == {"a", "b", "c"}
    assert owners() == before
    b.stop()
    during = owners()                                # no errors: b's keys were retried
    assert "b" not in during.values()
    assert {k: v for k, v in during.items() if before[k] != "b"} == \
           {k: v for k, v in before.items() if v != "b"}
    assert stat(pool, b.url)["state"] == "ejected"
    b.start()
    clock.advance(10.5)
    assert owners() == before                        # b's keys came back
    assert in_flight(pool) == [0, 0, 0]


def test_ip_hash_by_cookie_and_by_key_func(backends):
    pool = lb.Balancer([s.url for s in backends], policy="ip_hash")
    session = mounted(LoadBalancingAdapter(balancer=pool, hash_key="cookie:sid"))
    for sid in ("s1", "s2", "s3", "s4"):
        seen = {served_by(session.get(f"{VHOST}/", cookies={"other": "x", "sid": sid}))
                for _ in range(4)}
        assert len(seen) == 1

    adapter = LoadBalancingAdapter([s.url for s in backends], policy="ip_hash",
                                   key_func=lambda request: request.path_url.split("/")[2])
    session = mounted(adapter)
    for tenant in ("t1", "t2", "t3", "t4"):
        seen = {served_by(session.get(f"{VHOST}/tenants/{tenant}/{i}")) for i in range(4)}
        assert len(seen) == 1


# -- pools and threads -----------------------------------------------------------------------

def test_one_pool_per_backend_even_with_pool_connections_1(backends):
    a, b, c = backends
    adapter = LoadBalancingAdapter([a.url, b.url], pool_connections=1)
    session = mounted(adapter)
    for _ in range(20):
        session.get(f"{VHOST}/")
    adapter.balancer.update([a.url, b.url, c.url])  # grows at runtime
    for _ in range(30):
        session.get(f"{VHOST}/")
    assert [s.connections for s in backends] == [1, 1, 1]
    assert [s.requests for s in backends] == [20, 20, 10]


def test_sixteen_threads_exact_totals(backends):
    adapter = LoadBalancingAdapter([s.url for s in backends], pool_maxsize=16)
    session = mounted(adapter)
    start = threading.Barrier(16)
    errors: list[BaseException] = []
    served: list[str] = []

    def work() -> None:
        try:
            start.wait(timeout=5)
            for _ in range(30):
                served.append(served_by(session.get(f"{VHOST}/", timeout=5)))
        except BaseException as exc:      # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert Counter(served) == {"a": 160, "b": 160, "c": 160}
    assert [s.requests for s in backends] == [160, 160, 160]
    assert [row["requests"] for row in adapter.balancer.stats()] == [160, 160, 160]
    assert in_flight(adapter.balancer) == [0, 0, 0]
    assert all(s.connections <= 16 for s in backends)


# -- configuration ---------------------------------------------------------------------------

def test_from_env(backends):
    a, b, _ = backends
    adapter = LoadBalancingAdapter.from_env(
        {"LB_BACKENDS": f"{a.url} weight=2, {b.url}", "LB_POLICY": "least_conn",
         "LB_RETRIES": "1", "LB_PRESERVE_HOST": "yes", "LB_READ_TIMEOUT": "250ms"},
        pool_maxsize=4)
    assert adapter.balancer.settings.policy == "least_conn"
    assert adapter.settings.retries == 1
    assert adapter.settings.preserve_host is True
    assert adapter.settings.read_timeout == 0.25
    assert adapter._pool_maxsize == 4
    assert mounted(adapter).get(f"{VHOST}/").json()["headers"]["Host"] == "svc"


@pytest.mark.parametrize("environ, message", [
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRIES": "x"}, "LB_RETRIES has value 'x'"),
    ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRY_NON_IDEMPOTENT": "maybe"},
     "LB_RETRY_NON_IDEMPOTENT has value 'maybe'"),
    ({"LB_BACKENDS": "ftp://127.0.0.1:1"}, "LB_BACKENDS has value 'ftp://127.0.0.1:1'"),
    ({}, "LB_BACKENDS is not set"),
])
def test_from_env_rejects_bad_settings(environ, message):
    with pytest.raises(lb.ConfigError, match=message):
        LoadBalancingAdapter.from_env(environ)


def test_bad_keyword_arguments():
    with pytest.raises(lb.ConfigError, match="retries has value -1"):
        LoadBalancingAdapter(["http://127.0.0.1:1"], retries=-1)
    pool = lb.Balancer(["http://127.0.0.1:1"])
    with pytest.raises(lb.ConfigError, match="policy given with balancer="):
        LoadBalancingAdapter(balancer=pool, policy="random")
    adapter = LoadBalancingAdapter(balancer=pool, retry_non_idempotent=True)
    assert isinstance(adapter.settings, AdapterSettings)
    assert adapter.settings.retry_non_idempotent is True
    with pytest.raises(TypeError, match="'prefix': prefix is a setting of ProxySettings"):
        LoadBalancingAdapter(["http://127.0.0.1:1"], prefix="/api")
    with pytest.raises(TypeError, match=r"'retires' \(did you mean retries\?\)"):
        LoadBalancingAdapter(balancer=pool, retires=1)


def test_adapters_sharing_a_balancer_each_have_their_own_forwarding_settings():
    pool = lb.Balancer(["http://127.0.0.1:1"], max_fails=7)
    quick = LoadBalancingAdapter(balancer=pool, retries=0, read_timeout=0.5)
    patient = LoadBalancingAdapter(balancer=pool, retries=4, hash_key="header:X-User")
    assert quick.balancer is patient.balancer is pool
    assert (quick.settings.retries, quick._default_timeout) == (0, (5.0, 0.5))
    assert (patient.settings.retries, patient.settings.hash_key) == (4, "header:X-User")
    assert quick.forwarding is quick.settings


def test_without_backends_the_adapter_reads_lb_variables(monkeypatch, backends):
    for name in [n for n in os.environ if n.startswith("LB_")]:
        monkeypatch.delenv(name)
    with pytest.raises(lb.ConfigError, match="LB_BACKENDS is not set: it is required"):
        LoadBalancingAdapter()
    monkeypatch.setenv("LB_BACKENDS", backends[1].url)
    monkeypatch.setenv("LB_RETRIES", "0")
    adapter = LoadBalancingAdapter(read_timeout=2)          # keywords win over variables
    assert [b.url for b in adapter.balancer.backends] == [backends[1].url]
    assert (adapter.settings.retries, adapter.settings.read_timeout) == (0, 2.0)
    assert served_by(mounted(adapter).get(f"{VHOST}/")) == "b"


def test_a_pickled_session_has_a_working_adapter_with_a_fresh_pool(backends):
    a, b, c = backends
    adapter = LoadBalancingAdapter([a.url, b.url], policy="least_conn", retries=1,
                                   preserve_host=True, max_retries=Retry(total=2), pool_maxsize=3)
    adapter.balancer.update([a.url, b.url, c.url])            # the membership as it is now
    session = mounted(adapter)
    session.get(f"{VHOST}/")
    copy = pickle.loads(pickle.dumps(session))
    moved = copy.get_adapter(f"{VHOST}/")
    assert isinstance(moved, LoadBalancingAdapter) and moved is not adapter
    assert (moved.balancer.settings.policy, moved.settings.retries,
            moved.settings.preserve_host) == ("least_conn", 1, True)
    assert (moved.max_retries.total, moved._pool_maxsize) == (2, 3)
    assert [row["requests"] for row in moved.balancer.stats()] == [0, 0, 0]
    counts = Counter(served_by(copy.get(f"{VHOST}/")) for _ in range(6))
    assert counts == {"a": 2, "b": 2, "c": 2}
    assert copy.get(f"{VHOST}/").json()["headers"]["Host"] == "svc"
    environ = {"LB_BACKENDS": a.url}
    from_env = pickle.loads(pickle.dumps(LoadBalancingAdapter.from_env(environ)))
    assert [b.url for b in from_env.balancer.backends] == [a.url]


def test_an_adapter_on_a_shared_balancer_refuses_to_be_pickled(backends):
    session = mounted(LoadBalancingAdapter(balancer=lb.Balancer([backends[0].url])))
    with pytest.raises(TypeError, match="balancer= cannot be pickled"):
        pickle.dumps(session)


def test_exported_lazily_from_the_package():
    assert lb.LoadBalancingAdapter is LoadBalancingAdapter
