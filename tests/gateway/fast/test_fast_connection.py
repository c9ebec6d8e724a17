"""The fast server's client connection (``gateway/fast/connection.py``) and what it writes
(``wire.py``), on loopback under uvloop, with a dispatcher of the test's own: requests read
into :class:`Request` objects, keep-alive and pipelining, malformed requests, the head and
keep-alive limits, the connection limit, ``100-continue``, flow control both ways, the
upgrade hand-off (to uvicorn's protocol, over TLS too) and the shutdown of a connection."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from lbmiddleware.gateway.fast import connection as connection_module
from lbmiddleware.gateway.fast.connection import ClientConnection, Request
from lbmiddleware.gateway.fast.server import HandOff, ServerState, server_ssl_context
from lbmiddleware.gateway.fast.wire import DateHeader, error_bytes, response_head
from lbmiddleware.gateway_settings import GatewaySettings, load_settings

# -- what the server writes ------------------------------------------------------------


def test_response_head_frames_the_body_and_says_close():
    date = b"date: Mon, 07 Dec 2026 15:20:00 GMT\r\n"
    head = response_head(200, b"OK", [(b"Content-Type", b"text/plain"), (b"x-a", b"1")],
                         date=date, length=5, chunked=False, close=False)
    own = date + b"server: lbmiddleware\r\n"
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-a: 1\r\n" + own
                    + b"content-length: 5\r\n\r\n")
    assert response_head(200, b"OK", [], date=date, length=None, chunked=True, close=True) == (
        b"HTTP/1.1 200 OK\r\n" + own + b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
    # a bodiless status, or a body the connection's end delimits: no framing
    assert response_head(304, b"Not Modified", [], date=date, length=None, chunked=False,
                         close=False) == b"HTTP/1.1 304 Not Modified\r\n" + own + b"\r\n"


def test_error_bytes_are_the_proxys_own_errors():
    date = b"date: x\r\n"
    whole = error_bytes(503, date=date, close=True)
    head, _, body = whole.partition(b"\r\n\r\n")
    assert body == b"503 Service Unavailable: no backend is available\n"
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 503 Service Unavailable", b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body), b"Retry-After: 5", b"date: x",
        b"server: lbmiddleware", b"connection: close"]
    assert error_bytes(503, date=date, close=True, head_only=True) == head + b"\r\n\r\n"
    assert b"connection" not in error_bytes(404, date=date, close=False)
    assert error_bytes(503, date=date, close=True, detail="too many connections").endswith(
        b"\r\n\r\n503 Service Unavailable: too many connections\n")


def test_the_date_line_is_formatted_once_a_second():
    now = [1796656800.2]
    date = DateHeader(clock=lambda: now[0])
    first = date.value()
    assert first == b"date: Mon, 07 Dec 2026 15:20:00 GMT\r\n"
    now[0] += 0.5
    assert date.value() is first
    now[0] += 0.5
    assert date.value() == b"date: Mon, 07 Dec 2026 15:20:01 GMT\r\n"


# -- a server with the test's own dispatcher ---------------------------------------------

class Echo:
    """Answers at the body's end with what it saw, as JSON (``/hold...``: when the test
    calls :meth:`answer`)."""

    def __init__(self, request: Request, connection: ClientConnection, log: list) -> None:
        self.request = request
        self.connection = connection
        self.log = log
        self.pieces: list[bytes] = []
        self.ended = False
        self.hold = request.path.startswith("/hold")

    def body(self, data: bytes) -> None:
        self.pieces.append(data)

    def body_end(self) -> None:
        self.ended = True
        if not self.hold:
            self.answer()

    def client_lost(self) -> None:
        self.log.append(("lost", self.request.path))

    def answer(self, keep_alive: bool = True) -> None:
        r = self.request
        seen = {"method": r.method, "target": r.target.decode(), "path": r.path,
                "raw_path": r.raw_path.decode(), "query": r.query.decode(),
                "version": r.version, "keep_alive": r.keep_alive, "length": r.length,
                "expect": r.expect_continue, "body": b"".join(self.pieces).decode(),
                "headers": [[n.decode(), v.decode()] for n, v in r.headers]}
        body = json.dumps(seen).encode()
        head = response_head(
            200, b"OK", [(b"content-type", b"application/json")],
            date=self.connection.state.date.value(), length=len(body), chunked=False,
            close=not (keep_alive and r.keep_alive))
        if r.path.startswith("/lines"):             # head and body in parts, one write
            self.connection.writelines((head, body))
        else:
            self.connection.write(head + body)
        self.connection.done(keep_alive)


class Early(Echo):
    """Answers 404 at once, before the body."""

    def __init__(self, request: Request, connection: ClientConnection, log: list) -> None:
        super().__init__(request, connection, log)
        connection.write(error_bytes(404, date=connection.state.date.value(), close=False))
        connection.done()

    def body_end(self) -> None:
        raise AssertionError("a handler that answered gets no body")


class Continued(Echo):
    def __init__(self, request: Request, connection: ClientConnection, log: list) -> None:
        super().__init__(request, connection, log)
        connection.send_continue()


class Big(Echo):
    """Writes ``size`` bytes in 64 KiB pieces, waiting whenever the client's buffer is
    full; counts the waits."""

    size = 8 * 1024 * 1024

    def __init__(self, request: Request, connection: ClientConnection, log: list) -> None:
        super().__init__(request, connection, log)
        self.left = self.size
        self.waits = 0

    def body_end(self) -> None:
        self.connection.write(response_head(200, b"OK", [], date=b"", length=self.size,
                                            chunked=False, close=False))
        self.more()

    def more(self) -> None:
        piece = b"x" * 65536
        while self.left:
            if self.connection.writing_paused:
                self.waits += 1
                self.connection.on_writable(self.more)
                return
            self.connection.write(piece)
            self.left -= len(piece)
        self.connection.done()


class Broken(Echo):
    def __init__(self, request: Request, connection: ClientConnection, log: list) -> None:
        raise RuntimeError("a bug in the dispatcher")


class Dispatcher:
    """``/early`` answers before the body, ``/continue`` asks for it with 100, ``/big``
    writes 8 MiB, ``/broken`` raises; the rest echo. ``handlers``: each request's handler,
    in order."""

    def __init__(self) -> None:
        self.handlers: list[Echo] = []
        self.log: list = []
        self.arrived = asyncio.Event()

    def dispatch(self, request: Request, connection: ClientConnection) -> Echo:
        kind = {"/early": Early, "/continue": Continued, "/big": Big,
                "/broken": Broken}.get(request.path, Echo)
        self.log.append(("dispatch", request.path))
        handler = kind(request, connection, self.log)
        self.handlers.append(handler)
        self.arrived.set()
        return handler

    async def next_handler(self, count: int) -> Echo:
        """The ``count``-th handler (1-based), once dispatched."""
        while len(self.handlers) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        return self.handlers[count - 1]


class Server:
    """The fast server's connections on 127.0.0.1 (``ssl``: a TLS listener) with
    :class:`Dispatcher`; ``handoff``: what upgrades get (recorded in ``handed``)."""

    def __init__(self, *, handoff: Callable | None = None, context: ssl.SSLContext | None = None,
                 access_log: bool = False, **settings: object) -> None:
        self.dispatcher = Dispatcher()
        self.handed: list[tuple[asyncio.Transport, bytes]] = []
        self.context = context
        self.state = ServerState(GatewaySettings(**settings), self.dispatcher,
                                 handoff or self._record, access_log=access_log,
                                 scheme="https" if context else "http")
        self.port = 0

    def _record(self, transport: asyncio.Transport, data: bytes) -> None:
        self.handed.append((transport, data))
        transport.set_protocol(asyncio.Protocol())
        transport.write(b"handed off\n")

    async def __aenter__(self) -> Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ClientConnection(self.state, loop),
                                               "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for connection in list(self.state.connections):
            connection.transport.abort()
        await asyncio.sleep(0)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def run(scenario: Callable[[], Awaitable[object]]) -> object:
    return uvloop.run(asyncio.wait_for(scenario(), 20))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (names lower-case), body (by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    fields = [line.split(": ", 1) for line in lines[1:] if line]
    headers = {name.lower(): value for name, value in fields}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return int(lines[0].split()[1]), headers, body


async def closed(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """Whether the server closes the connection within ``within`` s (nothing more read)."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionResetError:
        return True


# -- requests, keep-alive, pipelining ------------------------------------------------------

def test_a_response_written_in_parts_arrives_as_one():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /lines HTTP/1.1\r\nHost: gw\r\n\r\n")
            first = await read_response(reader)
            writer.write(b"GET /lines/2 HTTP/1.1\r\nHost: gw\r\n\r\n")
            second = await read_response(reader)
            writer.close()
            return first, second

    first, second = run(scenario)
    assert first[0] == second[0] == 200
    assert json.loads(first[2])["path"] == "/lines" and json.loads(second[2])["path"] == "/lines/2"


def test_requests_on_one_kept_alive_connection():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /a%20b/c?x=1&y HTTP/1.1\r\nHost: gw\r\nX-Trail:  v \t\r\n"
                         b"X-Two: 1\r\nx-two: 2\r\n\r\n")
            first = await read_response(reader)
            writer.write(b"POST /p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
            second = await read_response(reader)
            writer.write(b"PUT /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
            third = await read_response(reader)
            writer.close()
            return first, second, third, server.state.connections

    first, second, third, connections = run(scenario)
    status, headers, body = first
    seen = json.loads(body)
    assert status == 200 and re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT", headers["date"])
    assert "connection" not in headers
    assert (seen["method"], seen["target"], seen["raw_path"], seen["path"], seen["query"]) == (
        "GET", "/a%20b/c?x=1&y", "/a%20b/c", "/a b/c", "x=1&y")
    assert seen["headers"] == [["host", "gw"], ["x-trail", "v"], ["x-two", "1"], ["x-two", "2"]]
    assert (seen["version"], seen["keep_alive"], seen["length"], seen["body"]) == (
        "1.1", True, 0, "")
    seen = json.loads(second[2])
    assert (seen["method"], seen["length"], seen["body"]) == ("POST", 5, "hello")
    seen = json.loads(third[2])
    assert (seen["length"], seen["body"]) == (None, "abcde")
    assert ["x-trailer", "1"] not in seen["headers"]        # trailers are dropped
    assert not connections


def test_targets_in_absolute_form_or_with_a_fragment_are_read_as_uvicorn_reads_them():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            seen = []
            for target in (b"http://example.com/x/y?q=1", b"/f#frag", b"*",
                           b"http://example.com", b"http://example.com?q=2"):
                writer.write(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
                seen.append(json.loads((await read_response(reader))[2]))
            return [(s["target"], s["raw_path"], s["path"], s["query"]) for s in seen]

    # (an absolute form's empty path is "/": RFC 9112 3.2.2; attack A2#5)
    assert run(scenario) == [("http://example.com/x/y?q=1", "/x/y", "/x/y", "q=1"),
                             ("/f#frag", "/f", "/f", ""), ("*", "*", "*", ""),
                             ("http://example.com", "/", "/", ""),
                             ("http://example.com?q=2", "/", "/", "q=2")]


def test_http_1_0_and_connection_close_end_the_connection_after_the_response():
    async def scenario():
        async with Server() as server:
            answers = []
            for request in (b"GET /a HTTP/1.0\r\n\r\n",
                            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                            b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"):
                reader, writer = await server.connect()
                writer.write(request)
                status, headers, body = await read_response(reader)
                answers.append((json.loads(body)["version"], headers.get("connection"),
                                await closed(reader)))
            return answers, server.dispatcher.log

    answers, log = run(scenario)
    assert answers == [("1.0", "close", True), ("1.0", "close", True), ("1.1", "close", True)]
    assert log == [("dispatch", "/a")] * 3          # nothing read after "close"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("field", [b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
                                   b"connection: Keep-Alive, x\r\n",
                                   b"Proxy-Connection: keep-alive\r\n", b"Connection: x\r\n"])
def test_each_requests_version_and_keep_alive_are_read_as_sent(version, field):
    # (the version is read without formatting llhttp's numbers when only 1.1 can keep the
    # connection: no Connection field and keep-alive; llhttp reads Proxy-Connection too)
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET / HTTP/%s\r\nHost: gw\r\n%s\r\n" % (version.encode(), field))
            seen = json.loads((await read_response(reader))[2])
            return seen["version"], seen["keep_alive"]

    # (an HTTP/1.0 connection is not kept alive, even when it asks: uvicorn's reading)
    assert run(scenario) == (version, version == "1.1" and b"close" not in field)


def test_pipelined_requests_wait_for_the_response_before_them():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /hold1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                         b"POST /hold2 HTTP/1.1\r\nContent-Length: 4\r\n\r\ndefg"
                         b"GET /three HTTP/1.1\r\n\r\n")
            first = await server.dispatcher.next_handler(1)
            await asyncio.sleep(0.05)       # (time for the rest to be read: it must wait)
            log = list(server.dispatcher.log)
            reading = first.connection.transport.is_reading()
            first.answer()
            second = await server.dispatcher.next_handler(2)
            bodies = [b"".join(first.pieces), b"".join(second.pieces), second.ended]
            second.answer()
            responses = [json.loads((await read_response(reader))[2])["path"]
                         for _ in range(3)]
            return log, reading, bodies, responses, first.connection.transport.is_reading()

    log, reading, bodies, responses, reading_after = run(scenario)
    assert log == [("dispatch", "/hold1")] and not reading
    assert bodies == [b"abc", b"defg", True]
    assert responses == ["/hold1", "/hold2", "/three"] and reading_after


def test_many_pipelined_requests_answered_at_once_do_not_nest():
    """A request answered during its dispatch does not dispatch the next one inside its
    own answer: 2,000 pipelined 404s in one write are served in a loop."""
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /hold HTTP/1.1\r\n\r\n" + b"GET /early HTTP/1.1\r\n\r\n" * 2000)
            (await server.dispatcher.next_handler(1)).answer()
            statuses = [(await read_response(reader))[0] for _ in range(2001)]
            return statuses

    assert run(scenario) == [200] + [404] * 2000


def test_a_response_before_the_body_keeps_the_connection_and_drops_the_body():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /early HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
            early = await read_response(reader)
            writer.write(b"56789GET /next HTTP/1.1\r\n\r\n")
            return early[0], json.loads((await read_response(reader))[2])["path"]

    assert run(scenario) == (404, "/next")


# -- malformed requests ----------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    b"GET /a\r\nHost: evil HTTP/1.1\r\n\r\n",          # (HTTP/0.9 to llhttp)
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET /\xe9 HTTP/1.1\r\n\r\n",
    b"NOT A REQUEST\r\n\r\n",
    b"GET // HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n",
])
def test_a_malformed_request_gets_the_proxys_400_and_the_connection_closes(request_bytes):
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(request_bytes)
            status, headers, body = await read_response(reader)
            return status, headers.get("connection"), body, await closed(reader), \
                server.dispatcher.log

    status, connection, body, was_closed, log = run(scenario)
    assert (status, connection, was_closed) == (400, "close", True)
    # (httptools refuses that Transfer-Encoding after the head's end: its request is lost)
    assert log == ([("dispatch", "//"), ("lost", "//")] if b"gzip" in request_bytes else [])
    assert body.startswith(b"400 Bad Request: ")


def test_a_body_that_breaks_the_rules_loses_its_handler_the_client_and_gets_400():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /hold HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            handler = await server.dispatcher.next_handler(1)
            writer.write(b"zz\r\n")
            status = (await read_response(reader))[0]
            return status, await closed(reader), handler.pieces, server.dispatcher.log

    status, was_closed, pieces, log = run(scenario)
    assert (status, was_closed, pieces) == (400, True, [b"abc"])
    assert log == [("dispatch", "/hold"), ("lost", "/hold")]


def test_a_malformed_request_behind_good_ones_is_answered_after_them():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /hold HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n"
                         b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n")
            (await server.dispatcher.next_handler(1)).answer()
            return [(await read_response(reader))[0] for _ in range(3)], await closed(reader)

    assert run(scenario) == ([200, 200, 400], True)


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_dispatcher_that_raises_cuts_the_connection_and_is_logged(pipelined, caplog):
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            if pipelined:
                writer.write(b"GET /hold HTTP/1.1\r\n\r\nGET /broken HTTP/1.1\r\n\r\n")
                (await server.dispatcher.next_handler(1)).answer()
                await read_response(reader)
            else:
                writer.write(b"GET /broken HTTP/1.1\r\n\r\n")
            return await closed(reader), server.state.connections

    with caplog.at_level(logging.ERROR):
        assert run(scenario) == (True, set())
    assert "the fast server failed on a request from 127.0.0.1" in caplog.text
    assert "a bug in the dispatcher" in caplog.text


# -- limits ----------------------------------------------------------------------------

def test_a_head_that_never_ends_and_a_silent_connection_are_closed_after_the_header_timeout():
    async def scenario():
        async with Server(header_timeout=0.3) as server:
            silent, _ = await server.connect()
            slow, writer = await server.connect()
            writer.write(b"GET / HTTP/1.1\r\n")
            began = asyncio.get_running_loop().time()
            results = await asyncio.gather(closed(slow, 3), closed(silent, 3))
            return results, asyncio.get_running_loop().time() - began

    results, seconds = run(scenario)
    assert results == [True, True] and 0.25 < seconds < 2


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(monkeypatch):
    monkeypatch.setattr(connection_module, "KEEP_ALIVE", 0.3)

    async def scenario():
        async with Server(header_timeout=30) as server:
            reader, writer = await server.connect()
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await read_response(reader)
            began = asyncio.get_running_loop().time()
            return await closed(reader, 3), asyncio.get_running_loop().time() - began

    was_closed, seconds = run(scenario)
    assert was_closed and 0.25 < seconds < 2


def test_the_head_time_of_a_pipelined_request_starts_when_the_connection_is_idle():
    async def scenario():
        async with Server(header_timeout=0.3) as server:
            reader, writer = await server.connect()
            writer.write(b"GET /hold HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n")
            handler = await server.dispatcher.next_handler(1)
            await asyncio.sleep(0.6)            # longer than the head's time: not cut
            open_while_busy = not reader.at_eof() and not handler.connection.transport.is_closing()
            handler.answer()
            await read_response(reader)
            return open_while_busy, await closed(reader, 3)

    assert run(scenario) == (True, True)


def test_connections_beyond_the_limit_get_503_and_an_access_line(caplog):
    async def scenario():
        async with Server(max_connections=2, access_log=True) as server:
            kept = [await server.connect() for _ in range(2)]
            for reader, writer in kept:
                writer.write(b"GET / HTTP/1.1\r\n\r\n")
                await read_response(reader)
            reader, _ = await server.connect()
            refused = await read_response(reader)
            return refused, await closed(reader), len(server.state.connections)

    with caplog.at_level(logging.INFO):
        (status, headers, body), was_closed, count = run(scenario)
    assert (status, headers["connection"], was_closed, count) == (503, "close", True, 2)
    assert body == b"503 Service Unavailable: too many connections\n"
    assert any(re.search(r"client=127\.0\.0\.1 method=- path=- status=503", record.message)
               for record in caplog.records if record.name == "lbmiddleware.access")
    assert any("too many connections (LB_MAX_CONNECTIONS=2): 1 connection answered 503"
               in record.message for record in caplog.records)


# -- 100-continue, flow control, the client leaving -------------------------------------

def test_100_continue_when_the_handler_asks_for_the_body():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /continue HTTP/1.1\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"ok")
            seen = json.loads((await read_response(reader))[2])
            return interim, seen["expect"], seen["body"]

    assert run(scenario) == (b"HTTP/1.1 100 Continue\r\n\r\n", True, "ok")


def test_an_http10_request_expecting_100_continue_gets_no_interim_response():
    """RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored (such a
    client reads an interim response as the final one; attack A1#5)."""
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /continue HTTP/1.0\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\n\r\nok")
            status, _, body = await read_response(reader)
            return status, json.loads(body)["expect"], json.loads(body)["body"]

    assert run(scenario) == (200, False, "ok")


def test_a_request_without_a_body_answered_at_once_keeps_its_connection_despite_expect():
    """Expect: 100-continue on a request without a body: no body is awaited, so an answer
    given at once keeps the connection (it closed without saying so; attack A2#4)."""
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /early HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
                         b"GET /next HTTP/1.1\r\n\r\n")
            first = (await read_response(reader))[0]
            second = json.loads((await read_response(reader))[2])["path"]
            return first, second

    assert run(scenario) == (404, "/next")


def test_a_body_dropped_after_an_answer_is_waited_for_no_longer_than_the_keep_alive_time(
        monkeypatch):
    """A handler answers before the body and keeps the connection: the body is read and
    dropped, but a client that never sends it does not hold the connection open for good
    (review H1): it is closed at the keep-alive limit, which the dropped bytes do not
    extend."""
    monkeypatch.setattr(connection_module, "KEEP_ALIVE", 0.3)

    async def scenario():
        async with Server() as server:
            loop = asyncio.get_running_loop()
            reader, writer = await server.connect()
            writer.write(b"POST /early HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
            status = (await read_response(reader))[0]
            began = loop.time()
            eof = asyncio.ensure_future(reader.read())
            for _ in range(20):             # a byte every 0.1 s, until it is closed
                if not writer.is_closing():
                    writer.write(b"x")
                await asyncio.wait([eof], timeout=0.1)
                if eof.done():
                    break
            gone = eof.done() and (eof.exception() is not None or eof.result() == b"")
            return status, gone, loop.time() - began

    status, was_closed, seconds = run(scenario)
    assert status == 404 and was_closed and seconds < 1.0


def test_a_request_answered_at_once_then_found_malformed_gets_one_response():
    """The request was answered at once (404 here), then llhttp refuses its framing
    (Transfer-Encoding: identity, refused only after the head): one request, one response,
    and the connection closed (a second answer, the 400, would be read as the next
    request's; attack A2#3)."""
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /early HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n")
            status = (await read_response(reader))[0]
            return status, await asyncio.wait_for(reader.read(), 5)

    assert run(scenario) == (404, b"")


def test_a_response_without_100_continue_closes_the_connection():
    """The client may send the body or not: the connection cannot be read on."""
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /early HTTP/1.1\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            return (await read_response(reader))[0], await closed(reader)

    assert run(scenario) == (404, True)


def test_a_client_that_reads_slowly_pauses_the_response_and_holds_little():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /big HTTP/1.1\r\n\r\n")
            handler = await server.dispatcher.next_handler(1)
            await asyncio.sleep(0.1)        # the client reads nothing meanwhile
            buffered = handler.connection.transport.get_write_buffer_size()
            paused = handler.connection.writing_paused
            status, _, body = await read_response(reader)
            return buffered, paused, status, len(body), handler.waits

    buffered, paused, status, size, waits = run(scenario)
    assert paused and buffered < 1024 * 1024
    assert (status, size) == (200, Big.size) and waits >= 1


def test_pause_body_stops_reading_the_upload():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"POST /hold HTTP/1.1\r\nContent-Length: 4000000\r\n\r\n")
            handler = await server.dispatcher.next_handler(1)
            handler.connection.pause_body()
            piece = b"y" * 100_000
            for _ in range(40):
                writer.write(piece)
            await asyncio.sleep(0.1)
            received_paused = sum(map(len, handler.pieces))
            handler.connection.resume_body()
            await asyncio.wait_for(writer.drain(), 5)
            while not handler.ended:
                await asyncio.sleep(0.01)
            handler.answer()
            seen = json.loads((await read_response(reader))[2])
            return received_paused, len(seen["body"])

    received_paused, total = run(scenario)
    assert received_paused < 3_000_000 and total == 4_000_000


def test_the_handler_hears_the_client_leave():
    async def scenario():
        async with Server() as server:
            _, writer = await server.connect()
            writer.write(b"GET /hold HTTP/1.1\r\n\r\n")
            handler = await server.dispatcher.next_handler(1)
            writer.close()
            while ("lost", "/hold") not in server.dispatcher.log:
                await asyncio.sleep(0.01)
            handler.answer()            # too late: written nowhere, no error
            return server.state.connections

    assert run(scenario) == set()


def test_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_response():
    async def scenario():
        async with Server() as server:
            idle, idle_writer = await server.connect()
            idle_writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await read_response(idle)
            busy, busy_writer = await server.connect()
            busy_writer.write(b"GET /hold HTTP/1.1\r\n\r\n")
            handler = await server.dispatcher.next_handler(2)
            for connection in list(server.state.connections):
                connection.shutdown()
            idle_closed = await closed(idle)
            still_open = not handler.connection.transport.is_closing()
            handler.answer()
            status, headers, _ = await read_response(busy)
            return idle_closed, still_open, status, await closed(busy)

    assert run(scenario) == (True, True, 200, True)


def test_shutdown_cuts_a_busy_connection_after_the_shutdown_timeout():
    async def scenario():
        async with Server(shutdown_timeout=0.2) as server:
            reader, writer = await server.connect()
            writer.write(b"GET /hold HTTP/1.1\r\n\r\n")
            await server.dispatcher.next_handler(1)
            for connection in list(server.state.connections):
                connection.shutdown()
            return await closed(reader, 3), server.dispatcher.log

    was_closed, log = run(scenario)
    assert was_closed and log[-1] == ("lost", "/hold")


# -- upgrades ------------------------------------------------------------------------

UPGRADE = (b"GET /chat?x=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_an_upgrade_is_handed_off_with_its_head_and_the_bytes_after_it():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /hold HTTP/1.1\r\n\r\n" + UPGRADE + b"frame bytes")
            handler = await server.dispatcher.next_handler(1)
            await asyncio.sleep(0.05)
            before = list(server.handed)
            handler.answer()
            await read_response(reader)
            line = await asyncio.wait_for(reader.readline(), 5)
            return before, server.handed[0][1], line, server.state.connections

    before, data, line, connections = run(scenario)
    assert before == [] and line == b"handed off\n" and not connections
    assert data == (b"GET /chat?x=1 HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\n"
                    b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"sec-websocket-version: 13\r\n\r\nframe bytes")


def test_connect_is_handed_off_too():
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nxyz")
            await asyncio.wait_for(reader.readline(), 5)
            return server.handed[0][1]

    assert run(scenario) == b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\nxyz"


@pytest.mark.parametrize("fields, handed", [
    (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n", True),
    (b"Upgrade: websocket\r\nProxy-Connection: upgrade\r\n", True),     # (llhttp's reading)
    (b"Upgrade: websocket\r\n", False),            # no Connection: upgrade, served here
    (b"Connection: upgrade\r\n", False),           # nothing to upgrade to
])
def test_an_upgrade_is_what_llhttp_reads_as_one(fields, handed):
    async def scenario():
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(b"GET /x HTTP/1.1\r\nHost: gw\r\n" + fields + b"\r\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            return line, len(server.handed), server.dispatcher.log

    line, count, log = run(scenario)
    if handed:
        assert (line, count, log) == (b"handed off\n", 1, [])
    else:
        assert (line, count, log) == (b"HTTP/1.1 200 OK\r\n", 0, [("dispatch", "/x")])


async def websocket_echo(scope, receive, send):
    """An ASGI app: a WebSocket that echoes text with the path, and a 200 for HTTP."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"http"})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": f"{scope['path']} {message['text']}"})


@pytest.mark.parametrize("tls", [False, True])
def test_the_hand_off_runs_uvicorns_protocol_on_the_same_app(tls, pki):
    """The hand-off's uvicorn protocol serves the WebSocket (over TLS too: the transport
    of a TLS connection changes protocol as a plain one does), and an h2c upgrade as the
    plain request uvicorn makes of it."""
    from websockets.asyncio.client import connect

    settings = load_settings({"LB_BACKENDS": "http://127.0.0.1:9"}, max_connections=10)
    context = None
    if tls:
        context = server_ssl_context(GatewaySettings(tls_cert=pki.server_cert,
                                                     tls_key=pki.server_key))

    async def scenario():
        loop = asyncio.get_running_loop()
        connections: set = set()
        handoff = HandOff(settings, websocket_echo, connections, DateHeader(), loop)  # type: ignore[arg-type]
        async with Server(handoff=handoff, context=context) as server:
            server.state.connections = connections
            scheme = "wss" if tls else "ws"
            client_context = ssl.create_default_context(cafile=pki.ca) if tls else None
            async with connect(f"{scheme}://127.0.0.1:{server.port}/room",
                               ssl=client_context) as ws:
                await ws.send("hi")
                echoed = await ws.recv()
                during = len(connections)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_context,
                server_hostname="127.0.0.1" if tls else None)
            writer.write(b"GET /h2c HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\n"
                         b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__"
                         b"\r\n\r\n")
            status, headers, body = await read_response(reader)
            writer.close()
            return echoed, during, status, body, "date" in headers, headers.get("server")

    assert run(scenario) == ("/room hi", 1, 200, b"http", True, "lbmiddleware")


def tls_request_then_close_notify(port: int, request: bytes, ca: str) -> bytes:
    """(Blocking.) A TLS client that sends ``request`` and its close_notify in one TCP
    send; what it reads (decrypted) until the server closes."""
    client = ssl.create_default_context(cafile=ca)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(request)
        try:
            tls.unwrap()                # the close_notify, behind the request
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        got = b""
        while data := sock.recv(65536):
            incoming.write(data)
            try:
                while chunk := tls.read(65536):
                    got += chunk
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        return got


def test_an_answer_made_in_the_read_that_brings_the_clients_tls_close_is_sent(pki):
    # (the close_notify shuts the TLS layer down within that read: an answer held for the
    # end of the loop's turn would be dropped then; attack 16 #1)
    context = server_ssl_context(GatewaySettings(tls_cert=pki.server_cert,
                                                 tls_key=pki.server_key))

    async def scenario():
        async with Server(context=context) as server:
            return await asyncio.get_running_loop().run_in_executor(
                None, tls_request_then_close_notify, server.port,
                b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n", pki.ca)

    answer = run(scenario)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'"headers": [["host", "gw"]]}')


def test_a_head_larger_than_the_limit_gets_431_and_is_not_kept():
    async def scenario():
        async with Server() as server:
            answers = []
            for start, piece in ((b"GET / HTTP/1.1\r\nX-A: ", b"a" * 16384),
                                 (b"GET / HTTP/1.1\r\n", b"a:b\r\n" * 3000),
                                 (b"GET /", b"a" * 16384)):
                reader, writer = await server.connect()
                writer.write(start)
                for _ in range(connection_module.MAX_HEAD // len(piece) + 2):
                    writer.write(piece)
                status, _, body = await read_response(reader)
                answers.append((status, body, await closed(reader)))
            return answers, server.dispatcher.log

    answers, log = run(scenario)
    assert answers == [(431, b"431 Request Header Fields Too Large: the request head is too "
                             b"large\n", True)] * 3
    assert log == []


def head_of(size: int, target: bytes = b"/") -> bytes:
    """A request head whose target and fields count ``size`` bytes as MAX_HEAD counts them
    (the target, and each field with its ": " and CRLF)."""
    fields = b"Host: gw\r\n"
    filler = size - len(target) - len(fields) - len(b"X-A: \r\n")
    return b"GET %s HTTP/1.1\r\n%sX-A: %s\r\n\r\n" % (target, fields, b"a" * filler)


@pytest.mark.parametrize("pieces", [1, 64, 4096], ids=["one write", "64 writes", "bytes"])
def test_the_head_limit_is_exact_however_the_head_comes(pieces):
    """A head of MAX_HEAD bytes is read, one byte more is refused 431 with nothing
    dispatched, whether it comes in one write or in many (the count is the parser's, not
    the reads'; a head that fits in one read was not counted at all before)."""
    async def scenario():
        async with Server() as server:
            answers = []
            for size in (connection_module.MAX_HEAD, connection_module.MAX_HEAD + 1):
                data = head_of(size)
                reader, writer = await server.connect()
                step = -(-len(data) // pieces)
                for start in range(0, len(data), step):
                    writer.write(data[start:start + step])
                    await writer.drain()
                status, _, _ = await read_response(reader)
                answers.append((status, len(server.dispatcher.log)))
                writer.close()
            return answers

    assert run(scenario) == [(200, 1), (431, 1)]


def test_the_first_heads_time_runs_from_the_connections_start():
    """Bytes of the first head do not restart its time (a slow loris gains nothing)."""
    async def scenario():
        async with Server(header_timeout=0.6) as server:
            reader, writer = await server.connect()
            began = asyncio.get_running_loop().time()
            await asyncio.sleep(0.4)
            writer.write(b"GET / HTTP/1.1\r\n")
            was_closed = await closed(reader, 3)
            return was_closed, asyncio.get_running_loop().time() - began

    was_closed, seconds = run(scenario)
    assert was_closed and seconds < 0.85        # (restarted, it would be 1 s)
