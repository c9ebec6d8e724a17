"""Each attempt of the transports, against real loopback backends: a backend whose
connection pool is full (the client's own limit: released, not the backend's failure), an
explicit ``read=None`` kept, a multipart upload sent again, each failed attempt in the words every
front-end uses (read from its log line), and which backend answered (the response's
extensions)."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

from ..support.raw_backends import CLOSE, OK
from ..support.servers import refused_url
from ..support.waiting import wait_for

VHOST = "http://svc"


def attempt_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]


# -- a full connection pool ----------------------------------------------------------------

def test_a_backends_full_pool_is_not_its_failure_the_request_is_released_not_retried(
        servers, caplog):
    """a's one connection (``limits=`` is per backend) is held by a hung request: a request
    picked for a waits httpx's pool timeout, and then gets httpx's PoolTimeout naming a, as
    a plain client would. The client's own pool was full: a did nothing wrong (no failure
    counted, nothing logged), and the request is not sent elsewhere after that wait."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    a, b = servers("a"), servers("b")
    a.behaviour = "hang"
    transport = LoadBalancingTransport([a.url, b.url], limits=httpx.Limits(max_connections=1))
    client = httpx.Client(transport=transport, base_url=VHOST,
                          timeout=httpx.Timeout(5, pool=0.3))

    def hang() -> None:
        try:
            client.get("/1")            # (once a stops: retried on b, or an error)
        except httpx.HTTPError:
            pass

    hung = threading.Thread(target=hang)
    hung.start()
    try:
        assert wait_for(lambda: a.requests == 1)
        assert client.get("/2").json()["server"] == "b"             # round robin: b, then a
        with pytest.raises(httpx.PoolTimeout) as info:
            client.post("/3", content=b"order")                      # a's pool is full
        assert str(info.value) == ("no free connection within 300ms (the backend's connection "
                                   f"pool is full) (backends tried: {a.url})")
        assert info.value.backends_tried == (a.url,)
        assert (a.requests, b.requests) == (1, 1)
        rows = {row["url"]: row for row in transport.balancer.stats()}
        assert (rows[a.url]["failures"], rows[a.url]["in_flight"]) == (0, 1)   # the hung one
        assert (rows[b.url]["failures"], rows[b.url]["in_flight"]) == (0, 0)
        assert attempt_lines(caplog) == []
    finally:
        a.stop()                                                     # the hung one ends
        hung.join(5)
        client.close()


def test_a_full_pool_is_released_by_the_async_transport_too(servers):
    a = servers("a")
    a.behaviour = "hang"

    async def scenario() -> tuple[str, dict]:
        transport = AsyncLoadBalancingTransport([a.url], limits=httpx.Limits(max_connections=1))
        async with httpx.AsyncClient(transport=transport, base_url=VHOST,
                                     timeout=httpx.Timeout(5, pool=0.2)) as client:
            hung = asyncio.create_task(client.get("/1"))
            while a.requests == 0:
                await asyncio.sleep(0.005)
            with pytest.raises(httpx.PoolTimeout) as info:
                await client.get("/2")
            row = transport.balancer.stats()[0]
            hung.cancel()
            await asyncio.gather(hung, return_exceptions=True)
            return str(info.value), row

    text, row = asyncio.run(scenario())
    assert text == ("no free connection within 200ms (the backend's connection pool is full) "
                    f"(backends tried: {a.url})")
    assert (row["failures"], row["in_flight"]) == (0, 1)


def test_when_every_pool_is_full_the_error_says_so_and_names_the_backends(servers):
    a = servers("a")
    a.behaviour = "hang"
    transport = LoadBalancingTransport([a.url], limits=httpx.Limits(max_connections=1))
    client = httpx.Client(transport=transport, base_url=VHOST,
                          timeout=httpx.Timeout(5, pool=0.2))
    hung = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, client.get, "/1"))
    hung.start()
    try:
        assert wait_for(lambda: a.requests == 1)
        with pytest.raises(httpx.PoolTimeout) as info:
            client.get("/2")
        assert str(info.value) == ("no free connection within 200ms (the backend's connection "
                                   f"pool is full) (backends tried: {a.url})")
    finally:
        a.stop()
        hung.join(5)
        client.close()


# -- timeouts ------------------------------------------------------------------------------

def test_an_explicit_read_none_is_kept_as_the_adapter_keeps_it(servers):
    """An event stream read with ``httpx.Timeout(5, read=None)`` (httpx's way to say 'no
    read timeout': its clients always carry a timeout) pauses longer than the read_timeout
    setting between two pieces: read to the end, and no failure counted. The adapter uses an
    explicit ``timeout=(5, None)`` as given; only numbers are bounded by the settings."""
    a = servers("a")
    a.behaviour, a.body_size = "pause_body", 10_000          # half, a pause, the rest
    session = requests.Session()
    session.mount(f"{VHOST}/", lb.LoadBalancingAdapter([a.url], read_timeout=0.3))
    timer = threading.Timer(0.8, a.release.set)
    timer.start()
    assert len(session.get(f"{VHOST}/events", timeout=(5, None)).content) == 10_000
    timer.join(2)

    a.release.clear()
    transport = LoadBalancingTransport([a.url], read_timeout=0.3)
    timer = threading.Timer(0.8, a.release.set)
    timer.start()
    try:
        with httpx.Client(transport=transport, base_url=VHOST) as client:
            with client.stream("GET", "/events", timeout=httpx.Timeout(5, read=None)) as r:
                assert len(r.read()) == 10_000
        assert transport.balancer.stats()[0]["failures"] == 0
    finally:
        timer.join(2)


# -- bodies sent again ---------------------------------------------------------------------

@pytest.mark.parametrize("upload", ["bytes", "file"])
def test_a_multipart_upload_is_sent_again_as_the_adapter_sends_it(servers, tmp_path, upload):
    """A PUT with ``files=`` answered 503 by a: sent again to b, as the adapter does; httpx's
    multipart body renders again (a file is read again from its start)."""
    a, b = servers("a"), servers("b")
    a.status = 503
    path = tmp_path / "f.txt"
    path.write_bytes(b"data")

    def files():
        return {"f": ("f.txt", b"data" if upload == "bytes" else path.open("rb"))}

    session = requests.Session()
    session.mount(f"{VHOST}/", lb.LoadBalancingAdapter([a.url, b.url]))
    assert session.put(f"{VHOST}/up", files=files()).headers["X-Server"] == "b"

    with httpx.Client(transport=LoadBalancingTransport([a.url, b.url])) as client:
        response = client.put(f"{VHOST}/up", files=files(), data={"note": "n"})
    assert (response.status_code, response.headers["X-Server"]) == (200, "b")
    body = response.json()["body"]
    assert 'name="f"; filename="f.txt"' in body and "data" in body and 'name="note"' in body
    assert a.received[-1][3] == b.received[-1][3]                 # the same bytes twice


class ReadOnce:
    """A file that can be read once, from where it is (a socket's, a pipe's)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


def test_a_multipart_upload_of_a_file_read_once_is_not_sent_again(servers):
    a, b = servers("a"), servers("b")
    a.status = 503
    with httpx.Client(transport=LoadBalancingTransport([a.url, b.url])) as client:
        response = client.put(f"{VHOST}/up", files={"f": ("f.txt", ReadOnce(b"data"))})
    assert (response.status_code, b.requests) == (503, 0)


# -- how each failed attempt is told -------------------------------------------------------

def failed_once(url: str, caplog, *, stream: bool = False, **options) -> str:
    """The reason in the one attempt line of a GET to ``url`` (no retry), after the error."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    transport = LoadBalancingTransport([url], retries=0, **options)
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.TransportError):
        if stream:
            with client.stream("GET", f"{VHOST}/") as response:
                response.read()
        else:
            client.get(f"{VHOST}/")
    [line] = attempt_lines(caplog)
    prefix = f"GET attempt 1 on {url} failed: "
    suffix = ("; not retried: its response had begun to reach the client" if stream
              else "; not retried: no retries left (0 used)")
    assert line.startswith(prefix) and line.endswith(suffix), line
    return line[len(prefix):-len(suffix)]


def test_a_refused_connection(caplog):
    assert failed_once(refused_url(), caplog) == "connection refused"


def test_a_read_timeout_names_its_limit(raw_backend, caplog):
    backend = raw_backend([1.0, OK])
    assert failed_once(backend.url, caplog, read_timeout=0.2) == "read timed out after 200ms"


def test_a_backend_that_hangs_up_without_an_answer(scripted, caplog):
    backend = scripted([CLOSE])
    assert failed_once(backend.url, caplog) == "the connection was closed without a response"


def test_an_answer_that_is_not_http(scripted, caplog):
    backend = scripted([[b"garbage\r\n\r\n", CLOSE]])
    assert failed_once(backend.url, caplog) == "not an HTTP response (status line 'garbage')"


def test_a_body_that_breaks_off_is_told_as_every_front_end_tells_it(scripted, caplog):
    backend = scripted([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", CLOSE]])
    assert failed_once(backend.url, caplog, stream=True) == (
        "the response body broke off after 3 bytes (the response ended early (3 bytes read, "
        "97 more expected))")


def test_a_body_that_stops_coming_names_the_read_limit(raw_backend, caplog):
    backend = raw_backend([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1.0, b"x" * 7])
    assert failed_once(backend.url, caplog, stream=True, read_timeout=0.2) == (
        "the response body broke off after 3 bytes (read timed out after 200ms)")


# -- which backend answered ----------------------------------------------------------------

def test_the_response_names_the_backend_that_answered_and_the_attempts(servers):
    a, b = servers("a"), servers("b")
    a.status = 503
    with httpx.Client(transport=LoadBalancingTransport([a.url, b.url])) as client:
        retried = client.get(f"{VHOST}/x")                          # a's 503, then b
    with httpx.Client(transport=LoadBalancingTransport([b.url])) as client:
        direct = client.get(f"{VHOST}/y")
    assert (retried.extensions["lbmiddleware.backend"],
            retried.extensions["lbmiddleware.attempts"]) == (b.url, 2)
    assert (direct.extensions["lbmiddleware.backend"],
            direct.extensions["lbmiddleware.attempts"]) == (b.url, 1)
    assert "http_version" in direct.extensions                       # httpx's own kept

    async def scenario() -> dict:
        async with httpx.AsyncClient(
                transport=AsyncLoadBalancingTransport([a.url, b.url])) as client:
            return (await client.get(f"{VHOST}/z")).extensions

    extensions = asyncio.run(scenario())
    assert (extensions["lbmiddleware.backend"], extensions["lbmiddleware.attempts"]) == \
        (b.url, 2)
