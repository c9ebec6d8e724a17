"""LoadBalancerMiddleware called in-process (as an ASGI server would) over real backends:
what is particular to ASGI (lifespan and websocket scopes, a scope without ``raw_path``,
framing headers given together, HTTP/2 scopes, lower-case header names), client
disconnects, pooling and the event loop, and the settings objects. What every proxy
front-end does is the proxy contract (tests/contract/proxy_contract.py), run against this
middleware by test_asgi_contract.py.
"""

from __future__ import annotations

import asyncio

import pytest

import lbmiddleware as lb
from lbmiddleware.asgi import LoadBalancerMiddleware

from ..support.asgi_client import Call


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
    urls = [b if isinstance(b, str) else b.url for b in backends]
    return LoadBalancerMiddleware(app, backends=urls, **options)


async def get(mw, path="/", **kwargs):
    return await Call(mw, kwargs.pop("method", "GET"), path, **kwargs).run()


def in_flight(mw):
    return {row["url"]: row["in_flight"] for row in mw.balancer.stats()}


# -- scopes other than HTTP ------------------------------------------------------------------------

def test_lifespan_and_websocket_scopes_pass_through_to_the_app(backends):
    """Websockets outside the prefix are the app's (under it they are proxied)."""
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
    """A websocket scope is proxied: a plain HTTP backend answers the upgrade 200, and
    without the denial-response extension that is a close before the handshake."""
    mw = proxy(backends[:1])
    sent = []

    async def scenario():
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"},
                         {"type": "websocket.connect"}])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message["type"])

        await mw({"type": "lifespan"}, receive, send)
        await mw({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    run(scenario())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete", "websocket.close"]


# -- what reaches the backend -------------------------------------------------------------------

def test_a_decoded_path_without_raw_path_is_quoted(backends):
    call = Call(proxy(backends[:1]), "GET", "/a b/%/?#", raw_path=b"")
    del call.scope["raw_path"]
    assert run(call.run()).json()["path"] == "/a%20b/%25/%3F%23"


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


# -- client disconnect, in-flight, pooling, concurrency -------------------------------------------

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


# -- configuration --------------------------------------------------------------------------------

def test_a_shared_balancer_keeps_its_core_settings(backends):
    balancer = lb.Balancer([b.url for b in backends], policy="least_conn")
    mw = LoadBalancerMiddleware(None, balancer=balancer, prefix="/api", retries=0)
    assert mw.balancer is balancer and mw.forwarding.retries == 0 and mw.settings.prefix == "/api"
    assert mw.forwarding.retries == 0 and mw.balancer.policy == "least_conn"
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


