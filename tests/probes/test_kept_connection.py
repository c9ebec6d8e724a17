"""Probes keep one connection per backend (HTTP/1.1 keep-alive), on real loopback servers
that count the connections they accept: reused across probes, replaced when the backend
closed it (no failed probe for that), closed after ``Connection: close``, after a failed
probe, when the backend leaves the pool and when the prober stops (the server sees each
close: no socket left open)."""

from __future__ import annotations

import asyncio
import random
import ssl

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.probes import HealthCheck, Prober

from ..conftest import CERTIFICATE_NAME
from ..support.forking import in_forked_child
from ..support.health_backend import HealthBackend
from ..support.raw_backends import CLOSE, OK
from ..support.waiting import running, until, until_async

STATUSES = ((200, 399),)


def status(code: int, *headers: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s\r\nok" % (
        code, b"".join(header + b"\r\n" for header in headers))


def probes(backend, count, *, timeout=1.0, pause=0.0, ssl_context=None, check=None):
    """``count`` probes of ``backend`` by one HealthCheck on one loop, ``pause`` seconds
    apart; the check is closed after. Returns the results and the check."""
    check = check or HealthCheck("/healthz", STATUSES, timeout, ssl=ssl_context)

    async def scenario():
        results = []
        try:
            for _ in range(count):
                results.append(await check(backend))
                await asyncio.sleep(pause)
        finally:
            check.close()
        return results

    return asyncio.run(scenario()), check


def test_probes_of_one_backend_reuse_one_connection(raw_backend):
    server = raw_backend()
    results, check = probes(lb.Backend(server.url + "/base"), 5)
    assert results == [(True, "status 200")] * 5
    assert server.connections == 1 and check.opened == 1
    assert len(server.heads) == 5
    assert all(b"Connection: close" not in head for head in server.heads)
    until(lambda: server.open_connections() == 0, what="the close seen by the server")


def test_bodies_are_read_to_their_end_before_the_connection_is_reused(raw_backend):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    split = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", 0.05, b"67890"]
    large = b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60_000
    server = raw_backend([chunked], split, [large], [OK])
    results, _ = probes(lb.Backend(server.url), 4)
    assert [ok for ok, _ in results] == [True] * 4
    assert server.connections == 1


def test_a_body_over_the_bound_closes_the_connection(raw_backend):
    over = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    server = raw_backend([over], [OK], [OK])
    results, _ = probes(lb.Backend(server.url), 3)
    assert results == [(True, "status 200")] * 3            # the status decides
    assert server.connections == 2                          # cut after 64 KiB, then kept


def test_an_idle_connection_the_backend_closed_is_replaced_without_a_failure(scripted):
    server = scripted([[OK, CLOSE]])            # every connection: one answer, then closed
    results, check = probes(lb.Backend(server.url), 4, pause=0.05)
    assert results == [(True, "status 200")] * 4
    assert server.connections == 4 == check.opened


def test_a_kept_connection_found_dead_on_the_request_is_retried_once_on_a_fresh_one(scripted):
    # Connection 0 answers the first probe, then closes on the second request unanswered
    # (the backend's idle timeout meeting the probe): the probe goes on, on connection 1.
    server = scripted([OK, CLOSE], [OK, OK])
    results, check = probes(lb.Backend(server.url), 3)
    assert results == [(True, "status 200")] * 3
    assert server.connections == 2 == check.opened
    assert len(server.requests) == 4


def test_the_retry_is_made_once_and_on_a_fresh_connection_only(scripted):
    server = scripted([OK, CLOSE], [CLOSE])
    results, _ = probes(lb.Backend(server.url), 2)
    assert results == [(True, "status 200"), (False, "the backend closed the connection")]
    assert server.connections == 2
    # A fresh connection that closes unanswered is a failure at once (no retry).
    fresh = scripted([CLOSE])
    results, _ = probes(lb.Backend(fresh.url), 1)
    assert results == [(False, "the backend closed the connection")]
    assert fresh.connections == 1


def test_the_retry_fits_in_the_same_timeout(scripted):
    server = scripted([OK, CLOSE], [[1.0, OK]])         # the fresh connection is slow
    check = HealthCheck("/healthz", STATUSES, 0.3)

    async def scenario():
        first = await check(lb.Backend(server.url))
        started = asyncio.get_running_loop().time()
        second = await check(lb.Backend(server.url))
        check.close()
        return first, second, asyncio.get_running_loop().time() - started

    first, second, elapsed = asyncio.run(scenario())
    assert first == (True, "status 200")
    assert second == (False, "timeout after 300ms")
    assert elapsed < 0.45


def test_a_connection_close_answer_is_honoured(raw_backend):
    closing = status(200, b"Connection: close")         # the server itself keeps it open
    server = raw_backend([closing], [closing], [closing])
    results, check = probes(lb.Backend(server.url), 3)
    assert results == [(True, "status 200")] * 3
    assert server.connections == 3 == check.opened
    until(lambda: server.open_connections() == 0, what="every connection closed")


def test_a_backend_that_closes_after_each_answer_gets_a_connection_per_probe():
    with HealthBackend("a") as server:
        results, _ = probes(lb.Backend(server.url), 3)
        assert results == [(True, "status 200")] * 3
        assert len(server.probes_of()) == 3


def test_a_failed_probe_closes_its_connection(raw_backend):
    server = raw_backend([status(503)], [OK], [0.5, OK], [OK], [OK])
    results, _ = probes(lb.Backend(server.url), 5, timeout=0.25)
    assert results == [(False, "status 503"), (True, "status 200"),
                       (False, "timeout after 250ms"), (True, "status 200"),
                       (True, "status 200")]
    # 503: closed, a new one for the pass; timeout: closed, a new one kept for the last two.
    assert server.connections == 3


def test_tls_is_negotiated_once_for_the_kept_connection(raw_backend, certificate):
    cert, key = certificate
    names = []
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server_side.sni_callback = lambda sock, name, context: names.append(name)
    server = raw_backend(tls=server_side)
    trusting = ssl.create_default_context(cafile=cert)
    backend = lb.Backend(f"https://127.0.0.1:{server.port}", server_name=CERTIFICATE_NAME)
    results, _ = probes(backend, 3, ssl_context=trusting)
    assert results == [(True, "status 200")] * 3
    assert server.connections == 1 and names == [CERTIFICATE_NAME]


def test_a_new_server_name_for_the_same_url_opens_a_new_connection(raw_backend):
    server = raw_backend()
    check = HealthCheck("/healthz", STATUSES, 1.0)

    async def scenario():
        results = [await check(lb.Backend(server.url)),
                   await check(lb.Backend(server.url, weight=3)),      # same connection
                   await check(lb.Backend(server.url, server_name="orders.internal"))]
        check.close()
        return results

    assert [ok for ok, _ in asyncio.run(scenario())] == [True] * 3
    assert server.connections == 2
    assert b"Host: orders.internal:%d" % server.port in server.heads[2]


def test_a_check_used_on_a_new_loop_opens_a_new_connection_and_closes_the_old_one(raw_backend):
    server = raw_backend()
    check = HealthCheck("/healthz", STATUSES, 1.0)
    backend = lb.Backend(server.url)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(check(backend)) == (True, "status 200")
        assert second.run_until_complete(check(backend)) == (True, "status 200")
        first.run_until_complete(asyncio.sleep(0.01))       # the old one's close runs there
        until(lambda: server.open_connections() == 1, what="the first loop's connection closed")
        check.close()
        second.run_until_complete(asyncio.sleep(0.01))
    finally:
        first.close()
        second.close()
    assert server.connections == 2
    until(lambda: server.open_connections() == 0, what="every connection closed")


def test_a_forked_child_leaves_the_parent_s_kept_connection_alone(raw_backend):
    # The child shares the parent's epoll set: closing the parent's connection there would
    # unregister it in the parent too, whose next probe would then never see its answer.
    server = raw_backend()
    check = HealthCheck("/healthz", STATUSES, 1.0)
    backend = lb.Backend(server.url)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(check(backend)) == (True, "status 200")

        def child() -> bytes:
            result = asyncio.new_event_loop().run_until_complete(check(backend))
            if result != (True, "status 200") or check.opened != 2:
                raise RuntimeError(f"the child's check: {result}, {check.opened} opened")
            return b""

        assert in_forked_child(child).exit_code == 0
        assert loop.run_until_complete(check(backend)) == (True, "status 200")
        assert check.opened == 1 and server.connections == 2    # the child's own, and ours
    finally:
        check.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()


# -- the prober: removed backends and a stopped prober leave no connection open --------------

def test_the_prober_keeps_one_connection_per_backend_and_closes_it_when_the_backend_leaves(
        raw_backend):
    a, b = raw_backend(), raw_backend()
    pool = Balancer([a.url, b.url], health_check="/healthz", health_check_interval=0.02,
                    health_check_timeout=1.0)
    prober = Prober(pool, pool.settings, rng=random.Random(1))

    async def scenario():
        async with running(prober):
            await until_async(lambda: len(a.heads) >= 5 and len(b.heads) >= 5, what="probes")
            assert a.connections == b.connections == 1
            pool.update([b.url])                                # a leaves
            await until_async(lambda: a.open_connections() == 0, what="a's connection closed")
            heads = len(b.heads)
            await until_async(lambda: len(b.heads) >= heads + 3, what="b still probed")
            assert b.connections == 1 and b.open_connections() == 1
            assert set(prober.health_check.kept) <= {b.url}        # (empty during a probe)
        # Stopped: b's connection is closed too.
        await until_async(lambda: b.open_connections() == 0, what="b's connection closed")
        return prober.health_check.kept

    assert asyncio.run(scenario()) == {}
    assert a.connections == 1 and b.connections == 1


def test_a_backend_removed_during_its_probe_leaves_no_connection(raw_backend):
    slow = raw_backend(*([[0.3, OK]] * 10))
    pool = Balancer([slow.url], health_check="/healthz", health_check_interval=0.02,
                    health_check_timeout=1.0)
    prober = Prober(pool, pool.settings, rng=random.Random(1))

    async def scenario():
        async with running(prober):
            await until_async(lambda: len(slow.heads) >= 1, what="a probe in progress")
            pool.update(["http://127.0.0.1:9"])                 # slow leaves mid-probe
            await until_async(lambda: slow.open_connections() == 0, what="its connection closed")
            return dict(prober.health_check.kept)

    assert slow.url not in asyncio.run(scenario())
