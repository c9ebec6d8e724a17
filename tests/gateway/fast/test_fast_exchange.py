"""The fast path's exchange and dispatcher (``gateway/fast/exchange.py``, ``dispatch.py``) end
to end: the fast server (its :class:`ClientConnection`, :class:`Dispatcher`, upstream pools) in
this test's uvloop loop, the gateway's app built from ``LB_*`` settings or a config file's
routes, real loopback backends in threads, clients on raw sockets.

What the exchange owns: the attempts (retries, 502/503/504, a failing status retried, the
deadline), what the balancer learns (in flight back to 0, bytes both ways, the pool owned
by the loop), the client leaving (upstream aborted, the attempt released or ended), a body
that breaks off (the client cut, the attempt failed), the response's framing to the client
(chunked, HTTP/1.0 close-delimited, HEAD, 204, 304), uploads held or streamed with flow
control, an early answer during an upload, ``100-continue``, the sticky cookie, routes (404
outside them, requests counted per entry, a retired route's connections closed), departures
and the dispatcher's close. The rules themselves are the proxy contract's
(tests/gateway/test_gateway_contract.py runs it under the fast server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import textwrap
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

from lbmiddleware.asgi.exchange import Forwarder
from lbmiddleware.gateway.app import GatewayApp, RoutesGatewayApp, make_app
from lbmiddleware.gateway.config import read_config
from lbmiddleware.gateway.fast.connection import ClientConnection, Request
from lbmiddleware.gateway.fast.dispatch import Dispatcher
from lbmiddleware.gateway.fast.server import ServerState
from lbmiddleware.gateway.fast.wire import DateHeader
from lbmiddleware.gateway_settings import GatewaySettings, load_settings
from lbmiddleware.upstream.deadlines import Deadlines
from lbmiddleware.upstream.head import request_head

from ...proxy.test_access import access_records
from ...support.servers import RawServer, read_request_head, refused_url

SHORT = {"LB_CONNECT_TIMEOUT": "1", "LB_READ_TIMEOUT": "2"}


# -- the server in this loop ---------------------------------------------------------------

class Fast:
    """The fast server on 127.0.0.1 (port chosen by the OS) over the gateway's app: from
    ``LB_*`` ``environ``, or the routes of the config file ``config``."""

    def __init__(self, environ: dict[str, str] | None = None, *, config: Any = None) -> None:
        if config is not None:
            self.settings: Any = read_config(str(config))
            self.app: GatewayApp | RoutesGatewayApp = RoutesGatewayApp(
                self.settings, reload_on_sighup=False)
        else:
            self.settings = load_settings(environ={**SHORT, **(environ or {})})
            self.app = make_app(self.settings)
        self.dispatcher = Dispatcher(self.app)
        self.state: ServerState | None = None
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> Fast:
        loop = asyncio.get_running_loop()
        await self.app.ready()
        self.state = state = ServerState(self.settings[GatewaySettings], self.dispatcher,
                                         _no_upgrade, date=DateHeader(), deadlines=Deadlines())
        self.server = await loop.create_server(lambda: ClientConnection(state, loop),
                                               "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None and self.state is not None
        self.server.close()
        for connection in list(self.state.connections):
            connection.transport.abort()
        await asyncio.sleep(0)
        self.dispatcher.close()
        await self.app.aclose()

    @property
    def balancer(self) -> Any:
        app = self.app
        assert isinstance(app, GatewayApp)
        return app.balancer

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str = "GET", path: str = "/", *,
                      headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                      version: str = "1.1") -> Answer:
        """One request on a new connection; the answer, and whether the server closed."""
        reader, writer = await self.connect()
        try:
            writer.write(head(method, path, headers, body, version) + body)
            answer = await read_answer(reader, head_request=method == "HEAD")
            answer.closed = await closed(reader)
            return answer
        finally:
            writer.close()


def _no_upgrade(transport: asyncio.Transport, data: bytes) -> None:
    transport.close()


def head(method: str, path: str, headers: tuple[tuple[str, str], ...], body: bytes,
         version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: front.example"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(name.lower() in ("content-length", "transfer-encoding")
                        for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    framing: str            # "length", "chunked", "close" or "none"
    complete: bool = True   # the body came whole (False: the connection was cut)
    closed: bool = False

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]


async def read_answer(reader: asyncio.StreamReader, *, head_request: bool = False) -> Answer:
    """One response (interim ones skipped), its body read by its framing."""
    while True:
        status_line = await reader.readline()
        assert status_line, "the connection closed before a response"
        status = int(status_line.split()[1])
        headers = []
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        if status >= 200 or status == 101:
            break
    answer = Answer(status, headers, b"", "none")
    if head_request or status in (204, 304):
        return answer
    try:
        if "chunked" in ",".join(answer.header("transfer-encoding")):
            answer.framing = "chunked"
            while size := int((await reader.readline()).split(b";")[0], 16):
                answer.body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readline()
        elif answer.header("content-length"):
            answer.framing = "length"
            answer.body = await reader.readexactly(int(answer.header("content-length")[0]))
        else:
            answer.framing = "close"
            answer.body = await reader.read()
    except (asyncio.IncompleteReadError, ValueError, ConnectionError) as exc:
        answer.complete = False
        if isinstance(exc, asyncio.IncompleteReadError):
            answer.body += exc.partial
    return answer


async def closed(reader: asyncio.StreamReader, within: float = 0.3) -> bool:
    """Whether the peer closes (EOF) within ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


def run(scenario: Callable[[], Awaitable[object]]) -> Any:
    return uvloop.run(asyncio.wait_for(scenario(), 30))


async def until(condition: Callable[[], object], limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "the condition did not come true"
        await asyncio.sleep(0.005)


def stats(balancer: Any) -> dict[str, dict[str, Any]]:
    return {row["url"]: row for row in balancer.stats()}


class Listening(RawServer):
    """A backend that reads each request head (and a Content-Length body), then does what
    ``answer(head, conn)`` says, and notes when the proxy closes the connection
    (``closed_by_peer``: the handler reads the proxy's EOF)."""

    def __init__(self, answer: Callable[[bytes, socket.socket], None]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.closed_by_peer = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        while not self.stopping.is_set():
            request = read_request_head(reader)
            if request is None:
                self.closed_by_peer.set()
                return
            self.heads.append(request)
            for line in request.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    reader.read(int(line.split(b":")[1]))
            self.answer(request, conn)


def silent(request: bytes, conn: socket.socket) -> None:
    """Never answer: wait for the proxy to close."""
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def ok(body: bytes, *extra: bytes) -> Callable[[bytes, socket.socket], None]:
    def answer(request: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in extra)
                     + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return answer


# -- the request head sent upstream --------------------------------------------------------

def test_the_upstream_head_is_the_coroutine_clients():
    """Host first when given, the headers, then the framing: chunked without a length, a
    Content-Length with a body and for POST, PUT and PATCH even when empty (as
    ``HostPool.request`` writes it)."""
    headers = [(b"accept", b"*/*"), (b"X-Forwarded-Proto", b"http")]
    assert request_head(b"GET", b"/a?b=1", headers, b"10.0.0.1:8001", 0) == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: 10.0.0.1:8001\r\naccept: */*\r\n"
        b"X-Forwarded-Proto: http\r\n\r\n")
    assert request_head(b"POST", b"/", [], None, 0) == (
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert request_head(b"PUT", b"/", [], None, None) == (
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert request_head(b"DELETE", b"/", [(b"Host", b"front")], None, 3) == (
        b"DELETE / HTTP/1.1\r\nHost: front\r\nContent-Length: 3\r\n\r\n")


# -- attempts and what the balancer learns ---------------------------------------------------

def test_requests_go_round_and_the_pool_learns_their_bytes(backends):
    a, b = backends[:2]
    a.body_size = b.body_size = 1000

    async def scenario():
        async with Fast({"LB_BACKENDS": f"{a.url},{b.url}"}) as fast:
            reader, writer = await fast.connect()
            for _ in range(4):          # one kept-alive connection
                writer.write(head("POST", "/x", (), b"12345") + b"12345")
                answer = await read_answer(reader)
                assert (answer.status, answer.body) == (200, b"x" * 1000)
            writer.close()
            rows = stats(fast.balancer)
            assert fast.balancer.lane is not None         # the loop owns the pool
            return rows, fast
    rows, fast = run(scenario)
    assert fast.balancer.lane is None                     # given back at the close
    assert a.requests == b.requests == 2
    for url in (a.url, b.url):
        row = rows[url]
        assert (row["requests"], row["in_flight"], row["failures"]) == (2, 0, 0)
        assert (row["bytes_sent"], row["bytes_received"]) == (10, 2000)


def test_a_refused_backend_is_retried_and_502_when_none_answers(backends, access_log):
    down = refused_url()

    async def scenario():
        async with Fast({"LB_BACKENDS": f"{down},{backends[0].url}", "LB_RETRIES": "1",
                         "LB_POLICY": "least_conn", "LB_ACCESS_LOG": "1"}) as fast:
            answers = [await fast.request() for _ in range(2)]
            assert [a.status for a in answers] == [200, 200]
        async with Fast({"LB_BACKENDS": f"{down},{refused_url()}", "LB_RETRIES": "1",
                         "LB_ACCESS_LOG": "1"}) as fast:
            bad = await fast.request("HEAD")
            assert (bad.status, bad.body, bad.header("content-type")) == (
                502, b"", ["text/plain; charset=utf-8"])
            assert [row["in_flight"] for row in stats(fast.balancer).values()] == [0, 0]
    run(scenario)
    lines = access_records(access_log)
    assert [line["status"] for line in lines] == ["200", "200", "502"]
    assert lines[-1]["attempts"] == "2" and lines[-1]["method"] == "HEAD"


def test_a_failing_status_moves_on_and_the_last_one_is_the_answer(backends):
    a, b = backends[:2]
    a.status = 503

    async def scenario():
        async with Fast({"LB_BACKENDS": f"{a.url},{b.url}", "LB_RETRIES": "1"}) as fast:
            moved = [await fast.request() for _ in range(2)]
            b.status = 503
            last = await fast.request()
            return moved, last, stats(fast.balancer)
    moved, last, rows = run(scenario)
    assert [answer.status for answer in moved] == [200, 200]
    assert last.status == 503 and b'"server"' in last.body       # the backend's own 503
    assert sum(row["in_flight"] for row in rows.values()) == 0


def test_no_backend_is_503_with_retry_after(backends):
    async def scenario():
        async with Fast({"LB_BACKENDS": backends[0].url}) as fast:
            fast.balancer.update([])
            return await fast.request()
    answer = run(scenario)
    assert (answer.status, answer.header("retry-after")) == (503, ["5"])


def test_the_deadline_cuts_the_wait_for_the_head_with_504(caplog):
    backend = Listening(silent)
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url, "LB_TIMEOUT": "0.3"}) as fast:
            started = asyncio.get_running_loop().time()
            answer = await fast.request()
            return answer, asyncio.get_running_loop().time() - started
    try:
        answer, took = run(scenario)
    finally:
        backend.stop()
    assert answer.status == 504 and took < 1.5
    assert "the request's 300ms deadline (LB_TIMEOUT) ran out" in caplog.text


# -- the client leaving, a body breaking off -------------------------------------------------

def test_a_client_that_leaves_before_the_head_aborts_the_call_and_releases(access_log):
    backend = Listening(silent)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url, "LB_ACCESS_LOG": "1"}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("GET", "/slow", (), b""))
            await until(lambda: backend.heads)
            writer.close()
            await until(backend.closed_by_peer.is_set)
            await until(lambda: access_records(access_log))
            return stats(fast.balancer)[backend.url]
    try:
        row = run(scenario)
    finally:
        backend.stop()
    assert (row["in_flight"], row["requests"], row["failures"]) == (0, 0, 0)   # released
    (line,) = access_records(access_log)
    assert (line["status"], line["path"], line["attempts"]) == ("499", "/slow", "1")


def test_a_client_that_leaves_during_the_body_ends_the_attempt_with_its_bytes(servers):
    backend = servers("a")
    backend.behaviour = "stall"         # the head and half the body, then waits
    backend.body_size = 100_000

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("GET", "/", (), b""))
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            await reader.readuntil(b"x" * 1000)
            writer.close()
            await until(backend.peer_closed.is_set)
            return stats(fast.balancer)[backend.url]
    row = run(scenario)
    assert (row["in_flight"], row["requests"], row["failures"]) == (0, 1, 0)
    assert 1000 <= row["bytes_received"] <= 50_000


def test_a_body_that_breaks_off_cuts_the_client_and_fails_the_attempt(servers, caplog):
    backend = servers("a")
    backend.behaviour = "truncate"      # the head and half the body, then closes
    backend.body_size = 10_000
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            answer = await fast.request()
            return answer, stats(fast.balancer)[backend.url]
    answer, row = run(scenario)
    assert answer.status == 200 and not answer.complete and answer.closed
    assert len(answer.body) == 5000
    assert (row["in_flight"], row["requests"], row["failures"]) == (0, 1, 1)
    assert "the response body broke off after 5000 bytes" in caplog.text


# -- the response's framing to the client -----------------------------------------------------

CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"


def _answers(*answers: bytes) -> Listening:
    queue = list(answers)

    def answer(request: bytes, conn: socket.socket) -> None:
        data = queue.pop(0) if queue else CHUNKED
        conn.sendall(data)
        if b"Connection: close" in data:
            conn.shutdown(socket.SHUT_RDWR)
    return Listening(answer)


@pytest.mark.parametrize("upstream", [CHUNKED, UNTIL_CLOSE])
def test_a_body_of_unknown_length_is_chunked_to_11_and_ends_with_the_connection_to_10(
        upstream):
    backend = _answers(upstream, upstream, upstream)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            return [await fast.request(), await fast.request(version="1.0"),
                    await fast.request("HEAD", version="1.0")]
    try:
        new, old, old_head = run(scenario)
    finally:
        backend.stop()
    body = b"hello world"
    assert (new.status, new.body, new.framing, new.closed) == (200, body, "chunked", False)
    assert (old.status, old.body, old.framing, old.closed) == (200, body, "close", True)
    assert old_head.status == 200 and not old_head.header("transfer-encoding")
    assert old.header("connection") == ["close"]


def test_bodiless_answers_have_no_body_and_keep_the_connection():
    backend = _answers(
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            answers = []
            for method in ("GET", "GET", "HEAD"):
                writer.write(head(method, "/", (), b""))
                answers.append(await read_answer(reader, head_request=method == "HEAD"))
            writer.write(head("GET", "/", (), b""))         # the connection still serves
            answers.append(await read_answer(reader))
            writer.close()
            return answers
    try:
        no_content, not_modified, head_only, after = run(scenario)
    finally:
        backend.stop()
    assert (no_content.status, no_content.header("x-a")) == (204, ["1"])
    assert not_modified.status == 304 and not not_modified.header("content-length")
    assert not_modified.header("etag") == ['"x"']
    assert (head_only.status, head_only.header("content-length")) == (200, ["1234"])
    assert (after.status, after.body) == (200, b"hello world")



def test_a_length_the_backends_connection_names_is_still_framed_to_the_client():
    """The response rules drop the fields ``Connection`` names (docs/contract.md
    "Responses"), a ``Content-Length`` among them; the body is framed again all the same
    (here by its length): a kept-alive answer without framing would run to the connection's
    close, the next response read as its body (RFC 9112 6.3)."""
    backend = _answers(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("GET", "/1", (), b"") + head("GET", "/2", (), b""))
            answers = [await asyncio.wait_for(read_answer(reader), 2) for _ in range(2)]
            writer.close()
            return answers
    try:
        first, second = run(scenario)
    finally:
        backend.stop()
    assert (first.status, first.framing, first.body) == (200, "length", b"first")
    assert (second.status, second.body) == (200, b"second")


def test_a_204_to_head_says_no_transfer_encoding():
    """A backend's HEAD answered 204 with ``Transfer-Encoding: chunked``: the client's 204
    says none (RFC 9112 6.1: never with a 1xx or 204), as on the ASGI path."""
    backend = _answers(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            return await fast.request("HEAD")
    try:
        answer = run(scenario)
    finally:
        backend.stop()
    assert answer.status == 204 and not answer.header("transfer-encoding"), answer


# -- request bodies ---------------------------------------------------------------------------

def test_a_large_upload_streams_under_flow_control_and_arrives_whole(servers):
    backend = servers("a")
    backend.body_size = 2
    size = 8 << 20
    blob = bytes(range(256)) * (size // 256)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("PUT", "/big", (("Content-Length", str(size)),), b""))
            for start in range(0, size, 1 << 20):
                writer.write(blob[start:start + (1 << 20)])
                await writer.drain()
            first = await read_answer(reader)
            # chunked from the client: chunked upstream too
            writer.write(head("POST", "/chunked", (("Transfer-Encoding", "chunked"),), b""))
            for start in range(0, size, 1 << 20):
                writer.write(b"%x\r\n%s\r\n" % (1 << 20, blob[start:start + (1 << 20)]))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            second = await read_answer(reader)
            writer.close()
            return first, second, stats(fast.balancer)[backend.url]
    first, second, row = run(scenario)
    assert first.status == second.status == 200
    (_, _, _, put), (_, _, headers, post) = backend.received
    assert put == post == blob
    assert headers.get("Transfer-Encoding") == "chunked"
    assert row["bytes_sent"] == 2 * size and row["in_flight"] == 0


class EarlyAnswer(Listening):
    """A backend that answers 413 once it has read a request's head, then reads and drops
    the rest of the upload until the proxy closes."""

    def handle(self, conn: socket.socket, number: int) -> None:
        self.heads.append(read_request_head(conn.makefile("rb")) or b"")
        conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        with contextlib.suppress(OSError):
            while conn.recv(1 << 20):
                pass
        self.closed_by_peer.set()


def test_an_answer_before_the_upload_ends_stops_it():
    backend = EarlyAnswer(silent)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("POST", "/", (("Content-Length", str(50 << 20)),), b""))
            writer.write(b"x" * (1 << 20))
            answer = await read_answer(reader)
            await until(backend.closed_by_peer.is_set)      # that connection is not reused
            writer.close()
            return answer, stats(fast.balancer)[backend.url]
    try:
        answer, row = run(scenario)
    finally:
        backend.stop()
    assert (answer.status, answer.body) == (413, b"big!")
    assert row["in_flight"] == 0



async def _answered_before_the_body(fast: Fast, request: bytes, *,
                                    trickle: bool = False) -> tuple[Answer, bool]:
    """``request``'s answer, given before its body (never sent, or trickled on while the
    answer is read), and whether the server then closes."""
    reader, writer = await fast.connect()
    writer.write(request)
    if trickle:
        writer.write(b"x" * (1 << 20))
    answer = await asyncio.wait_for(read_answer(reader), 5)
    if trickle:
        writer.write(b"x" * 1000)
    gone = await closed(reader, within=2.0)
    writer.close()
    return answer, gone


def test_a_refusal_before_the_body_says_close_and_closes():
    """A request answered at once while its body is still to come (here 404 outside the
    prefix, the body never sent) is answered ``connection: close`` and the connection closes,
    as granian does: kept open, it waited for good for a body it would only drop (review
    H1, a slowloris against LB_MAX_CONNECTIONS; RFC 9112 9.6 says to announce the close)."""
    async def scenario():
        async with Fast({"LB_BACKENDS": refused_url(), "LB_PREFIX": "/api"}) as fast:
            return await _answered_before_the_body(
                fast, head("POST", "/other", (("Content-Length", "100"),), b""))
    answer, gone = run(scenario)
    assert (answer.status, answer.header("connection"), gone) == (404, ["close"], True)


def test_no_backend_before_the_body_says_close_and_closes(backends):
    """The exchange's own answer (503: no backend) to a streamed upload before its end."""
    async def scenario():
        async with Fast({"LB_BACKENDS": backends[0].url}) as fast:
            fast.balancer.update([])
            return await _answered_before_the_body(
                fast, head("PUT", "/", (("Content-Length", str(50 << 20)),), b""))
    answer, gone = run(scenario)
    assert (answer.status, answer.header("connection"), gone) == (503, ["close"], True)


def test_a_backends_answer_before_the_upload_ends_says_close_and_closes():
    """The backend answers (413) while the upload still comes: the rest of it is dropped,
    the client told so (``connection: close``) and its connection closed."""
    backend = EarlyAnswer(silent)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            return await _answered_before_the_body(
                fast, head("POST", "/", (("Content-Length", str(50 << 20)),), b""),
                trickle=True)
    try:
        answer, gone = run(scenario)
    finally:
        backend.stop()
    assert (answer.status, answer.body, answer.header("connection"), gone) == (
        413, b"big!", ["close"], True)


def test_an_answer_before_the_upload_ends_reaches_a_client_still_sending():
    """The backend answers (413) while the client is still sending megabytes and reads its
    answer only later: the answer must reach it. Closed at once with the upload unread, the
    socket would send a reset, and the client's kernel drops the unread answer with it; the
    connection lingers instead (its FIN after the answer, the rest of the body read and
    dropped) until the client closes or the keep-alive time passes."""
    backend = EarlyAnswer(silent)

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("POST", "/", (("Content-Length", str(50 << 20)),), b""))
            for _ in range(16):                 # still sending as the answer comes
                writer.write(b"x" * (256 << 10))
                await asyncio.sleep(0.02)
            answer = await asyncio.wait_for(read_answer(reader), 5)
            writer.close()
            return answer
    try:
        answer = run(scenario)
    finally:
        backend.stop()
    assert (answer.status, answer.body, answer.header("connection")) == (
        413, b"big!", ["close"])


def test_a_client_that_expects_100_continue_gets_it_then_the_answer(servers):
    backend = servers("a")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            reader, writer = await fast.connect()
            writer.write(head("PUT", "/", (("Expect", "100-continue"),
                                           ("Content-Length", "5")), b""))
            interim = await reader.readline()
            assert await reader.readline() == b"\r\n"
            writer.write(b"hello")
            answer = await read_answer(reader)
            writer.close()
            return interim, answer
    interim, answer = run(scenario)
    assert interim == b"HTTP/1.1 100 Continue\r\n"
    assert answer.status == 200 and b'"body": "hello"' in answer.body


# -- the sticky cookie ------------------------------------------------------------------------

def test_the_sticky_cookie_is_set_then_followed(backends):
    async def scenario():
        async with Fast({"LB_BACKENDS": ",".join(b.url for b in backends),
                         "LB_STICKY_COOKIE": "lb"}) as fast:
            first = await fast.request()
            (cookie,) = first.header("set-cookie")
            value = cookie.split(";")[0]
            again = [await fast.request(headers=(("Cookie", f"a=1; {value}"),))
                     for _ in range(3)]
            return first, cookie, again
    first, cookie, again = run(scenario)
    assert "Path=/; HttpOnly; SameSite=Lax" in cookie
    server = first.body.split(b'"server": "')[1][:1]
    assert all(a.body.split(b'"server": "')[1][:1] == server for a in again)
    assert all(not a.header("set-cookie") for a in again)


# -- routes, departures, closing ---------------------------------------------------------------

def test_routes_count_their_requests_and_a_retired_one_closes_its_connections(
        tmp_path, servers, access_log):
    a, b = servers("a"), servers("b")
    config = tmp_path / "gateway.toml"
    routes = """
        [defaults]
        access_log = true
        [[route]]
        name = "api"
        prefix = "/api"
        strip_prefix = true
        backends = ["{a}"]
        [[route]]
        name = "web"
        prefix = "/web"
        backends = ["{b}"]
    """
    config.write_text(textwrap.dedent(routes).format(a=a.url, b=b.url))

    async def scenario():
        async with Fast(config=config) as fast:
            app = fast.app
            assert isinstance(app, RoutesGatewayApp)
            api = await fast.request(path="/api/x?y=1")
            web = await fast.request(path="/web/z")
            outside = await fast.request(path="/elsewhere")
            entries = {entry.route.name: entry for entry in app.router.entries}
            assert [entry.active for entry in entries.values()] == [0, 0]
            # a reload without "web": its entry retires, idle, and its connections close
            config.write_text(textwrap.dedent(routes.split("[[route]]\n        name = \"web\"")[0])
                              .format(a=a.url))
            assert await app.reload()
            await until(lambda: not b.open_sockets)
            gone = await fast.request(path="/web/z")
            return api, web, outside, gone
    api, web, outside, gone = run(scenario)
    assert (api.status, web.status, outside.status, gone.status) == (200, 200, 404, 404)
    assert b'"path": "/x?y=1"' in api.body and b'"path": "/web/z"' in web.body
    lines = access_records(access_log)
    assert [(line["path"], line["status"]) for line in lines] == [
        ("/api/x", "200"), ("/web/z", "200"), ("/elsewhere", "404"), ("/web/z", "404")]


def test_a_departed_backend_loses_its_idle_connections_and_close_closes_the_rest(servers):
    a, b = servers("a"), servers("b")

    async def scenario():
        async with Fast({"LB_BACKENDS": f"{a.url},{b.url}"}) as fast:
            assert [(await fast.request()).status for _ in range(2)] == [200, 200]
            await until(lambda: len(a.open_sockets) == len(b.open_sockets) == 1)
            fast.balancer.update([b.url])
            await until(lambda: not a.open_sockets)         # a left: its idle one closed
            assert len(b.open_sockets) == 1
            fast.dispatcher.close()
            await until(lambda: not b.open_sockets)
    run(scenario)


def test_a_request_the_rules_refuse_is_answered_with_their_status():
    """A NUL in a header value cannot come through the parser; given to the dispatcher it is
    refused by the header rules (400), as the ASGI path refuses it."""
    settings = load_settings(environ={"LB_BACKENDS": "http://127.0.0.1:1"})
    app = make_app(settings)
    dispatcher = Dispatcher(app)

    class Connection:
        peer = "127.0.0.1"
        scheme = "http"
        state = ServerState(settings[GatewaySettings], dispatcher, _no_upgrade)

        def __init__(self) -> None:
            self.loop = asyncio.get_running_loop()
            self.written = b""
            self.finished = False

        def write(self, data: bytes) -> None:
            self.written += data

        def done(self, keep_alive: bool = True) -> None:
            self.finished = True

    async def scenario():
        connection = Connection()
        request = Request("GET", b"/", b"/", "/", b"", [(b"x-a", b"a\x00b")], "1.1", True,
                          0, False, 0.0)
        dispatcher.dispatch(request, connection)
        dispatcher.close()
        await app.aclose()
        return connection
    connection = run(scenario)
    assert connection.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert connection.finished


def test_a_failure_of_the_fast_path_itself_cuts_the_client_and_releases(servers, monkeypatch,
                                                                       caplog):
    """A bug in the exchange (here: the response's header step raising) is logged, the
    client's connection cut, the pick released: nothing stays in flight."""
    backend = servers("a")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url}) as fast:
            monkeypatch.setattr(Forwarder, "response_headers", broken)
            reader, writer = await fast.connect()
            writer.write(head("GET", "/", (), b""))
            cut = await closed(reader, within=2.0)
            writer.close()
            return cut, stats(fast.balancer)[backend.url]
    cut, row = run(scenario)
    assert cut and row["in_flight"] == 0
    assert "the fast path failed on GET /" in caplog.text and "a bug" in caplog.text


def test_a_failure_after_the_response_still_ends_the_request_on_its_connection(
        servers, monkeypatch, access_log):
    """A bug in what a request's end does (here: its access line raising) is logged and the
    connection goes on: the next request on it is answered, nothing stays in flight (it
    waited for good: the end's failure reached the crash handler, which skipped both
    ``done()`` and the abort once the request was finished)."""
    from lbmiddleware.gateway.fast import exchange

    backend = servers("a")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    async def scenario():
        async with Fast({"LB_BACKENDS": backend.url, "LB_ACCESS_LOG": "1"}) as fast:
            monkeypatch.setattr(exchange, "log_access", broken)
            reader, writer = await fast.connect()
            answers = []
            for _ in range(2):
                writer.write(head("GET", "/", (), b""))
                answers.append(await asyncio.wait_for(read_answer(reader), 2))
            writer.close()
            return answers, stats(fast.balancer)[backend.url]
    answers, row = run(scenario)
    assert [answer.status for answer in answers] == [200, 200]
    assert row["in_flight"] == 0 and row["requests"] == 2
    assert "a bug" in access_log.text


def test_the_exchange_and_the_dispatcher_check_without_assert():
    """Their checks hold under ``python -O`` too: explicit tests that raise (STYLE: never
    ``assert`` in the package; a check that vanishes with -O failed later, as an
    AttributeError on None)."""
    import ast
    import inspect

    from lbmiddleware.gateway.fast import dispatch, exchange

    for module in (exchange, dispatch):
        tree = ast.parse(inspect.getsource(module))
        lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert lines == [], (module.__name__, lines)
