"""The client contract: what every client front-end does with a call, written once.

:class:`ClientContract` is a mixin of tests (cachetools' way: one suite, every
implementation), run against the requests adapter (tests/adapter/test_adapter_contract.py)
and the sync and async httpx transports (tests/transport/test_transport_contract.py)::

    class TestSyncTransport(ClientContract):
        front_end_class = HttpxFrontEnd

Each test builds a front-end through the small interface of tests/contract/client_drivers.py
(its keywords and ``from_env`` are the same for all), mounts it in its library's client
for the virtual host ``http://svc``, and checks what reached the real loopback backends
(tests/support/servers.py echoes it), what came back, and the pool's counts: in flight
after every kind of ending, requests and failures. Where a library legitimately differs,
the test branches on a documented attribute of its driver class (``reads_body_in_attempt``,
``replays_files``), never by dropping a check. What is particular to one library (requests'
exception arguments, urllib3 retries, pickling, httpx's cancellation) stays in that
front-end's own test modules.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

import lbmiddleware as lb

from ..support.redirect_backend import RedirectBackend
from ..support.servers import refused_url, unaccepting_url
from .client_drivers import (
    UPLOAD,
    VHOST,
    ClientFrontEnd,
    TricklingHead,
    UnreadUpload,
    pool_of,
)

SHORT = (1.0, 0.3)          # connect, read: a hanging backend costs 0.3 s


def in_flight(pool: lb.Balancer) -> list[int]:
    return [row["in_flight"] for row in pool.stats()]


def stat(pool: lb.Balancer, url: str) -> dict:
    return next(row for row in pool.stats() if row["url"] == url)


class ClientContract:
    """The tests every client front-end passes; ``front_end_class`` says which one."""

    front_end_class: type[ClientFrontEnd]

    @pytest.fixture
    def driver(self):
        driver = self.front_end_class()
        yield driver
        driver.stop()

    @pytest.fixture
    def big(self, backends):
        backends[0].body_size = 1_000_000
        return backends[0]

    # -- spreading --------------------------------------------------------------------------

    def test_round_robin_spreads_exactly(self, driver, backends):
        front = driver.make(backends)
        client = driver.client(front)
        counts = Counter(client.get("/x").server for _ in range(30))
        assert counts == {"a": 10, "b": 10, "c": 10}
        assert in_flight(front.balancer) == [0, 0, 0]
        assert [row["requests"] for row in front.balancer.stats()] == [10, 10, 10]

    def test_weights_are_honoured(self, driver, backends):
        a, b, c = backends
        front = driver.make([lb.Backend(a.url, 5), lb.Backend(b.url, 3), lb.Backend(c.url, 2)])
        client = driver.client(front)
        order = [client.get("/").server for _ in range(10)]
        assert order == list("abcaabacba")

    @pytest.mark.parametrize("policy", ["random", "least_conn", "ip_hash"])
    def test_other_policies_serve_every_call(self, driver, backends, policy):
        pool = lb.Balancer([s.url for s in backends], policy=policy, rng=random.Random(3))
        client = driver.client(driver.make(balancer=pool))
        counts = Counter(client.get("/").server for _ in range(30))
        assert sum(counts.values()) == 30
        assert set(counts) == {"a", "b", "c"}
        if policy != "random":  # sequential: least_conn ties and keyless ip_hash go round-robin
            assert counts == {"a": 10, "b": 10, "c": 10}
        assert in_flight(pool) == [0, 0, 0]

    def test_latency_policy_avoids_the_slow_backend(self, driver, backends):
        # b is 0.3 s slower than its peers, and no garbage collection runs meanwhile: a stall
        # of a or c's answer is a peak that decays only over tau = 10 s, and in CI's long run
        # (a big heap: a full collection takes 100 ms and more) a 100 ms b looked as good as
        # a stalled a and drew a third of the picks (twice, the sync transport)
        a, b, c = backends
        b.delay = 0.3
        pool = lb.Balancer([s.url for s in backends], policy="latency", rng=random.Random(5))
        client = driver.client(driver.make(balancer=pool))
        collecting = gc.isenabled()
        gc.disable()
        try:
            counts = Counter(client.get("/").server for _ in range(40))
        finally:
            if collecting:
                gc.enable()
        assert counts["b"] <= 3
        assert counts["a"] + counts["c"] >= 37
        assert stat(pool, b.url)["latency"] >= 0.29      # time to head was measured

    # -- the request as it reaches the backend ------------------------------------------------

    def test_method_path_query_body_headers_cookies_and_auth_are_preserved(self, driver,
                                                                           backends):
        a = backends[0]
        client = driver.client(driver.make([a]))
        response = client.request("POST", "/api/items", params={"page": 2, "q": "a b"},
                                  json={"n": 1}, headers={"X-Custom": "yes"},
                                  cookies={"sid": "s1"}, auth=("user", "pw"))
        echo = response.json()
        assert echo["method"] == "POST"
        assert echo["path"] == "/api/items?page=2&q=a+b"
        assert echo["body"].replace(" ", "") == '{"n":1}'     # (httpx writes JSON compactly)
        assert echo["headers"]["X-Custom"] == "yes"
        assert echo["headers"]["Cookie"] == "sid=s1"
        assert echo["headers"]["Authorization"].startswith("Basic ")
        assert echo["headers"]["Content-Type"] == "application/json"
        assert echo["headers"]["Host"] == f"127.0.0.1:{a.port}"
        assert response.url == f"{VHOST}/api/items?page=2&q=a+b"
        assert response.request_url == response.url

    def test_backend_base_path_is_prefixed(self, driver, backends):
        a = backends[0]
        client = driver.client(driver.make([a.url + "/v1/"]))
        assert client.get("/api/items?x=1").json()["path"] == "/v1/api/items?x=1"
        assert client.get("").json()["path"] == "/v1/"

    def test_preserve_host_sends_the_virtual_host(self, driver, backends):
        a = backends[0]
        client = driver.client(driver.make([a], preserve_host=True), vhost="http://svc:8080")
        assert client.get("/x").json()["headers"]["Host"] == "svc:8080"
        explicit = client.get("/x", headers={"Host": "other"})
        assert explicit.json()["headers"]["Host"] == "other"

    def test_cookies_and_redirects_stay_on_the_virtual_host(self, driver, backends):
        a, b, _ = backends
        for server in (a, b):
            server.extra_headers = [("Set-Cookie", "sid=abc; Path=/")]
            server.redirects = {"/old": "/new"}
        client = driver.client(driver.make([a, b]))
        first = client.get("/old")
        assert first.history == [302]
        assert first.url == f"{VHOST}/new"
        assert first.json()["path"] == "/new"
        assert client.cookie_domains() == ["svc.local"]
        assert client.get("/again").json()["headers"]["Cookie"] == "sid=abc"
        # every call went through the front-end: the redirect was followed on the pool
        assert a.requests + b.requests == 3

    def test_a_backends_redirect_to_itself_is_followed_through_the_pool(self, driver):
        """A backend building absolute URLs from the Host it got (its own address) answers
        ``Location: http://127.0.0.1:PORT/a/new``: mapped back to the virtual host, the
        client follows it through the pool (the next backend serves it), and the caller
        sees virtual URLs in every redirect header."""
        with RedirectBackend("r1") as r1, RedirectBackend("r2") as r2:
            client = driver.client(driver.make([r1, r2]))
            moved = client.get("/a/old?page=2")
            assert moved.history == [302]
            assert moved.url == f"{VHOST}/a/new?page=2"
            assert (moved.server, moved.json()["path"]) == ("r2", "/a/new?page=2")
            created = client.get("/created")
            assert created.status == 201
            assert created.headers["Location"] == f"{VHOST}/items/7"
            assert created.headers["Content-Location"] == f"{VHOST}/items/7"
            refresh = client.get("/b/refresh")
            assert refresh.headers["Refresh"] == f"3; url={VHOST}/b/later"
            assert (r1.requests, r2.requests) == (2, 2)

    def test_relative_and_foreign_redirects_are_left_as_they_came(self, driver, backends):
        a = backends[0]
        a.redirects = {"/rel": "/new", "/other-port": f"{refused_url()}/x",
                       "/elsewhere": "https://login.example/authorize",
                       "/other-scheme": f"https://127.0.0.1:{a.port}/x"}
        client = driver.client(driver.make([a]))
        for path, location in a.redirects.items():
            assert client.location(path) == location

    # -- failures and retries -------------------------------------------------------------------

    def test_refused_backend_gives_no_errors_and_is_ejected(self, driver, backends):
        a, _, c = backends
        dead = refused_url()
        front = driver.make([a.url, dead, c.url], max_fails=3)
        client = driver.client(front)
        counts = Counter(client.get("/").server for _ in range(30))
        assert sum(counts.values()) == 30
        row = stat(front.balancer, dead)
        assert row["state"] == "ejected"
        assert row["failures"] == 3
        assert in_flight(front.balancer) == [0, 0, 0]

    def test_connect_failure_is_retried_for_post_too(self, driver, backends):
        a = backends[0]
        client = driver.client(driver.make([refused_url(), a.url]))
        response = client.request("POST", "/orders", body=b"one order")
        assert response.server == "a"
        assert a.received[0][3] == b"one order"

    def test_every_backend_refusing_raises_connection_error_naming_them(self, driver):
        dead = [refused_url(), refused_url()]
        front = driver.make(dead)
        client = driver.client(front)
        with pytest.raises(driver.errors.connect) as info:
            client.get("/")
        assert all(url in str(info.value) for url in dead)
        assert info.value.backends_tried == tuple(dead)
        assert str(info.value.request.url) == f"{VHOST}/"
        assert [row["failures"] for row in front.balancer.stats()] == [1, 1]
        assert in_flight(front.balancer) == [0, 0]

    def test_hanging_backend_get_is_retried_post_is_not(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "hang"
        front = driver.make([a, b])
        response = driver.client(front).get("/", timeout=SHORT)
        assert response.server == "b"
        assert stat(front.balancer, a.url)["failures"] == 1

        front = driver.make([a, b])
        with pytest.raises(driver.errors.read_timeout) as info:
            driver.client(front).request("POST", "/", body=b"x", timeout=SHORT)
        assert a.url in str(info.value) and b.url not in str(info.value)
        assert [m for m, *_ in b.received] == ["GET"]
        assert in_flight(front.balancer) == [0, 0]

    def test_settings_timeouts_apply_when_the_call_gives_none(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "hang"
        front = driver.make([a], read_timeout=0.3, retries=0)
        with pytest.raises(driver.errors.read_timeout):
            driver.client(front).get("/")
        front = driver.make([a, b], read_timeout=0.3, retries=0)
        with pytest.raises(driver.errors.read_timeout):                # retries=0: no second try
            driver.client(front).get("/")
        assert b.requests == 0

    def test_retry_non_idempotent_opts_in(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "hang"
        client = driver.client(driver.make([a, b], retry_non_idempotent=True))
        assert client.request("POST", "/", body=b"x", timeout=SHORT).server == "b"

    def test_fail_status_is_retried_for_get(self, driver, backends):
        a, b, _ = backends
        a.status = 503
        front = driver.make([a, b])
        client = driver.client(front)
        response = client.get("/")
        assert (response.status, response.server) == (200, "b")
        assert stat(front.balancer, a.url)["failures"] == 1
        # the 503's connection was read and kept: the next call to a reuses it
        front.balancer.update([a.url])
        assert client.get("/").status == 503
        assert a.connections == 1

    @pytest.mark.parametrize("stream", [False, True])
    def test_all_fail_statuses_return_the_last_response(self, driver, backends, stream):
        for server in backends:
            server.status = 503
        front = driver.make(backends, retries=2)
        client = driver.client(front)
        response = client.stream("GET") if stream else client.get("/")
        assert response.status == 503
        assert response.server == "c"
        assert [s.requests for s in backends] == [1, 1, 1]
        if stream:
            response.close()
        assert in_flight(front.balancer) == [0, 0, 0]
        assert [row["failures"] for row in front.balancer.stats()] == [1, 1, 1]

    def test_retries_are_bounded(self, driver, backends):
        for server in backends:
            server.status = 502
        assert driver.client(driver.make(backends, retries=1)).get("/").status == 502
        assert [s.requests for s in backends] == [1, 1, 0]

    def test_fail_status_on_post_is_returned_without_retry(self, driver, backends):
        a, b, _ = backends
        a.status = 503
        response = driver.client(driver.make([a, b])).request("POST", "/", body=b"x")
        assert (response.status, response.server) == (503, "a")
        assert b.requests == 0

    def test_an_in_memory_body_is_replayed_a_generator_body_is_not(self, driver, backends):
        a, b, _ = backends
        a.status = 503
        client = driver.client(driver.make([a, b]))
        response = client.request("PUT", "/doc", body=b"payload", timeout=SHORT)
        assert response.server == "b"
        assert b.received[-1][3] == b"payload"

        if driver.replays_files:
            client = driver.client(driver.make([a, b]))
            body = io.BytesIO(b"skip:payload")
            body.seek(5)
            response = client.request("PUT", "/doc", body=body, timeout=SHORT)
            assert response.server == "b"
            assert b.received[-1][3] == b"payload"

        requests_before = b.requests
        client = driver.client(driver.make([a, b]))
        response = client.request("PUT", "/doc", body=[b"pay", b"load"], timeout=SHORT)
        assert (response.status, response.server) == (503, "a")
        assert a.received[-1][3] == b"payload"
        assert b.requests == requests_before

    def test_connection_closed_before_the_head(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "close"
        assert driver.client(driver.make([a, b])).get("/").server == "b"
        front = driver.make([a, b])
        with pytest.raises(driver.errors.closed) as info:
            driver.client(front).request("POST", "/", body=b"x")
        assert a.url in str(info.value)
        assert b.requests == 1
        assert in_flight(front.balancer) == [0, 0]

    def test_connection_closed_mid_body(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "truncate"
        front = driver.make([a, b])
        if driver.reads_body_in_attempt:        # the caller saw nothing: retried
            assert driver.client(front).get("/").server == "b"
        else:                                   # the client has the response: not retried
            with pytest.raises(driver.errors.cut):
                driver.client(front).get("/")
            assert b.requests == 0
        assert stat(front.balancer, a.url)["failures"] == 1

        front = driver.make([a, b])
        response = driver.client(front).stream("GET")       # bytes reached the caller
        assert response.status == 200
        with pytest.raises(driver.errors.cut):
            response.read_all()
        assert in_flight(front.balancer) == [0, 0]

    def test_a_body_that_fails_to_decode_is_not_the_backends_fault(self, driver, backends):
        a, b, _ = backends
        for server in (a, b):
            server.extra_headers = [("Content-Encoding", "gzip")]      # a JSON body: not gzip
        front = driver.make([a, b])
        with pytest.raises(driver.errors.decoding):                   # as the plain client
            driver.client(front).get("/")
        assert (a.requests, b.requests) == (1, 0)                     # not replayed
        assert [row["failures"] for row in front.balancer.stats()] == [0, 0]
        assert in_flight(front.balancer) == [0, 0]

    def test_empty_pool_raises_no_healthy_backend_as_the_librarys_connect_error(self, driver,
                                                                               backends):
        pool = lb.Balancer([backends[0].url])
        pool.update([])
        client = driver.client(driver.make(balancer=pool))
        with pytest.raises(driver.errors.base) as info:
            client.get("/")
        assert isinstance(info.value, driver.errors.no_healthy)
        assert isinstance(info.value, lb.NoHealthyBackend)
        assert isinstance(info.value, driver.errors.connect)
        assert str(info.value.request.url) == f"{VHOST}/"

    # -- in flight never leaks ------------------------------------------------------------------

    def test_stream_counts_in_flight_until_closed(self, driver, big):
        front = driver.make([big])
        client = driver.client(front)
        response = client.stream("GET")
        assert response.read_some()
        assert in_flight(front.balancer) == [1]
        assert front.balancer.stats()[0]["requests"] == 0
        response.close()
        response.close()
        assert in_flight(front.balancer) == [0]
        assert front.balancer.stats()[0]["requests"] == 1

    def test_stream_read_to_the_end_ends_the_attempt(self, driver, big):
        front = driver.make([big])
        client = driver.client(front)
        response = client.stream("GET")
        assert response.read_rest() == 1_000_000
        assert in_flight(front.balancer) == [0]
        client.get("/")
        assert big.connections == 1                      # the connection went back to the pool
        assert front.balancer.stats()[0]["requests"] == 2

    def test_abandoned_stream_ends_when_collected(self, driver, big):
        front = driver.make([big])
        response = driver.client(front).stream("GET")
        assert in_flight(front.balancer) == [1]
        del response
        gc.collect()
        assert in_flight(front.balancer) == [0]

    def test_exception_from_the_callers_body_releases_without_a_failure(self, driver, backends):
        def body():
            yield b"part"
            raise RuntimeError("the caller's generator broke")

        front = driver.make([backends[0]])
        with pytest.raises(RuntimeError):
            driver.client(front).request("POST", "/", body=_Broken(body))
        row = front.balancer.stats()[0]
        assert (row["in_flight"], row["failures"], row["requests"]) == (0, 0, 0)

    def test_exception_from_key_func_picks_nothing(self, driver, backends):
        def key_func(request):
            raise LookupError("no key")

        front = driver.make([backends[0]], policy="ip_hash", key_func=key_func)
        with pytest.raises(LookupError):
            driver.client(front).get("/")
        assert in_flight(front.balancer) == [0]

    # -- stickiness -----------------------------------------------------------------------------

    def test_ip_hash_by_header_sticks_and_moves_only_the_dead_backends_keys(self, driver,
                                                                            backends, clock):
        a, b, c = backends
        pool = lb.Balancer([s.url for s in backends], policy="ip_hash",
                           max_fails=1, fail_timeout=10.0, timer=clock)
        client = driver.client(driver.make(balancer=pool, hash_key="header:X-User-Id"))

        def owners() -> dict[str, str]:
            return {f"user-{i}": client.get("/", headers={"X-User-Id": f"user-{i}"}).server
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

    def test_ip_hash_by_cookie_and_by_key_func(self, driver, backends):
        pool = lb.Balancer([s.url for s in backends], policy="ip_hash")
        client = driver.client(driver.make(balancer=pool, hash_key="cookie:sid"))
        for sid in ("s1", "s2", "s3", "s4"):
            seen = {client.get("/", cookies={"other": "x", "sid": sid}).server
                    for _ in range(4)}
            assert len(seen) == 1

        front = driver.make(backends, policy="ip_hash",
                            key_func=lambda request: driver.path_of(request).split("/")[2])
        client = driver.client(front)
        for tenant in ("t1", "t2", "t3", "t4"):
            seen = {client.get(f"/tenants/{tenant}/{i}").server for i in range(4)}
            assert len(seen) == 1

    # -- sticky cookies (LB_STICKY_COOKIE) ----------------------------------------------------

    def test_the_first_response_sets_the_sticky_cookie_and_the_client_sticks(self, driver,
                                                                             backends):
        """round_robin would spread them: the cookie the client's jar keeps and sends back
        pins it to the backend that answered first, and is not set again."""
        front = driver.make(backends, sticky_cookie="lb")
        client = driver.client(front)
        first = client.get("/")
        owner = next(s for s in backends if s.name == first.server)
        value = front.balancer.sticky_value(owner.url)
        assert first.set_cookies == [f"lb={value}; Path=/; HttpOnly; SameSite=Lax"]
        assert client.cookie("lb") == value
        assert client.cookie_domains() == ["svc.local"]
        later = [client.get(f"/{i}") for i in range(6)]
        assert {r.server for r in later} == {owner.name}
        assert all(r.set_cookies == [] for r in later)
        assert [h["Cookie"] for _, _, h, _ in owner.received[1:]] == [f"lb={value}"] * 6
        assert in_flight(front.balancer) == [0, 0, 0]

    def test_without_the_setting_no_sticky_cookie_is_set(self, driver, backends):
        client = driver.client(driver.make(backends))
        assert {client.get("/").set_cookies == [] for _ in range(3)} == {True}
        assert client.cookie_domains() == []

    def test_the_sticky_cookie_keeps_the_backends_own_cookies_and_is_secure_over_https(
            self, driver, backends):
        a = backends[0]
        a.extra_headers = [("Set-Cookie", "sid=abc; Path=/")]
        client = driver.client(driver.make([a], sticky_cookie="lb"), vhost="https://svc")
        reply = client.get("/")
        value = lb.Balancer([a.url]).sticky_value(a.url)
        assert reply.set_cookies == ["sid=abc; Path=/",
                                     f"lb={value}; Path=/; HttpOnly; SameSite=Lax; Secure"]
        assert (client.cookie("sid"), client.cookie("lb")) == ("abc", value)
        assert client.get("/").json()["headers"]["Cookie"] in (f"sid=abc; lb={value}",
                                                              f"lb={value}; sid=abc")

    def test_a_proxy_forwarding_through_it_scopes_the_cookie_to_its_prefix(self, driver,
                                                                          backends):
        front = driver.make(backends, sticky_cookie="lb")
        assert front.sticky_path == "/"
        front.sticky_path = "/api"                      # (the WSGI middleware's prefix)
        reply = driver.client(front).get("/api/x")
        value = front.balancer.sticky_value(backends[0].url)
        assert reply.set_cookies == [f"lb={value}; Path=/api; HttpOnly; SameSite=Lax"]
        off = driver.make(backends)
        off.sticky_path = "/api"                        # no cookie: nothing to scope
        assert (off.sticky_cookie, off.sticky_path) == (None, "/")

    def test_a_stopped_backend_moves_the_client_and_replaces_its_cookie(self, driver,
                                                                        backends):
        front = driver.make(backends, sticky_cookie="lb")
        client = driver.client(front)
        owner = next(s for s in backends if s.name == client.get("/").server)
        owner.stop()
        moved = client.get("/")                         # refused, retried elsewhere
        assert moved.server != owner.name
        heir = next(s for s in backends if s.name == moved.server)
        value = front.balancer.sticky_value(heir.url)
        assert moved.set_cookies == [f"lb={value}; Path=/; HttpOnly; SameSite=Lax"]
        assert client.cookie("lb") == value
        assert {client.get(f"/{i}").server for i in range(4)} == {heir.name}
        for server in backends:                         # no answer: the cookie stays
            server.stop()
        with pytest.raises(driver.errors.connect):
            client.get("/")
        assert client.cookie("lb") == value
        assert in_flight(front.balancer) == [0, 0, 0]

    @pytest.mark.parametrize("forged", ["0123456789abcdef", "not-a-value", "elsewhere"])
    def test_a_forged_sticky_cookie_is_balanced_and_replaced(self, driver, backends, forged):
        front = driver.make(backends, sticky_cookie="lb")
        if forged == "elsewhere":                       # another pool's backend's value
            forged = front.balancer.sticky_value("http://127.0.0.1:1")
        client = driver.client(front)
        client.set_cookie("lb", forged)
        first = client.get("/")
        assert first.server == "a"                      # round robin, as without a cookie
        value = front.balancer.sticky_value(backends[0].url)
        assert backends[0].received[0][2]["Cookie"] == f"lb={forged}"
        assert first.set_cookies == [f"lb={value}; Path=/; HttpOnly; SameSite=Lax"]
        assert client.cookie("lb") == value
        assert {client.get("/").server for _ in range(3)} == {"a"}

    # -- the request's deadline (LB_TIMEOUT) --------------------------------------------------

    def test_the_deadline_ends_a_request_to_slow_backends_in_about_its_time(self, driver,
                                                                            backends):
        """Each attempt may wait 1 s (the call's timeout, per attempt as urllib3's), so
        three hanging backends would take 3 s; the request's 0.3 s deadline cuts the first
        attempt's read timeout to it, and leaves no time for a retry."""
        for server in backends:
            server.behaviour = "hang"
        front = driver.make(backends, timeout=0.3, retries=2)
        started = time.monotonic()
        with pytest.raises(driver.errors.read_timeout) as info:
            driver.client(front).get("/", timeout=(1.0, 1.0))
        took = time.monotonic() - started
        assert took < 0.3 + 1.0                         # (3 s without the deadline)
        assert info.value.backends_tried == (backends[0].url,)
        text = str(info.value)
        assert text.startswith("the request's 300ms deadline (LB_TIMEOUT) ran out: ")
        assert text.count("LB_TIMEOUT") == 1                # then the library's own words
        assert text.endswith(f" (backends tried: {backends[0].url})")
        assert [s.requests for s in backends] == [1, 0, 0]
        assert [row["failures"] for row in front.balancer.stats()] == [1, 0, 0]
        assert in_flight(front.balancer) == [0, 0, 0]

    def test_the_deadline_cuts_a_retrys_timeout_to_the_time_left(self, driver, backends,
                                                                 caplog):
        """a times out on its own 0.7 s read timeout; the retry on b has the 0.5 s left of
        the 1.2 s deadline, which runs out first; c is never tried."""
        caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
        a, b, c = backends
        a.behaviour = b.behaviour = "hang"
        front = driver.make(backends, timeout=1.2, retries=2)
        with pytest.raises(driver.errors.read_timeout) as info:
            driver.client(front).get("/", timeout=(1.0, 0.7))
        assert info.value.backends_tried == (a.url, b.url)
        assert "the request's 1.2s deadline (LB_TIMEOUT) ran out" in str(info.value)
        assert c.requests == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
        assert lines == [
            f"GET attempt 1 on {a.url} failed: read timed out after 700ms; retrying on {b.url}",
            f"GET attempt 2 on {b.url} failed: the request's 1.2s deadline (LB_TIMEOUT) ran "
            f"out; not retried: the request's 1.2s deadline (LB_TIMEOUT) has passed"]
        assert in_flight(front.balancer) == [0, 0, 0]

    def test_a_connect_timeout_the_deadline_cut_is_the_librarys_own_naming_the_deadline(
            self, driver, backends):
        with unaccepting_url() as silent:
            front = driver.make([silent, backends[0].url], timeout=0.3)
            with pytest.raises(driver.errors.connect_timeout) as info:
                driver.client(front).get("/", timeout=(5.0, 5.0))
        assert info.value.backends_tried == (silent,)
        assert str(info.value).startswith("the request's 300ms deadline (LB_TIMEOUT) ran out: ")
        assert backends[0].requests == 0
        assert in_flight(front.balancer) == [0, 0]

    @pytest.mark.parametrize("stream", [False, True])
    def test_the_deadline_ends_at_the_response_head_the_body_has_its_own_read_timeout(
            self, driver, backends, stream):
        """The head comes at once, the body's second half 0.6 s later: past the 0.3 s
        deadline, within the attempt's own 5 s read timeout, which the body's reads get
        back (the deadline bounds the wait for an answer, not its length)."""
        a = backends[0]
        a.behaviour, a.body_size = "pause_body", 10_000
        front = driver.make([a], timeout=0.3)
        client = driver.client(front)
        later = threading.Timer(0.6, a.release.set)
        later.start()
        try:
            if stream:
                response = client.stream("GET", timeout=(1.0, 5.0))
                assert len(response.read_all()) == 10_000
                response.close()
            else:
                assert len(client.get("/", timeout=(1.0, 5.0)).body) == 10_000
        finally:
            later.join(2)
        row = front.balancer.stats()[0]
        assert (row["requests"], row["failures"], row["in_flight"]) == (1, 0, 0)

    def test_retries_happen_within_the_deadline_when_there_is_time(self, driver, backends):
        a, b, _ = backends
        a.behaviour = "hang"
        front = driver.make([refused_url(), a.url, b.url], timeout=5.0, retries=2)
        response = driver.client(front).get("/", timeout=SHORT)
        assert response.server == "b"
        assert [row["failures"] for row in front.balancer.stats()] == [1, 1, 0]

    @pytest.fixture
    def trickling(self):
        server = TricklingHead()
        yield server
        server.stop()

    @pytest.fixture
    def unread_upload(self):
        server = UnreadUpload()
        yield server
        server.stop()

    def test_the_deadline_bounds_a_response_head_that_trickles_in(self, driver, trickling):
        """The backend sends its head a byte every 50 ms: each read gets one well within the
        5 s read timeout, and the head does not end for 5 s. The 0.5 s deadline bounds the
        wait for the whole head, not each read: the library's read timeout naming the
        deadline, and the attempt's connection let go."""
        front = driver.make([trickling], timeout=0.5, read_timeout=5)
        started = time.monotonic()
        with pytest.raises(driver.errors.read_timeout) as info:
            driver.client(front).get("/", timeout=(1.0, 5.0))
        took = time.monotonic() - started
        assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the wait after {took:.2f} s"
        assert str(info.value).startswith("the request's 500ms deadline (LB_TIMEOUT) ran out: ")
        assert info.value.backends_tried == (trickling.url,)
        assert trickling.given_up.wait(2), "the attempt's connection is still open"
        row = front.balancer.stats()[0]
        assert (row["requests"], row["failures"], row["in_flight"]) == (1, 1, 0)

    def test_the_deadline_bounds_an_upload_the_backend_stops_reading(self, driver,
                                                                   unread_upload):
        """The backend reads the head of a 32 MiB PUT and none of its body: the upload
        blocks. The 0.5 s deadline ends it as a timeout (the library's own for an upload:
        requests' ReadTimeout, httpx's WriteTimeout) naming the deadline."""
        front = driver.make([unread_upload], timeout=0.5, read_timeout=5)
        started = time.monotonic()
        with pytest.raises(driver.errors.upload_timeout) as info:
            driver.client(front).request("PUT", "/", body=b"x" * UPLOAD, timeout=(1.0, 5.0))
        took = time.monotonic() - started
        assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the upload after {took:.2f} s"
        assert str(info.value).startswith("the request's 500ms deadline (LB_TIMEOUT) ran out: ")
        assert info.value.backends_tried == (unread_upload.url,)
        assert unread_upload.requests == 1
        row = front.balancer.stats()[0]
        assert (row["requests"], row["failures"], row["in_flight"]) == (1, 1, 0)

    # -- the retry budget ---------------------------------------------------------------------

    def test_a_spent_retry_budget_makes_no_more_attempts_and_returns_the_last_503(
            self, driver, backends, clock):
        """Every backend sheds load with 503: a budget of one retry in its window (no ratio,
        0.1 a second over 10 s) lets the first request retry once, and no more."""
        for server in backends:
            server.status = 503
        pool = lb.Balancer([s.url for s in backends], retry_budget=0,
                           retry_budget_min_per_second=0.1, retry_budget_ttl=10, timer=clock)
        client = driver.client(driver.make(balancer=pool, retries=2))
        first, second = client.get("/"), client.get("/")
        assert (first.status, first.server) == (503, "b")       # a, then b; no third
        assert (second.status, second.server) == (503, "c")     # c, and no retry at all
        assert [s.requests for s in backends] == [1, 1, 1]
        budget = pool.pool_stats()["retry_budget"]
        assert (budget["requests"], budget["retries"], budget["exhausted_total"]) == (2, 1, 2)
        assert in_flight(pool) == [0, 0, 0]

    # -- body bytes ----------------------------------------------------------------------------

    @pytest.mark.parametrize("kind", ["bytes", "file", "generator"])
    def test_every_attempt_reports_the_body_bytes_sent_and_received(self, driver, backends,
                                                                    kind):
        """Both attempts, the 503 retried and the answer, report the request body they sent
        (a file from where it stood, a generator as it was sent); the answer the body it
        received. A body sent once (a generator; a file for httpx) is retried only after a
        connect failure, which sent nothing."""
        a, b, _ = backends
        a.status = 503
        body: Any = b"payload"
        if kind == "file" and driver.replays_files:
            body = io.BytesIO(b"skip:payload")
            body.seek(5)
        elif kind == "file":
            body = io.BytesIO(b"payload")
        elif kind == "generator":
            body = [b"pay", b"load"]
        replayed = kind == "bytes" or (kind == "file" and driver.replays_files)
        first = a.url if replayed else refused_url()
        front = driver.make([first, b.url])
        reply = driver.client(front).request("PUT", "/doc", body=body)
        assert reply.server == "b"
        assert b.received[-1][3] == b"payload"
        rows = {row["url"]: row for row in front.balancer.stats()}
        assert rows[b.url]["bytes_sent"] == 7
        assert rows[b.url]["bytes_received"] == len(reply.body)
        assert rows[first]["bytes_sent"] == (7 if replayed else 0)

    def test_a_streamed_body_reports_what_was_read(self, driver, big):
        front = driver.make([big])
        client = driver.client(front)
        response = client.stream("GET")
        assert response.read_rest() == 1_000_000
        assert front.balancer.stats()[0]["bytes_received"] == 1_000_000

        response = client.stream("GET")
        read = len(response.read_some())
        response.close()
        received = front.balancer.stats()[0]["bytes_received"] - 1_000_000
        assert read <= received < 1_000_000

    # -- configuration --------------------------------------------------------------------------

    def test_from_env(self, driver, backends):
        a, b, _ = backends
        front = driver.from_env(
            {"LB_BACKENDS": f"{a.url} weight=2, {b.url}", "LB_POLICY": "least_conn",
             "LB_RETRIES": "1", "LB_PRESERVE_HOST": "yes", "LB_READ_TIMEOUT": "250ms"})
        assert front.balancer.settings.policy == "least_conn"
        assert front.settings.retries == 1
        assert front.settings.preserve_host is True
        assert front.settings.read_timeout == 0.25
        assert front.forwarding is front.settings
        assert driver.client(front).get("/").json()["headers"]["Host"] == "svc"

    @pytest.mark.parametrize("environ, message", [
        ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRIES": "x"}, "LB_RETRIES has value 'x'"),
        ({"LB_BACKENDS": "http://127.0.0.1:1", "LB_RETRY_NON_IDEMPOTENT": "maybe"},
         "LB_RETRY_NON_IDEMPOTENT has value 'maybe'"),
        ({"LB_BACKENDS": "ftp://127.0.0.1:1"}, "LB_BACKENDS has value 'ftp://127.0.0.1:1'"),
        ({}, "LB_BACKENDS is not set"),
    ])
    def test_from_env_rejects_bad_settings(self, driver, environ, message):
        with pytest.raises(lb.ConfigError, match=message):
            driver.from_env(environ)

    def test_bad_keyword_arguments(self, driver):
        with pytest.raises(lb.ConfigError, match="retries has value -1"):
            driver.make(["http://127.0.0.1:1"], retries=-1)
        pool = lb.Balancer(["http://127.0.0.1:1"])
        with pytest.raises(lb.ConfigError, match="policy given with balancer="):
            driver.make(balancer=pool, policy="random")
        front = driver.make(balancer=pool, retry_non_idempotent=True)
        assert isinstance(front.settings, lb.ForwardingSettings)
        assert front.settings.retry_non_idempotent is True
        with pytest.raises(TypeError, match="'prefix': prefix is a setting of ProxySettings"):
            driver.make(["http://127.0.0.1:1"], prefix="/api")
        with pytest.raises(TypeError, match=r"'retires' \(did you mean retries\?\)"):
            driver.make(balancer=pool, retires=1)

    def test_front_ends_sharing_a_balancer_each_have_their_own_forwarding_settings(self,
                                                                                   driver):
        pool = lb.Balancer(["http://127.0.0.1:1"], max_fails=7)
        quick = driver.make(balancer=pool, retries=0, read_timeout=0.5)
        patient = driver.make(balancer=pool, retries=4, hash_key="header:X-User")
        assert pool_of(quick) is pool_of(patient) is pool
        assert (quick.settings.retries, quick.settings.read_timeout) == (0, 0.5)
        assert (patient.settings.retries, patient.settings.hash_key) == (4, "header:X-User")

    def test_without_backends_the_front_end_reads_lb_variables(self, driver, monkeypatch,
                                                              backends):
        for name in [n for n in os.environ if n.startswith("LB_")]:
            monkeypatch.delenv(name)
        with pytest.raises(lb.ConfigError, match="LB_BACKENDS is not set: it is required"):
            driver.make()
        monkeypatch.setenv("LB_BACKENDS", backends[1].url)
        monkeypatch.setenv("LB_RETRIES", "0")
        front = driver.make(read_timeout=2)              # keywords win over variables
        assert [b.url for b in front.balancer.backends] == [backends[1].url]
        assert (front.settings.retries, front.settings.read_timeout) == (0, 2.0)
        assert driver.client(front).get("/").server == "b"

    def test_exported_lazily_from_the_package(self, driver):
        cls = driver.front_end_class
        assert getattr(lb, cls.__name__) is cls


class _Broken(list):
    """A body whose chunks come from a generator that raises (a list, so the drivers send
    it as a generator of chunks)."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __iter__(self):
        return self._make()
