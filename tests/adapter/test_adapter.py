"""LoadBalancingAdapter against real loopback backends (tests/support/servers.py): what is
particular to requests (its exceptions' arguments, urllib3's own retries, the pools,
threads, pickling). What every client front-end does is the client contract
(tests/contract/client_contract.py), run against the adapter in test_adapter_contract.py.

Every backend answers with JSON naming itself, so a test sees which one served a call
and what reached it. In-flight counts are checked after every kind of ending.
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter

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


# -- requests' own errors and retries --------------------------------------------------------

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


def test_an_error_the_deadline_caused_says_so_first_and_keeps_requests_arguments(backends):
    a = backends[0]
    a.behaviour = "hang"
    with pytest.raises(requests.ReadTimeout) as info:
        mounted(LoadBalancingAdapter([a.url], timeout=0.2)).get(f"{VHOST}/", timeout=5)
    error = info.value
    assert type(error.args[0]) is ReadTimeoutError                   # urllib3's, as requests'
    assert error.deadline == "the request's 200ms deadline (LB_TIMEOUT) ran out"
    assert str(error).startswith(f"{error.deadline}: HTTPConnectionPool(")
    assert "Read timed out" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, requests.ReadTimeout) and copy.deadline == error.deadline
    assert str(copy).startswith(f"{error.deadline}: ")       # (urllib3's pickle drops its pool)


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

def test_from_env_passes_other_keywords_to_the_constructor(backends):
    """(What from_env reads from LB_* variables is the client contract's test_from_env.)"""
    adapter = LoadBalancingAdapter.from_env(
        {"LB_BACKENDS": backends[0].url, "LB_RETRIES": "1"}, pool_maxsize=4)
    assert adapter.settings.retries == 1
    assert adapter._pool_maxsize == 4


def test_an_adapters_default_timeout_is_its_own_settings():
    """(Front-ends sharing a balancer: the client contract.)"""
    pool = lb.Balancer(["http://127.0.0.1:1"], max_fails=7)
    quick = LoadBalancingAdapter(balancer=pool, retries=0, read_timeout=0.5)
    assert (quick.settings.retries, quick._default_timeout) == (0, (5.0, 0.5))


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


