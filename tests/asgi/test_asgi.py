"""LoadBalancerMiddleware called in-process (as an ASGI server would) over real backends."""

from __future__ import annotations

import asyncio
import json

import pytest

import lbmiddleware as lb
from lbmiddleware.asgi import LoadBalancerMiddleware

from ..support.asgi_client import Call
from ..support.servers import refused_url


def run(coroutine):
    return asyncio.run(coroutine)


async def local_app(scope, receive, send):
    """The wrapped application: answers 'local' and records the scope types it saw."""
    local_app.seen.append(scope["type"])
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"local"})


local_app.seen = []


def proxy(backends, app=None, **options):
    options.setdefault("max_fails", 100)
    return LoadBalancerMiddleware(app, backends=[b if isinstance(b, str) else b.url for b in backends],
                                  **options)


async def get(mw, path="/", **kwargs):
    return await Call(mw, kwargs.pop("method", "GET"), path, **kwargs).run()


def in_flight(mw):
    return {row["url"]: row["in_flight"] for row in mw.balancer.stats()}


# -- routing ------------------------------------------------------------------------------------

def test_requests_under_the_prefix_are_proxied_and_others_go_to_the_app(backends):
    a = backends[0]
    mw = proxy([a], app=local_app, prefix="/api")

    async def scenario():
        inside = await get(mw, "/api/users/7", query=b"full=1")
        exact = await get(mw, "/api")
        beside = await get(mw, "/apix")
        other = await get(mw, "/")
        return inside, exact, beside, other

    inside, exact, beside, other = run(scenario())
    assert inside.status == 200 and inside.json()["path"] == "/api/users/7?full=1"
    assert exact.json()["path"] == "/api"
    assert beside.body == b"local" and other.body == b"local"
    assert a.requests == 2


def test_strip_prefix_removes_it_from_the_upstream_path(backends):
    mw = proxy(backends[:1], prefix="/api/", strip_prefix=True)

    async def scenario():
        return [(await get(mw, path, query=b"q=1")).json()["path"]
                for path in ("/api/users/7", "/api", "/api/")]

    assert run(scenario()) == ["/users/7?q=1", "/?q=1", "/?q=1"]


def test_backend_base_path_is_kept(backends):
    mw = LoadBalancerMiddleware(None, backends=[backends[0].url + "/v1"], prefix="/api",
                                strip_prefix=True)
    assert run(get(mw, "/api/x")).json()["path"] == "/v1/x"


def test_without_an_app_other_paths_get_404(backends):
    mw = proxy(backends[:1], prefix="/api")
    response = run(get(mw, "/elsewhere"))
    assert response.status == 404 and response.body == b"404 Not Found: no route for this path\n"
    assert backends[0].requests == 0


def test_lifespan_and_websocket_scopes_pass_through_to_the_app(backends):
    """Websockets outside the prefix are the app's (under it they are refused: not proxied)."""
    local_app.seen.clear()
    mw = proxy(backends[:1], app=local_app, prefix="/api")
    sent = []

    async def scenario():
        lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive():
            return next(lifespan)

        async def send(message):
            sent.append(message["type"])

        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await mw({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    run(scenario())
    assert local_app.seen == ["lifespan", "websocket"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete",
                    "websocket.accept", "websocket.close"]


def test_without_an_app_lifespan_completes_and_websockets_are_closed(backends):
    mw = proxy(backends[:1])
    sent = []

    async def scenario():
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message["type"])

        await mw({"type": "lifespan"}, receive, send)
        await mw({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    run(scenario())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete", "websocket.close"]


# -- what reaches the backend -------------------------------------------------------------------

def test_method_path_query_headers_and_body_arrive_unchanged(backends):
    a = backends[0]
    mw = proxy([a])
    response = run(get(mw, "/items/a%2Fb", method="PUT", query=b"x=1&y=%20",
                       headers=[("Content-Type", "application/json"), ("X-Custom", "v1"),
                                ("Accept", "*/*")],
                       body=b'{"k": "v"}'))
    seen = response.json()
    assert seen["method"] == "PUT" and seen["path"] == "/items/a%2Fb?x=1&y=%20"
    assert seen["body"] == '{"k": "v"}'
    headers = seen["headers"]
    assert headers["Content-Type"] == "application/json" and headers["X-Custom"] == "v1"
    assert headers["Content-Length"] == "10"
    assert headers["Host"] == f"127.0.0.1:{a.port}"
    assert headers["X-Forwarded-For"] == "203.0.113.7"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "front.example"


def test_preserve_host_sends_the_clients_host(backends):
    mw = proxy(backends[:1], preserve_host=True)
    assert run(get(mw, "/")).json()["headers"]["Host"] == "front.example"


def test_hop_by_hop_and_connection_named_headers_are_dropped_both_ways(backends):
    a = backends[0]
    a.extra_headers = [("Connection", "X-Hop-Out"), ("X-Hop-Out", "1"), ("Keep-Alive", "timeout=5"),
                       ("Upgrade", "h2c"), ("X-Kept", "yes")]
    mw = proxy([a])
    response = run(get(mw, "/", headers=[
        ("Connection", "keep-alive, X-Hop-In"), ("X-Hop-In", "secret"), ("Keep-Alive", "300"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
        ("Upgrade", "websocket"), ("X-Kept", "yes")]))
    sent = {name.lower() for name in response.json()["headers"]}
    for hop in ("connection", "x-hop-in", "keep-alive", "proxy-connection", "te", "trailer",
                "upgrade"):
        assert hop not in sent
    assert "x-kept" in sent
    returned = {name.decode().lower() for name, _ in response.headers}
    for hop in ("connection", "x-hop-out", "keep-alive", "upgrade"):
        assert hop not in returned
    assert response.header("x-kept") == ["yes"]


@pytest.mark.parametrize("path", ["//evil.example/x", "/http://evil.example/", "/\\evil.example",
                                  "/@evil.example", "//user@evil.example:80/"])
def test_paths_that_look_like_urls_reach_the_backend_as_paths(backends, path):
    a = backends[0]
    mw = proxy([a])
    seen = run(get(mw, path)).json()
    assert seen["server"] == "a" and a.request_lines == [f"GET {path} HTTP/1.1"]
    assert seen["headers"]["Host"] == f"127.0.0.1:{a.port}"


def test_a_decoded_path_without_raw_path_is_quoted(backends):
    call = Call(proxy(backends[:1]), "GET", "/a b/%/?#", raw_path=b"")
    del call.scope["raw_path"]
    assert run(call.run()).json()["path"] == "/a%20b/%25/%3F%23"


@pytest.mark.parametrize("header", [("X-A", "v\r\nInjected: 1"), ("X-A", "v\nInjected: 1"),
                                    ("X-A", "v\x00"), ("X-A\r\nInjected", "1")])
def test_cr_lf_in_a_header_gets_400_and_nothing_is_sent(backends, header):
    a = backends[0]
    response = run(get(proxy([a]), "/", headers=[header]))
    assert response.status == 400 and response.body.startswith(b"400 Bad Request")
    assert a.requests == 0


def test_cr_lf_in_the_path_or_query_gets_400(backends):
    a = backends[0]
    mw = proxy([a])
    assert run(get(mw, "/a", raw_path=b"/a\r\nHost: evil")).status == 400
    assert run(get(mw, "/a", query=b"x=1\r\nEvil: 1")).status == 400
    assert a.requests == 0


@pytest.mark.parametrize("retry_buffer, framing", [
    (65536, ("Content-Length", "22")),            # held whole: our own, true length
    (4, ("Transfer-Encoding", "chunked"))])      # streamed: our own chunked framing
def test_content_length_and_transfer_encoding_together_never_copy_the_framing(
        backends, retry_buffer, framing):
    a = backends[0]
    response = run(get(proxy([a], retry_buffer=retry_buffer), "/upload", method="POST",
                       headers=[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                       body=[b"hello ", b"world, ", b"all of it"]))
    seen = response.json()
    assert seen["body"] == "hello world, all of it"       # not cut at the claimed 5 bytes
    name, value = framing
    assert seen["headers"][name] == value
    other = "Transfer-Encoding" if name == "Content-Length" else "Content-Length"
    assert other not in seen["headers"]


def test_a_large_streamed_body_arrives_whole(backends):
    a = backends[0]
    chunks = [bytes([65 + i]) * 50_000 for i in range(6)]
    response = run(get(proxy([a], retry_buffer=1024), "/", method="POST", body=chunks,
                       headers=[("Content-Length", str(300_000))]))
    seen = response.json()
    assert seen["body"].encode() == b"".join(chunks)
    assert seen["headers"]["Content-Length"] == "300000"


def test_status_headers_and_repeated_set_cookie_arrive_unchanged(backends):
    a = backends[0]
    a.status = 418
    a.extra_headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                       ("X-Multi", "1"), ("X-Multi", "2")]
    response = run(get(proxy([a]), "/"))
    assert response.status == 418
    assert response.header("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert response.header("x-multi") == ["1", "2"]
    assert response.header("x-server") == ["a"]
    assert json.loads(response.body)["server"] == "a"
    assert response.header("content-length") == [str(len(response.body))]


def test_head_requests_get_no_body(backends):
    response = run(get(proxy(backends[:1]), "/", method="HEAD"))
    assert response.status == 200 and response.body == b"" and response.complete


# -- sticky keys and the client address -------------------------------------------------------

def owner_of(backends, key, **options):
    """The backend a fresh ip_hash balancer gives ``key`` (hashing is stable)."""
    return lb.Balancer([b.url for b in backends], policy="ip_hash", **options).lookup(key).url


def test_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing(backends):
    mw = proxy(backends, policy="ip_hash", trusted_proxies=["10.0.0.0/8"])
    expected = owner_of(backends, "203.0.113.7")

    async def scenario():
        return [await get(mw, "/", headers=[("X-Forwarded-For", f"198.51.100.{i}")])
                for i in range(12)]

    for i, response in enumerate(run(scenario())):
        seen = response.json()
        assert f"http://127.0.0.1:{backends['abc'.index(seen['server'])].port}" == expected
        assert seen["headers"]["X-Forwarded-For"] == f"198.51.100.{i}, 203.0.113.7"


def test_x_forwarded_for_from_a_trusted_peer_gives_the_client(backends):
    mw = proxy(backends, policy="ip_hash", trusted_proxies=["10.0.0.0/8"])

    async def scenario():
        return [await get(mw, "/", client=("10.0.0.1", 5000),
                          headers=[("X-Forwarded-For", f"6.6.6.6, 198.51.100.{i}, 10.0.0.9")])
                for i in range(12)]

    servers = set()
    for i, response in enumerate(run(scenario())):
        seen = response.json()
        servers.add(seen["server"])
        url = f"http://127.0.0.1:{backends['abc'.index(seen['server'])].port}"
        assert url == owner_of(backends, f"198.51.100.{i}")
        assert seen["headers"]["X-Forwarded-For"] == f"6.6.6.6, 198.51.100.{i}, 10.0.0.9, 10.0.0.1"
    assert len(servers) > 1          # the key really is the forwarded client


@pytest.mark.parametrize("hash_key, header", [("header:X-User", ("X-User", "{}")),
                                              ("cookie:sid", ("Cookie", "theme=dark; sid={}"))])
def test_sticky_key_from_a_header_or_a_cookie(backends, hash_key, header):
    mw = proxy(backends, policy="ip_hash", hash_key=hash_key)

    async def scenario():
        return [(i, (await get(mw, "/", client=("203.0.113.%d" % (i * 7 % 250), 1),
                               headers=[(header[0], header[1].format(f"user-{i % 6}"))])).json())
                for i in range(18)]

    owners = {}
    for i, seen in run(scenario()):
        owners.setdefault(i % 6, set()).add(seen["server"])
        url = f"http://127.0.0.1:{backends['abc'.index(seen['server'])].port}"
        assert url == owner_of(backends, f"user-{i % 6}")
    assert all(len(servers) == 1 for servers in owners.values())


# -- retries and errors -----------------------------------------------------------------------------

def test_connect_failure_is_retried_for_any_method(backends):
    a = backends[0]
    mw = proxy([refused_url(), a.url])

    async def scenario():
        return [await get(mw, "/", method="POST", body=b"once") for _ in range(4)]

    assert [r.status for r in run(scenario())] == [200] * 4
    assert a.requests == 4


def test_get_is_retried_after_a_reset_and_post_is_not(backends):
    a, b = backends[:2]
    a.behaviour = "close"

    async def first(method):
        mw = proxy([a, b])          # a fresh round-robin: the first pick is the first listed
        return await get(mw, "/", method=method, body=b"x" if method == "POST" else b"")

    assert run(first("GET")).json()["server"] == "b"
    assert (a.requests, b.requests) == (1, 1)
    response = run(first("POST"))
    assert response.status == 502 and response.body == b"502 Bad Gateway: no backend gave a response\n"
    assert (a.requests, b.requests) == (2, 1)       # the POST went out once


def test_retry_non_idempotent_opt_in(backends):
    a, b = backends[:2]
    a.behaviour = "close"
    response = run(get(proxy([a, b], retry_non_idempotent=True), "/", method="POST", body=b"x"))
    assert response.json()["server"] == "b"


def test_failure_status_is_retried_for_get_and_passed_through_for_post(backends):
    a, b = backends[:2]
    a.status = 503
    get_response = run(get(proxy([a, b]), "/"))
    assert get_response.status == 200 and get_response.json()["server"] == "b"
    post_response = run(get(proxy([a, b]), "/", method="POST", body=b"x"))
    assert post_response.status == 503 and post_response.json()["server"] == "a"


def test_when_every_attempt_fails_the_client_gets_the_last_response_as_it_was(backends):
    for server in backends:
        server.status = 503
    response = run(get(proxy(backends), "/"))
    assert response.status == 503
    assert response.header("x-server") == [response.json()["server"]] == ["c"]
    assert [s.requests for s in backends] == [1, 1, 1]


def test_retries_are_bounded_by_the_setting(backends):
    for server in backends:
        server.behaviour = "close"
    response = run(get(proxy(backends, retries=1), "/"))
    assert response.status == 502
    assert sum(s.requests for s in backends) == 2


def test_a_streamed_body_is_not_replayed_and_a_small_one_is(backends):
    a, b = backends[:2]
    a.behaviour = "close"
    big = [b"x" * 4096] * 3
    streamed = run(get(proxy([a, b], retry_buffer=1024), "/", method="PUT", body=big,
                       headers=[("Content-Length", "12288")]))
    assert streamed.status == 502 and b.requests == 0
    small = run(get(proxy([a, b], retry_buffer=1024), "/", method="PUT", body=[b"y" * 500]))
    assert small.status == 200 and small.json()["body"] == "y" * 500


def test_502_when_no_backend_answers():
    mw = proxy([refused_url(), refused_url()])
    response = run(get(mw, "/"))
    assert response.status == 502
    assert response.body == b"502 Bad Gateway: no backend gave a response\n"
    assert response.header("content-type") == ["text/plain; charset=utf-8"]


def test_504_when_the_backend_times_out_and_a_get_moves_on(backends):
    a, b = backends[:2]
    a.behaviour = "hang"
    response = run(get(proxy([a], read_timeout=0.2), "/"))
    assert response.status == 504
    assert response.body == b"504 Gateway Timeout: the backend did not answer in time\n"
    moved = run(get(proxy([a, b], read_timeout=0.2), "/"))
    assert moved.status == 200 and moved.json()["server"] == "b"


def test_503_with_retry_after_when_the_pool_is_empty(backends):
    balancer = lb.Balancer([backends[0].url])
    balancer.update([])
    mw = LoadBalancerMiddleware(None, balancer=balancer)
    response = run(get(mw, "/"))
    assert response.status == 503 and response.header("retry-after") == ["5"]
    assert response.body == b"503 Service Unavailable: no backend is available\n"


def test_a_response_cut_after_its_head_is_not_retried(backends):
    a, b = backends[:2]
    a.behaviour = "truncate"
    a.body_size = 200_000
    response = run(get(proxy([a, b]), "/"))
    assert response.status == 200 and not response.complete
    assert len(response.body) < 200_000
    assert b.requests == 0


# -- client disconnect, in-flight, pooling, concurrency ---------------------------------------------

def test_client_disconnect_mid_response_closes_the_upstream_request(backends):
    a = backends[0]
    a.behaviour = "stall"
    a.body_size = 400_000
    mw = proxy([a])

    async def scenario():
        call = Call(mw, "GET", "/", disconnect_after=1)
        await call.run(timeout=5)
        return call

    call = run(scenario())
    assert call.status == 200 and not call.complete
    assert a.peer_closed.wait(2)
    assert in_flight(mw) == {a.url: 0}
    assert mw.balancer.stats()[0]["failures"] == 0      # the client left: not the backend's fault


def test_client_disconnect_while_waiting_for_the_head(backends):
    a = backends[0]
    a.behaviour = "hang"
    mw = proxy([a], read_timeout=30)

    async def scenario():
        call = Call(mw, "GET", "/")
        asyncio.get_running_loop().call_later(0.2, call.disconnect.set)
        await call.run(timeout=5)           # returns long before the read timeout
        return call

    call = run(scenario())
    assert call.status is None and call.messages == []
    assert in_flight(mw) == {a.url: 0}


def test_client_disconnect_after_a_streamed_upload_while_waiting_for_the_head(backends):
    a = backends[0]
    a.behaviour = "hang"
    mw = proxy([a], read_timeout=30, retry_buffer=1024)

    async def scenario():
        call = Call(mw, "PUT", "/", body=[b"x" * 100_000, b"y" * 100_000],
                    headers=[("Content-Length", "200000")])
        asyncio.get_running_loop().call_later(0.2, call.disconnect.set)
        await call.run(timeout=5)           # returns long before the read timeout
        return call

    call = run(scenario())
    assert call.status is None and call.messages == []
    row = mw.balancer.stats()[0]
    assert (row["in_flight"], row["failures"]) == (0, 0)    # the backend is not blamed


def test_connections_are_kept_alive_and_pooled(backends):
    a = backends[0]
    mw = proxy([a])

    async def scenario():
        for _ in range(10):
            assert (await get(mw, "/")).status == 200
        await asyncio.gather(*(get(mw, "/") for _ in range(8)))
        await asyncio.gather(*(get(mw, "/") for _ in range(8)))

    run(scenario())
    assert a.requests == 26 and a.connections <= 8


def test_a_hanging_backend_does_not_hold_up_other_requests(backends):
    a, b = backends[:2]
    a.behaviour = "hang"
    slow = proxy([a], read_timeout=5)
    fast = proxy([b])

    async def scenario():
        stuck = asyncio.ensure_future(get(slow, "/"))
        await asyncio.sleep(0.05)
        done = [await get(fast, "/") for _ in range(5)]
        assert not stuck.done()
        stuck.cancel()
        return done

    assert [r.status for r in run(scenario())] == [200] * 5


def test_a_backend_killed_under_concurrent_load_costs_no_get_errors(backends):
    a, b, c = backends
    mw = proxy(backends, max_fails=3)

    async def scenario():
        statuses = []
        after_kill = []

        async def kill():
            while len(statuses) < 80:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(b.stop)           # killed mid-load
            after_kill.append(len(statuses))

        async def client():
            # until 150 more requests have been made once b is down (bounded: 3,000 in all)
            while len(statuses) < 3000 and (not after_kill or len(statuses) < after_kill[0] + 150):
                statuses.append((await get(mw, "/")).status)

        await asyncio.gather(kill(), *(client() for _ in range(16)))
        return statuses, after_kill[0]

    statuses, killed_at = run(scenario())
    assert len(statuses) >= killed_at + 150 and set(statuses) == {200}
    row = {r["url"]: r for r in mw.balancer.stats()}[b.url]
    assert row["state"] == "ejected" and row["in_flight"] == 0


# -- configuration ------------------------------------------------------------------------------------

def test_every_setting_can_come_from_lb_variables(backends):
    a = backends[0]
    mw = LoadBalancerMiddleware(local_app, environ={
        "LB_BACKENDS": a.url, "LB_PREFIX": "/api", "LB_STRIP_PREFIX": "true", "LB_POLICY": "latency"})
    assert mw.balancer.settings.policy == "latency" and mw.balancer.policy == "latency"
    assert mw.settings.prefix == "/api" and mw.settings.strip_prefix is True

    async def scenario():
        return (await get(mw, "/api/x")).json()["path"], (await get(mw, "/x")).body

    assert run(scenario()) == ("/x", b"local")


def test_bad_settings_raise_config_error_naming_them():
    with pytest.raises(lb.ConfigError, match="backend URL 'nope'"):
        LoadBalancerMiddleware(None, backends=["nope"])
    with pytest.raises(lb.ConfigError, match="LB_BACKENDS is not set"):
        LoadBalancerMiddleware(None, environ={})
    with pytest.raises(lb.ConfigError, match="LB_STRIP_PREFIX has value 'x'"):
        LoadBalancerMiddleware(None, environ={"LB_BACKENDS": "http://127.0.0.1:1",
                                              "LB_STRIP_PREFIX": "x"})


def test_a_shared_balancer_keeps_its_core_settings(backends):
    balancer = lb.Balancer([b.url for b in backends], policy="least_conn")
    mw = LoadBalancerMiddleware(None, balancer=balancer, prefix="/api", retries=0)
    assert mw.balancer is balancer and mw.forwarding.retries == 0 and mw.settings.prefix == "/api"
    assert mw._retries == 0 and mw.balancer.policy == "least_conn"
    with pytest.raises(lb.ConfigError, match="policy given with balancer=: "
                                             "set them on the shared Balancer"):
        LoadBalancerMiddleware(None, balancer=balancer, policy="random")
    with pytest.raises(TypeError, match="'listen': listen is a setting of GatewaySettings"):
        LoadBalancerMiddleware(None, balancer=balancer, listen=":8000")


def test_ready_settings_objects_and_keywords():
    proxy = lb.ProxySettings(prefix="/api", retry_buffer=10)
    mw = LoadBalancerMiddleware(None, settings=proxy, backends=["http://127.0.0.1:1"],
                                strip_prefix=True, retries=1)
    assert mw.settings == lb.ProxySettings(prefix="/api", retry_buffer=10, strip_prefix=True)
    assert mw.forwarding.retries == 1 and mw._retry_buffer == 10
    from lbmiddleware.gateway_settings import load_settings
    everything = load_settings({"LB_BACKENDS": "http://127.0.0.1:1", "LB_PREFIX": "/x",
                                "LB_RETRIES": "0", "LB_LISTEN": ":9"})
    mw = LoadBalancerMiddleware(None, settings=everything, environ={})
    assert (mw.settings.prefix, mw.forwarding.retries) == ("/x", 0)
    assert [b.url for b in mw.balancer.backends] == ["http://127.0.0.1:1"]


def test_a_request_body_cut_short_by_an_early_answer_never_leaks_into_the_next_request():
    """A backend answers 413 before reading a streamed body: the connection carrying that
    body must not be reused, or the rest of the body would reach the backend after the next
    request's head (RFC 9112 9.6)."""
    connections = []

    async def backend(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST"):           # answers without reading the body
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()

    async def scenario():
        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        mw = proxy([url], retry_buffer=1024, read_timeout=2.0, retries=0)
        try:
            # More than the socket buffers hold: the 413 comes back while it is being sent.
            body = [b"A" * 65536] * 128
            upload = await get(mw, "/", method="POST", body=body,
                               headers=[("Content-Length", str(65536 * 128))])
            pooled = len(mw.upstream.pool(mw.balancer.backends[0])._idle)
            second = await get(mw, "/second")
            return upload, pooled, second
        finally:
            mw.upstream.close()
            server.close()
            await server.wait_closed()

    upload, pooled, second = run(scenario())
    assert upload.status == 413
    assert pooled == 0                    # the cut-short connection was closed, not pooled
    assert (second.status, second.body) == (200, b"second")
    assert len(connections) == 2


def test_response_header_names_reach_the_app_lower_case(backends):
    a = backends[0]
    a.extra_headers = [("Content-Encoding", "identity"), ("X-Mixed-Case", "1")]
    response = run(get(proxy([a]), "/"))
    names = [name for name, _ in response.headers]
    assert b"x-mixed-case" in names and b"content-encoding" in names and b"x-server" in names
    assert all(name == name.lower() for name in names)      # the ASGI spec


def test_an_http2_body_without_length_headers_is_forwarded(backends):
    a = backends[0]
    mw = proxy([a])
    upload = Call(mw, "POST", "/", body=b"hello", headers=[])
    upload.scope["http_version"] = "2"
    upload.scope["headers"] = [(n, v) for n, v in upload.scope["headers"]
                               if n != b"content-length"]
    seen = run(upload.run()).json()
    assert seen["body"] == "hello"
    request = run(get(mw, "/empty"))             # and a GET over HTTP/2 stays bodiless
    get_call = Call(mw, "GET", "/h2")
    get_call.scope["http_version"] = "2"
    assert "Content-Length" not in run(get_call.run()).json()["headers"]
    assert request.status == 200


def test_a_dot_segment_path_cannot_reach_the_backend_outside_the_prefix(backends):
    a = backends[0]
    response = run(get(proxy([a], prefix="/api"), "/api/../admin"))
    assert response.status == 404 and a.requests == 0
