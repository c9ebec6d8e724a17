"""The ASGI side's upstream client against backends that answer early, send interim
responses, many tiny chunks or invalid responses (issue 8, items 3, 5 and 11).

An invalid response (bad status line, status outside 100-599, an unrequested ``101``, a
control character in a field, a chunk-size line outside the grammar) is a
:class:`ProtocolError`: the client gets ``502``, the connection is closed, and the attempt
counts as a failure of the backend, like a ``502`` from the backend itself.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import requests

from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.upstream import ProtocolError
from lbmiddleware.upstream.connection import Connection
from lbmiddleware.upstream.deadlines import Deadlines

from ..support.asgi_client import Call
from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.raw_backends import OK
from ..support.servers import RawServer, read_request_head
from ..support.upstream_client import fetch

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# -- item 3: an answer that arrives while the body is still being sent -----------------------

class EarlyAnswer(RawServer):
    """A loopback backend that reads only the request head, answers ``response`` at once
    and never reads the body; each connection stays open until :meth:`stop`."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        if read_request_head(conn.makefile("rb")) is not None:
            self.requests += 1
            conn.sendall(self.response)
            self.stopping.wait()            # never read the body


def test_an_early_413_during_a_large_upload_is_delivered_at_once_and_is_no_failure():
    backend = EarlyAnswer(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
    mw = LoadBalancerMiddleware(None, backends=[backend.url], read_timeout=3.0)
    piece = b"x" * 65536
    pieces = 480                                            # 30 MiB announced, sent at full speed

    async def scenario() -> list[tuple[int, bytes, float]]:
        results = []
        for _ in range(4):                                  # one more than max_fails
            started = time.monotonic()
            call = await Call(mw, "POST", "/upload", body=[piece] * pieces,
                              headers=[("content-length", str(len(piece) * pieces))]).run()
            results.append((call.status, call.body, time.monotonic() - started))
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        backend.stop()
    for status, body, elapsed in results:
        assert status == 413 and body == b"too large"
        assert elapsed < 1.5, f"the 413 took {elapsed:.2f} s (read timeout 3 s)"
    (stats,) = mw.balancer.stats()
    assert stats["failures"] == 0 and stats["ejections"] == 0 and stats["state"] == "healthy"
    assert stats["in_flight"] == 0
    assert backend.connections == 4      # a connection with an unfinished upload is never reused


def test_an_early_answer_is_delivered_while_the_client_pauses_its_upload():
    """The answer does not wait for the client's next body bytes either (nginx answers)."""
    backend = EarlyAnswer(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
    mw = LoadBalancerMiddleware(None, backends=[backend.url], read_timeout=3.0)

    async def scenario() -> tuple[Call, float]:
        call = Call(mw, "POST", "/upload", headers=[("content-length", str(30 << 20))])
        pieces = [b"x" * 65536] * 2
        paused = asyncio.Event()

        async def receive() -> dict:        # two pieces, then nothing until the end
            if pieces:
                return {"type": "http.request", "body": pieces.pop(), "more_body": True}
            paused.set()
            await call.disconnect.wait()
            return {"type": "http.disconnect"}

        started = time.monotonic()
        await asyncio.wait_for(mw(call.scope, receive, call.send), 5)
        return call, time.monotonic() - started

    try:
        call, elapsed = asyncio.run(scenario())
    finally:
        backend.stop()
    assert call.status == 413 and call.body == b"too large" and elapsed < 1.5
    assert mw.balancer.stats()[0]["failures"] == 0


# -- interim responses ------------------------------------------------------------------------

@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n"])
def test_interim_responses_are_skipped_and_each_request_gets_its_own_response(scripted, interim):
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
    second = b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nsecond"
    server = scripted([[interim, 0.3, first], [interim, 0.3, second]])
    (one, two), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert one[0] == 200 and one[2] == b"first"
    assert two[0] == 201 and two[2] == b"second"
    assert opened == 1 and server.connections == 1


def test_interim_response_through_the_middleware(scripted):
    server = scripted([[b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", 0.3, OK]])
    call = asyncio.run(Call(LoadBalancerMiddleware(None, backends=[server.url]), "GET", "/").run())
    assert call.status == 200 and call.body == b"ok" and not call.header("link")


# -- item 5: many small chunks ---------------------------------------------------------------

class _Transport:
    """Just enough of a transport for a :class:`Connection` fed by hand."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Pool:
    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self.released: list[Connection] = []

    def _release(self, connection: Connection) -> None:
        self.released.append(connection)


async def _parse_pieces(pieces: list[bytes]):
    """Feed a response to a fresh connection piece by piece (each one a read); returns
    (status, body, whether the connection went back to the pool) or the error."""
    pool = _Pool()
    connection = Connection(pool, asyncio.get_running_loop())
    connection.connection_made(_Transport())
    exchange = asyncio.ensure_future(connection.exchange(b"GET / HTTP/1.1\r\n\r\n", None, 0,
                                                         False, 5.0))
    await asyncio.sleep(0)
    for piece in pieces:
        connection.data_received(piece)
    try:
        response = await exchange
        body = response.take()
        while True:
            chunk = await response.read()
            if not chunk:
                break
            body += chunk
    except ProtocolError as exc:
        return exc
    return response.status, body, pool.released == [connection]


def test_a_chunked_body_is_decoded_whatever_the_read_boundaries():
    body = b"".join(b"%x\r\n%s\r\n" % (n, b"abcdefghijklmnopq"[:n]) for n in (1, 2, 16, 3, 1))
    wire = CHUNKED_HEAD + body + b"0\r\nX-Trailer: t\r\n\r\n"
    expected = (200, b"a" + b"ab" + b"abcdefghijklmnop" + b"abc" + b"a", True)
    for split in range(1, len(wire)):
        assert asyncio.run(_parse_pieces([wire[:split], wire[split:]])) == expected, split
    for first, second in ((10, 60), (50, 51), (len(CHUNKED_HEAD), len(CHUNKED_HEAD) + 3)):
        pieces = [wire[:first], wire[first:second], wire[second:]]
        assert asyncio.run(_parse_pieces(pieces)) == expected
    assert asyncio.run(_parse_pieces([wire[i:i + 1] for i in range(len(wire))])) == expected


def test_many_one_byte_chunks_in_one_write_are_decoded(scripted):
    count = 200_000
    server = scripted([CHUNKED_HEAD + b"1\r\nx\r\n" * count + b"0\r\n\r\n", OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[0] == 200 and first[2] == b"x" * count
    assert second[2] == b"ok" and opened == 1


# -- item 11: invalid responses --------------------------------------------------------------

INVALID = {
    "101 not asked for": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n",
    "status 999": b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n",
    "status 600": b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n",
    "status 099": b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "signed status": b"HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n",
    "two spaces": b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
    "control in reason": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
    "control in value": b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "DEL in value": b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 0\r\n\r\n",
    "ESC in value": b"HTTP/1.1 200 OK\r\nX: \x1b[31m\r\nContent-Length: 0\r\n\r\n",
    "control in an interim head": b"HTTP/1.1 103 Early\r\nLink: \x01\r\n\r\n" + OK,
    "chunk size 0x5": CHUNKED_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size +5": CHUNKED_HEAD + b"+5\r\nhello\r\n0\r\n\r\n",
    "chunk size -5": CHUNKED_HEAD + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk size with a leading space": CHUNKED_HEAD + b" 5\r\nhello\r\n0\r\n\r\n",
    "chunk size 5_0": CHUNKED_HEAD + b"5_0\r\n" + b"x" * 80 + b"\r\n0\r\n\r\n",
    "overlong chunk size": CHUNKED_HEAD + b"0" * 16 + b"05\r\nhello\r\n0\r\n\r\n",
    "empty chunk size": CHUNKED_HEAD + b";x\r\nhello\r\n0\r\n\r\n",
    "bare LF in a chunk line": CHUNKED_HEAD + b"5;x\nhello\r\nhello\r\n0\r\n\r\n",
    "control in a chunk extension": CHUNKED_HEAD + b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
    "chunk extension without a name": CHUNKED_HEAD + b"5;=x\r\nhello\r\n0\r\n\r\n",
    "unterminated quoted extension": CHUNKED_HEAD + b'5;a="b\r\nhello\r\n0\r\n\r\n',
    "chunk data longer than its size": CHUNKED_HEAD + b"5\r\nhello!\r\n0\r\n\r\n",
    "control in a trailer": CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX: a\x01\r\n\r\n",
}


@pytest.mark.parametrize("response", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_response_is_a_protocol_error_and_the_connection_is_closed(scripted, response):
    server = scripted([response], [OK])
    (bad, good), opened = fetch(server.url, (b"GET", None), (b"GET", None), read_timeout=3.0)
    assert isinstance(bad, ProtocolError), bad
    assert good[2] == b"ok" and opened == 2


@pytest.mark.parametrize("response", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_response_is_an_immediate_502_and_a_failure(scripted, response):
    server = scripted([response])
    mw = LoadBalancerMiddleware(None, backends=[server.url], retries=0, read_timeout=3.0)
    started = time.monotonic()
    call = asyncio.run(Call(mw, "GET", "/").run())
    assert call.status == 502 and time.monotonic() - started < 1.5
    assert mw.balancer.stats()[0]["failures"] == 1


VALID_CHUNKED = {
    "extension": b"5;ext=1\r\nhello\r\n",
    "extensions with blanks and a quoted value": b'5 ; a = "q \\" v" ;b\r\nhello\r\n',
    "upper-case hex and leading zeros": b"000A\r\nhellohello\r\n",
    "sixteen digits": b"000000000000000A\r\nhellohello\r\n",
    "blank after the size": b"5 \r\nhello\r\n",
}


@pytest.mark.parametrize("chunk", VALID_CHUNKED.values(), ids=VALID_CHUNKED.keys())
def test_valid_chunk_lines_are_accepted(scripted, chunk):
    server = scripted([CHUNKED_HEAD + chunk + b"0\r\nX-Trailer: t\r\n\r\n", OK])
    (first, second), opened = fetch(server.url, (b"GET", None), (b"GET", None))
    assert first[0] == 200 and first[2] in (b"hello", b"hellohello")
    assert second[2] == b"ok" and opened == 1


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
@pytest.mark.parametrize("response", [
    b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok"], ids=["999", "control"])
def test_the_gateway_answers_502_to_an_invalid_response(scripted, server, response):
    backend = scripted([response])
    with GatewayProcess({"LB_BACKENDS": backend.url, "LB_SERVER": server,
                         "LB_READ_TIMEOUT": "3s", "LB_RETRIES": "0"}) as gateway:
        answer = requests.get(f"{gateway.url}/x", timeout=5)
        again = requests.get(f"{gateway.url}/x", timeout=5)
    assert answer.status_code == 502 and again.status_code == 502
