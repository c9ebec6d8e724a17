"""The fast path's upstream client (``gateway/fast/upstream.py``) against real loopback backends,
under uvloop (asyncio too where the loops differ: TLS): a :class:`Recorder` receiver writes down
what it is told. The coroutine client's behaviour, case by case: keep-alive reuse (LIFO), a
stale connection sent again once, interim responses, HEAD / 204 / 304, chunked and
close-delimited bodies, invalid responses (the same cases as the coroutine client's tests,
llhttp's few differences named), early answers that stop an upload, streamed uploads under
flow control, the connect / read / head timeouts, TLS backends, forget and close. The parser's
read boundaries are tested by feeding a connection by hand (no socket)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Iterable

import pytest
import uvloop

import lbmiddleware as lb
from lbmiddleware.gateway.fast.upstream import (
    UPLOAD_HIGH_WATER,
    BackendPool,
    Call,
    UpstreamConnection,
    UpstreamPools,
)
from lbmiddleware.upstream.deadlines import Deadlines
from lbmiddleware.upstream.errors import (
    ConnectError,
    ConnectTimeout,
    ProtocolError,
    ReadTimeout,
    StaleConnection,
    TLSError,
    UpstreamError,
    failure_text,
)
from lbmiddleware.upstream.tls import backend_ssl_context

from ...support.raw_backends import CLOSE, OK, ok
from ...support.servers import RawServer, read_request_head, refused_url, unaccepting_url
from ...support.tls import SERVER_NAME, TLSBackendServer
from ...upstream.test_upstream_responses import CHUNKED_HEAD, INVALID, VALID_CHUNKED, EarlyAnswer

LOOPS = ["uvloop", "asyncio"]
UNKNOWN_ISSUER = "TLS: certificate verify failed: unable to get local issuer certificate"
# Where llhttp and the coroutine client's parser differ (see the module's text).
LLHTTP_TAKES = {"overlong chunk size", "chunk extension without a name"}
LLHTTP_REFUSES = {"extensions with blanks and a quoted value"}


class Recorder:
    """A Receiver that writes down what it is told; ``finished`` ends at the response's end
    or failure. ``uploader``: pieces sent with send_body while the upload is not paused
    (then end_body), as an exchange streams a client's body."""

    def __init__(self, loop: asyncio.AbstractEventLoop, uploader: Iterable[bytes] = (),
                 *, end: bool = True) -> None:
        self.events: list[str] = []
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunked = False
        self.follows: bool | None = None
        self.body = bytearray()
        self.error: UpstreamError | None = None
        self.finished: asyncio.Future[None] = loop.create_future()
        self.call: Call | None = None
        self.connection: UpstreamConnection | None = None     # the head's
        self.paused = False
        self.end = end
        self._pieces = iter(uploader)
        self.on_body: Callable[[Recorder], None] | None = None

    def pump(self) -> None:
        """Send pieces until the upload is paused or they run out."""
        call = self.call
        while call is not None and not self.paused and not self.finished.done():
            piece = next(self._pieces, None)
            if piece is None:
                if self.end:
                    call.end_body()
                return
            call.send_body(piece)

    # -- Receiver -------------------------------------------------------------------------

    def upstream_head(self, status, reason, headers, length, chunked) -> None:
        self.events.append("head")
        self.status, self.reason, self.headers = status, reason, headers
        self.length, self.chunked = length, chunked
        self.follows = self.call.follows if self.call is not None else None
        self.connection = self.call.connection if self.call is not None else None

    def upstream_body(self, data: bytes) -> None:
        self.events.append("body")
        self.body += data
        if self.on_body is not None:
            self.on_body(self)

    def upstream_end(self, last: bytes) -> None:
        if last:
            self.upstream_body(last)        # (written down as a read's body, then the end)
        self.events.append("end")
        self.finished.set_result(None)

    def upstream_failed(self, error: UpstreamError) -> None:
        self.events.append("failed")
        self.error = error
        self.finished.set_result(None)

    def upload_paused(self) -> None:
        self.events.append("paused")
        self.paused = True

    def upload_resumed(self) -> None:
        self.events.append("resumed")
        self.paused = False
        self.pump()


def run(scenario, loop: str = "uvloop"):
    """Run ``scenario()`` (a coroutine function) in a new loop, within 30 seconds."""
    async def bounded():
        return await asyncio.wait_for(scenario(), 30)
    return uvloop.run(bounded()) if loop == "uvloop" else asyncio.run(bounded())


def pools_for(loop: asyncio.AbstractEventLoop, **options) -> UpstreamPools:
    settings = {"connect_timeout": 5.0, "read_timeout": 5.0, "ssl": None, "loop": loop}
    return UpstreamPools(**{**settings, **options})


def request_head(method: bytes = b"GET", target: bytes = b"/", *, length: int | None = None,
                 chunked: bool = False, extra: bytes = b"") -> bytes:
    framing = (b"Transfer-Encoding: chunked\r\n" if chunked
               else b"" if length is None else b"Content-Length: %d\r\n" % length)
    return (method + b" " + target + b" HTTP/1.1\r\nHost: backend\r\n" + extra + framing
            + b"\r\n")


async def send(pool: BackendPool, head: bytes = b"", body: bytes = b"", *,
               uploader: Iterable[bytes] | None = None, end: bool = True, resend: bool = True,
               head_timeout: float | None = None, head_request: bool = False,
               on_body: Callable[[Recorder], None] | None = None,
               wait: float = 20.0) -> Recorder:
    """One request on ``pool``; the Recorder once the response ended or failed."""
    recorder = Recorder(asyncio.get_running_loop(), uploader or (), end=end)
    recorder.on_body = on_body
    recorder.call = pool.request(head or request_head(), body, recorder,
                                 more_body=uploader is not None, resend=resend,
                                 head_timeout=head_timeout, head_request=head_request)
    assert recorder.events == []            # nothing is reported before request() returns
    recorder.pump()
    await asyncio.wait_for(asyncio.shield(recorder.finished), wait)
    return recorder


def fetch(url: str, *heads: bytes, read_timeout: float = 5.0, **options):
    """Send ``heads`` one after the other on one pool: the Recorders, and the connections
    the pool opened."""
    async def scenario():
        pools = pools_for(asyncio.get_running_loop(), read_timeout=read_timeout)
        pool = pools.pool(lb.Backend(url))
        recorders = [await send(pool, head, **options) for head in heads]
        pools.close()
        return recorders, pool.opened
    return run(scenario)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for ``condition`` to hold: something the backend does on its side."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


# -- keep-alive -----------------------------------------------------------------------------------

def test_requests_share_one_keep_alive_connection(servers):
    a = servers("a")
    (one, two, three), opened = fetch(a.url, request_head(target=b"/x?y=1"), request_head(),
                                      request_head(b"DELETE"))
    assert [r.status for r in (one, two, three)] == [200, 200, 200]
    assert b'"path": "/x?y=1"' in one.body and b'"method": "DELETE"' in three.body
    assert one.events == ["head", "body", "end"]
    assert (b"Content-Type", b"application/json") in one.headers
    assert one.length == len(one.body) and one.chunked is False
    assert opened == 1 and a.connections == 1


def test_the_newest_idle_connection_is_used_first(raw_backend):
    backend = raw_backend([OK], [OK], [OK])

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pools_for(loop).pool(lb.Backend(backend.url))
        recorders = [Recorder(loop) for _ in range(2)]
        for recorder in recorders:          # two at once: two connections
            recorder.call = pool.request(request_head(), b"", recorder, more_body=False,
                                         resend=True, head_timeout=None, head_request=False)
        await asyncio.gather(*(r.finished for r in recorders))
        idle = list(pool._idle)
        return idle, await send(pool), pool.opened
    idle, third, opened = run(scenario)
    assert third.status == 200 and opened == 2 and len(idle) == 2
    assert third.connection is idle[-1]     # the last one released


def test_a_receiver_may_send_the_next_request_from_upstream_end(raw_backend):
    """The connection is back in its pool, its parser at rest, when upstream_end is called."""
    backend = raw_backend(*([ok(b"%d" % n)] for n in range(5)))

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pools_for(loop).pool(lb.Backend(backend.url))
        done = loop.create_future()
        bodies: list[bytes] = []

        class Chain(Recorder):
            def upstream_end(self, last: bytes) -> None:
                bodies.append(bytes(self.body + last))
                if len(bodies) == 5:
                    done.set_result(None)
                    return
                following = Chain(loop)
                following.call = pool.request(request_head(), b"", following, more_body=False,
                                              resend=True, head_timeout=None, head_request=False)

        first = Chain(loop)
        first.call = pool.request(request_head(), b"", first, more_body=False, resend=True,
                                  head_timeout=None, head_request=False)
        await done
        return bodies, pool.opened
    bodies, opened = run(scenario)
    assert bodies == [b"0", b"1", b"2", b"3", b"4"] and opened == 1


def test_a_request_not_to_be_sent_twice_takes_no_connection_whose_end_is_being_told(
        raw_backend):
    """From upstream_end, a request that may not be resent (a POST) goes on another
    connection: a close the backend sent with the response just ended is read on a later
    turn of the loop, and the request would be lost on it (a 502 for a request no backend
    saw). One that may be resent takes it (see above)."""
    backend = raw_backend([ok(b"0")], [ok(b"1")])

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pools_for(loop).pool(lb.Backend(backend.url))
        done = loop.create_future()
        bodies: list[bytes] = []

        class Chain(Recorder):
            def upstream_end(self, last: bytes) -> None:
                bodies.append(bytes(self.body + last))
                if len(bodies) == 2:
                    done.set_result(None)
                    return
                following = Chain(loop)
                following.call = pool.request(request_head(b"POST", length=0), b"", following,
                                              more_body=False, resend=False, head_timeout=None,
                                              head_request=False)
                taken.append(following.call.connection)

        taken: list[UpstreamConnection | None] = []
        first = Chain(loop)
        first.call = pool.request(request_head(), b"", first, more_body=False, resend=True,
                                  head_timeout=None, head_request=False)
        await done
        return bodies, pool.opened, taken
    bodies, opened, taken = run(scenario)
    assert bodies == [b"0", b"1"] and opened == 2 and taken == [None]


@pytest.mark.parametrize("answer, reused", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
    (OK + b"EXTRA", False),                                     # bytes past its end
    (OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),   # an answer to nothing
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", True),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n",
     True)])
def test_a_connection_is_reused_only_when_the_response_allows(scripted, answer, reused):
    server = scripted([answer, OK], [OK])
    (first, second), opened = fetch(server.url, request_head(), request_head())
    assert first.events[-1] == "end" and second.body == b"ok"
    assert first.body == (b"" if b" 204 " in answer or b" 304 " in answer else b"ok")
    assert all(name != b"X-T" for name, _ in first.headers)         # trailers are dropped
    assert opened == (1 if reused else 2)


def test_a_length_beside_chunked_is_read_chunked_and_the_connection_not_kept(scripted):
    """Content-Length beside Transfer-Encoding: chunked: the coding overrides the length
    (RFC 9112 6.3), as the coroutine client reads it; such a response may be an attempt at
    response splitting, so its connection is not reused (attack A2#1: it was a 502)."""
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
                       b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", OK], [OK])
    (first, second), opened = fetch(server.url, request_head(), request_head())
    assert first.events == ["head", "body", "end"] and first.body == b"hello"
    assert (first.chunked, first.length) == (True, 3)
    assert second.body == b"ok" and opened == 2


def test_bytes_from_an_idle_connection_close_it(raw_backend):
    backend = raw_backend([OK, 0.1, b"unasked"], [OK])

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(backend.url))
        first = await send(pool)
        await until(lambda: pool.idle() == 0)
        second = await send(pool)
        return first, second, pool.opened
    first, second, opened = run(scenario)
    assert first.body == second.body == b"ok" and opened == 2


def test_a_connection_the_backend_closed_while_idle_is_not_used(scripted):
    server = scripted([[OK, CLOSE]], [OK])

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(server.url))
        first = await send(pool)
        await until(lambda: pool.idle() == 0)
        second = await send(pool, resend=False)
        return first, second, pool.opened
    first, second, opened = run(scenario)
    assert first.body == second.body == b"ok" and second.error is None and opened == 2


# -- a stale connection ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"payload"])
def test_a_stale_connection_is_replaced_once_when_the_request_may_be_resent(scripted, body):
    """The backend closes a kept-alive connection as the second request arrives (its
    keep-alive timeout): nothing was answered, the request goes again on a new one."""
    server = scripted([OK, CLOSE], [ok(b"again")])
    post = request_head(b"POST", length=len(body))
    (first, second), opened = fetch(server.url, request_head(), post, body=body)
    assert first.body == b"ok" and second.body == b"again" and second.error is None
    assert opened == 2 and len(server.requests) == 3


def test_a_stale_connection_is_an_error_when_the_request_may_not_be_resent(scripted):
    server = scripted([OK, CLOSE], [OK])

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(server.url))
        await send(pool)
        return await send(pool, request_head(b"POST", length=0), resend=False), pool.opened
    failed, opened = run(scenario)
    assert isinstance(failed.error, StaleConnection) and failed.error.sent
    assert str(failed.error) == "the backend closed the connection (a reused idle connection)"
    assert failed.events == ["failed"] and opened == 1


def test_a_new_connection_closed_without_an_answer_is_no_stale_one(scripted):
    server = scripted([CLOSE])
    (failed,), opened = fetch(server.url, request_head())
    assert type(failed.error) is ProtocolError and failed.error.sent
    assert str(failed.error) == "the backend closed the connection" and opened == 1


# -- what the response holds -----------------------------------------------------------------------

@pytest.mark.parametrize("pause", [0.0, 0.2], ids=["one read", "two reads"])
@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"])
def test_interim_responses_are_skipped(scripted, interim, pause):
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
    second = b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nsecond"
    server = scripted([[interim, pause, first], [interim, pause, second]])
    (one, two), opened = fetch(server.url, request_head(), request_head())
    assert (one.status, one.reason, bytes(one.body)) == (200, b"OK", b"first")
    assert (two.status, two.reason, bytes(two.body)) == (201, b"Created", b"second")
    assert one.headers == [(b"Content-Length", b"5")] and opened == 1


def test_a_response_to_head_has_no_body_whatever_its_head_says(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\n\r\n", OK])
    heads = [request_head(b"HEAD")] * 3

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(server.url))
        answers = [await send(pool, head, head_request=True) for head in heads]
        return answers, await send(pool), pool.opened
    answers, after, opened = run(scenario)
    assert [(r.status, r.length, r.chunked, bytes(r.body), r.events) for r in answers] == [
        (200, 5, False, b"", ["head", "end"]), (200, None, True, b"", ["head", "end"]),
        (200, None, False, b"", ["head", "end"])]
    assert answers[0].follows is True
    assert after.body == b"ok" and opened == 1


def test_a_body_after_a_response_to_head_closes_the_connection(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], [OK])

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(server.url))
        head = await send(pool, request_head(b"HEAD"), head_request=True)
        return head, await send(pool), pool.opened
    head, after, opened = run(scenario)
    assert head.body == b"" and head.events == ["head", "end"]
    assert after.body == b"ok" and opened == 2


def test_a_body_without_framing_is_read_until_the_backend_closes(scripted):
    server = scripted([[b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello ", 0.1, b"world", CLOSE]], [OK])
    (first, second), opened = fetch(server.url, request_head(), request_head())
    assert first.body == b"hello world" and first.events[-1] == "end" and first.error is None
    assert first.length is None and first.chunked is False
    assert second.body == b"ok" and opened == 2


def test_a_large_body_comes_in_pieces(servers):
    a = servers("a")
    a.body_size = 3_000_000
    (one, two), opened = fetch(a.url, request_head(), request_head())
    assert one.body == b"x" * 3_000_000 and one.events.count("body") > 1
    assert two.body == one.body and opened == 1


def test_a_body_cut_short_fails_after_the_head(servers):
    a = servers("a")
    a.behaviour = "truncate"
    a.body_size = 100_000
    (cut,), _ = fetch(a.url, request_head())
    assert cut.events[0] == "head" and cut.events[-1] == "failed"
    assert isinstance(cut.error, ProtocolError) and 0 < len(cut.body) < 100_000
    assert str(cut.error) == "the backend closed the connection"


def test_many_one_byte_chunks_in_one_write_are_decoded(scripted):
    count = 200_000
    server = scripted([CHUNKED_HEAD + b"1\r\nx\r\n" * count + b"0\r\n\r\n", OK])
    (first, second), opened = fetch(server.url, request_head(), request_head())
    assert first.body == b"x" * count and first.chunked and first.length is None
    assert second.body == b"ok" and opened == 1


def test_header_values_lose_the_blanks_around_them(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\nX-Blank:   padded value \t\r\nEmpty:\r\n"
                       b"X-Tab: a\tb\r\nContent-Length: 2\r\n\r\nok"])
    (answer,), _ = fetch(server.url, request_head())
    assert answer.headers == [(b"X-Blank", b"padded value"), (b"Empty", b""),
                              (b"X-Tab", b"a\tb"), (b"Content-Length", b"2")]


# -- read boundaries, fed by hand ----------------------------------------------------------------

class _Transport(asyncio.Transport):
    """Just enough of a transport for a connection fed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def started(loop: asyncio.AbstractEventLoop, receiver: type[Recorder] = Recorder, *,
            head_request: bool = False) -> tuple[BackendPool, UpstreamConnection, Recorder]:
    """A new pool's connection (on a fake transport) carrying a GET for a ``receiver``."""
    pool = BackendPool(lb.Backend("http://127.0.0.1:9"), connect_timeout=1.0,
                       read_timeout=5.0, loop=loop, deadlines=Deadlines())
    connection = UpstreamConnection(pool)
    connection.connection_made(_Transport())
    recorder = receiver(loop)
    recorder.call = call = Call(pool, recorder, request_head(), b"", False, False,
                                head_request, 0.0)
    connection.start(call, request_head(), 0)
    return pool, connection, recorder


def feed(pieces: list[bytes], *, head_request: bool = False) -> tuple[Recorder, BackendPool]:
    """Feed a response to a new connection, one read per piece."""
    loop = asyncio.new_event_loop()
    try:
        pool, connection, recorder = started(loop, head_request=head_request)
        for piece in pieces:
            connection.data_received(piece)
        return recorder, pool
    finally:
        loop.close()


def every_cut(wire: bytes):
    yield [wire]
    yield [wire[i:i + 1] for i in range(len(wire))]
    for cut in range(1, len(wire)):
        yield [wire[:cut], wire[cut:]]


@pytest.mark.parametrize("wire, body", [
    (CHUNKED_HEAD + b"".join(b"%x\r\n%s\r\n" % (n, b"abcdefghijklmnopq"[:n])
                             for n in (1, 2, 16, 3, 1)) + b"0\r\nX-Trailer: t\r\n\r\n",
     b"a" + b"ab" + b"abcdefghijklmnop" + b"abc" + b"a"),
    (b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\nHTTP/1.1 200 Fine Thanks\r\nContent-Length: 26"
     b"\r\n\r\n" + bytes(range(97, 123)), bytes(range(97, 123)))], ids=["chunked", "length"])
def test_the_response_is_the_same_whatever_the_read_boundaries(wire, body):
    for pieces in every_cut(wire):
        recorder, pool = feed(pieces)
        assert recorder.events[0] == "head" and recorder.events[-1] == "end", pieces
        assert bytes(recorder.body) == body and recorder.reason in (b"OK", b"Fine Thanks")
        assert pool.idle() == 1


def test_follows_says_whether_the_body_comes_in_the_same_read():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    whole, _ = feed([head + b"ok"])
    apart, _ = feed([head, b"ok"])
    assert whole.follows is True and apart.follows is False
    assert whole.events == ["head", "body", "end"] == apart.events


@pytest.mark.parametrize("pieces, calls", [
    ([b"ok"], [("end", b"ok")]),
    ([b"o", b"k"], [("body", b"o"), ("end", b"k")]),
    ([b"", b"ok"], [("end", b"ok")])], ids=["one read", "two reads", "head alone"])
def test_the_body_that_comes_with_the_end_is_told_with_it(pieces, calls):
    """A read that ends the response hands its body bytes to upstream_end (one call for a
    small response's body and end); upstream_body has those of the reads before."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    told: list[tuple[str, bytes]] = []

    class Calls(Recorder):
        def upstream_body(self, data: bytes) -> None:
            told.append(("body", data))

        def upstream_end(self, last: bytes) -> None:
            told.append(("end", last))

    loop = asyncio.new_event_loop()
    try:
        pool, connection, _ = started(loop, Calls)
        reads = [head + pieces[0], *pieces[1:]]
        for read in reads:
            connection.data_received(read)
    finally:
        loop.close()
    assert told == calls and pool.idle() == 1


@pytest.mark.parametrize("after, reused", [(b"", True), (b"\r\n", True), (b"x", False),
                                           (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                            False)], ids=["none", "blank line", "a byte",
                                                          "a response"])
def test_the_reads_after_a_head_of_known_length_are_its_body_as_they_came(after, reused):
    """Past the head's read a body of known length is not parsed (no copy): each read is
    given as it came, the last one up to the body's end; what follows it is read as llhttp
    reads what follows a response (a blank line skipped, else the connection not reused)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    reads = [head + b"ab", b"cdef", b"ghij" + after]
    loop = asyncio.new_event_loop()
    try:
        pieces: list[bytes] = []

        class Pieces(Recorder):
            def upstream_body(self, data: bytes) -> None:
                pieces.append(data)
                super().upstream_body(data)

        pool, connection, recorder = started(loop, Pieces)
        for read in reads:
            connection.data_received(read)
        assert recorder.events == ["head", "body", "body", "body", "end"]
        assert bytes(recorder.body) == b"abcdefghij"
        assert pieces[1] is reads[1]                # the read itself
        assert pool.idle() == (1 if reused else 0)
        if reused:                                  # and its parser reads the next response
            recorder = Recorder(loop)
            recorder.call = call = Call(pool, recorder, request_head(), b"", False, False,
                                        False, 0.0)
            pool._idle.pop().start(call, request_head(), 0)
            connection.data_received(head + b"0123456789")
            assert recorder.events == ["head", "body", "end"] and recorder.body == b"0123456789"
    finally:
        loop.close()


def test_a_head_larger_than_the_limit_is_refused_before_its_end_arrives():
    line = b"X-Filler: " + b"f" * 1012 + b"\r\n"
    recorder, pool = feed([b"HTTP/1.1 200 OK\r\n"] + [line] * 70)
    assert isinstance(recorder.error, ProtocolError) and recorder.events == ["failed"]
    assert str(recorder.error) == "the response head is too large" and pool.idle() == 0


def test_a_timer_that_is_not_the_connections_current_one_does_nothing():
    """Deadlines cannot take a timer out of a bucket that is firing: a connection whose call
    ended (and which carries another) may still hear the old timer. It is told apart by its
    time: early for the current call's timer, it neither fails nor sets a new one."""
    loop = asyncio.new_event_loop()
    try:
        pool, connection, recorder = started(loop)
        timer = connection._timer
        connection._expired()
        assert recorder.events == [] and connection._timer is timer
        connection._due = connection._seen = loop.time() - 5.0     # (its time has come)
        connection._expired()
        assert recorder.events == ["failed"] and isinstance(recorder.error, ReadTimeout)
    finally:
        loop.close()


# -- invalid responses (the coroutine client's cases) ---------------------------------------

@pytest.mark.parametrize("response", [wire for name, wire in INVALID.items()
                                      if name not in LLHTTP_TAKES],
                         ids=[name for name in INVALID if name not in LLHTTP_TAKES])
def test_an_invalid_response_is_a_protocol_error_and_the_connection_is_closed(scripted,
                                                                              response):
    server = scripted([response], [OK])
    (bad, good), opened = fetch(server.url, request_head(), request_head(), read_timeout=3.0)
    assert isinstance(bad.error, ProtocolError) and bad.error.sent, bad.events
    assert bad.events in (["failed"], ["head", "body", "failed"], ["head", "failed"])
    assert good.body == b"ok" and opened == 2


def test_an_invalid_response_fails_before_the_head_when_it_is_in_the_heads_read(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\x01b\r\n\r\n"])
    (bad,), _ = fetch(server.url, request_head())
    assert bad.events == ["failed"]
    assert str(bad.error) == ("the backend's response is not valid HTTP/1.1: "
                              "Invalid header value char")


@pytest.mark.parametrize("response, words", [
    (b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n",
     "the backend's status 999 is outside 100-599"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     "the backend switched protocols (101) unasked"),
    (b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
     "a control character in the backend's reason: b'O\\x01K'")])
def test_an_invalid_response_says_what_is_wrong(scripted, response, words):
    (bad,), _ = fetch(scripted([response]).url, request_head())
    assert str(bad.error) == words


@pytest.mark.parametrize("chunk", [c for name, c in VALID_CHUNKED.items()
                                   if name not in LLHTTP_REFUSES],
                         ids=[name for name in VALID_CHUNKED if name not in LLHTTP_REFUSES])
def test_valid_chunk_lines_are_accepted(scripted, chunk):
    server = scripted([CHUNKED_HEAD + chunk + b"0\r\nX-Trailer: t\r\n\r\n", OK])
    (first, second), opened = fetch(server.url, request_head(), request_head())
    assert first.status == 200 and first.body in (b"hello", b"hellohello")
    assert second.body == b"ok" and opened == 1


# -- request bodies ---------------------------------------------------------------------------

def test_a_known_body_goes_with_its_head(servers):
    a = servers("a")
    body = b"b" * 100_000
    (answer,), _ = fetch(a.url, request_head(b"POST", length=len(body)), body=body)
    assert answer.status == 200 and a.received[0][3] == body
    assert answer.call.bytes_sent == len(body)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_streamed_body_is_framed_as_its_head_says(servers, chunked):
    a = servers("a")
    pieces = [b"one ", b"", b"two ", b"three" * 20_000]
    total = sum(map(len, pieces))
    head = request_head(b"PUT", chunked=chunked, length=None if chunked else total)
    (answer,), opened = fetch(a.url, head, uploader=pieces)
    assert answer.status == 200 and a.received[0][3] == b"".join(pieces)
    assert answer.call.bytes_sent == total and answer.error is None


def test_a_chunked_head_with_a_whole_body_is_framed_and_ended(servers):
    a = servers("a")
    (answer,), _ = fetch(a.url, request_head(b"POST", chunked=True), body=b"whole")
    (empty,), _ = fetch(a.url, request_head(b"POST", chunked=True))
    assert answer.status == empty.status == 200
    assert [r[3] for r in a.received] == [b"whole", b""]


def test_a_streamed_body_longer_than_its_content_length_fails_the_attempt(servers):
    a = servers("a")
    (answer,), _ = fetch(a.url, request_head(b"PUT", length=3), uploader=[b"ab", b"cd"])
    assert isinstance(answer.error, ProtocolError) and answer.events == ["failed"]
    assert str(answer.error) == "the request body is longer than its Content-Length"


def test_body_sent_while_connecting_is_held_and_pauses_the_upload(servers):
    a = servers("a")
    pieces = [b"p" * 30_000] * 10

    async def scenario():
        pool = pools_for(asyncio.get_running_loop()).pool(lb.Backend(a.url))
        return await send(pool, request_head(b"PUT", chunked=True), uploader=pieces)
    answer = run(scenario)
    assert answer.events[:2] == ["paused", "resumed"] and answer.status == 200
    assert a.received[0][3] == b"".join(pieces)
    assert answer.call.bytes_sent == 300_000 > UPLOAD_HIGH_WATER


def test_an_early_answer_stops_the_upload_and_the_connection_is_not_reused():
    backend = EarlyAnswer(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
    piece = b"x" * 65536

    async def scenario():
        pool = pools_for(asyncio.get_running_loop(), read_timeout=3.0).pool(
            lb.Backend(backend.url))
        results = []
        for _ in range(2):
            started = time.monotonic()
            head = request_head(b"POST", length=len(piece) * 480)
            recorder = await send(pool, head, uploader=[piece] * 480, end=False)
            recorder.call.send_body(piece)          # after the answer: dropped
            recorder.call.end_body()
            results.append((recorder, time.monotonic() - started))
        return results, pool.opened
    try:
        results, opened = run(scenario)
    finally:
        backend.stop()
    for recorder, took in results:
        assert recorder.status == 413 and recorder.body == b"too large" and took < 1.5
        assert recorder.error is None and recorder.events[-1] == "end"
        assert recorder.call.bytes_sent < len(piece) * 480
        # a pause is always ended (by the answer at the latest): nothing is held back
        assert recorder.events.count("paused") == recorder.events.count("resumed")
    assert opened == 2 and backend.connections == 2


class Unread(RawServer):
    """Reads a request's head, never its body, and never answers (until stopped)."""

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            read_request_head(reader)
            self.stopping.wait(30)


@pytest.mark.parametrize("read_timeout, head_timeout", [(10.0, 0.5), (0.4, None)],
                         ids=["head timeout", "read timeout"])
def test_an_upload_the_backend_does_not_read_times_out(read_timeout, head_timeout):
    server = Unread()
    total = 64_000_000

    async def scenario():
        pool = pools_for(asyncio.get_running_loop(), read_timeout=read_timeout).pool(
            lb.Backend(server.url))
        started = time.monotonic()
        recorder = await send(pool, request_head(b"PUT", length=total),
                              uploader=[b"u" * 1_000_000] * 64, head_timeout=head_timeout)
        return recorder, time.monotonic() - started
    try:
        recorder, took = run(scenario)
    finally:
        server.stop()
    error = recorder.error
    assert isinstance(error, ReadTimeout) and error.sent and error.timeout
    assert error.deadline is (head_timeout is not None)
    assert str(error) == ("no response head from the backend within the read timeout"
                          if head_timeout else "the backend stopped reading the request body")
    assert 0 < error.bytes_sent < total and "paused" in recorder.events
    assert took < (head_timeout or read_timeout) + 1.0


def test_a_failure_after_the_upload_says_how_many_body_bytes_were_sent(servers):
    a = servers("a")
    a.behaviour = "close"
    body = b"m" * 1_000_000
    (failed,), _ = fetch(a.url, request_head(b"POST", length=len(body)), body=body)
    assert isinstance(failed.error, UpstreamError) and failed.error.sent
    assert failed.error.bytes_sent == len(body)


# -- timeouts and connecting ----------------------------------------------------------------

def attempt(url: str, *, connect_timeout: float = 5.0, read_timeout: float = 10.0,
            head_timeout: float | None = None, **options) -> tuple[Recorder, float]:
    async def scenario():
        pools = pools_for(asyncio.get_running_loop(), connect_timeout=connect_timeout,
                          read_timeout=read_timeout)
        pool = pools.pool(lb.Backend(url))
        started = time.monotonic()
        recorder = await send(pool, head_timeout=head_timeout, **options)
        return recorder, time.monotonic() - started, pool
    recorder, took, pool = run(scenario)
    recorder.pool = pool
    return recorder, took


def test_a_head_timeout_cuts_the_wait_for_the_head_and_says_so(servers):
    a = servers("a")
    a.behaviour = "hang"
    recorder, took = attempt(a.url, read_timeout=10, head_timeout=0.3)
    error = recorder.error
    assert isinstance(error, ReadTimeout) and error.deadline and error.sent and took < 1.3
    own, took = attempt(a.url, read_timeout=0.3, head_timeout=10)
    assert isinstance(own.error, ReadTimeout) and not own.error.deadline and took < 1.3
    assert str(own.error) == "no response head from the backend within the read timeout"
    assert failure_text(own.error, own.pool) == "read timed out after 300ms"


def test_a_head_trickled_in_gets_the_read_timeout_all_the_same(raw_backend):
    """Bytes of a head do not begin new waits (as in the coroutine client): a backend
    sending its head a byte at a time is cut by the read timeout."""
    trickle: list = []
    for byte in OK[:12]:
        trickle += [bytes([byte]), 0.1]
    backend = raw_backend(trickle)
    recorder, took = attempt(backend.url, read_timeout=0.5)
    assert isinstance(recorder.error, ReadTimeout) and recorder.events == ["failed"]
    assert took < 1.0


def test_a_read_timeout_cuts_a_body_that_stalls(servers):
    a = servers("a")
    a.behaviour = "stall"
    a.body_size = 10_000
    recorder, took = attempt(a.url, read_timeout=0.4, head_timeout=0.2)
    assert recorder.events[0] == "head" and recorder.events[-1] == "failed"
    error = recorder.error
    assert isinstance(error, ReadTimeout) and not error.deadline and 0.3 < took < 1.5
    assert str(error) == "no body bytes from the backend within the read timeout"
    assert a.peer_closed.wait(2)


def test_a_body_whose_bytes_keep_coming_is_not_cut_however_long_it_takes(raw_backend):
    """Each read begins a new wait: six pieces 0.1 s apart under a 0.3 s read timeout (the
    timer, set once, finds fresh bytes each time it fires and is set again)."""
    answer: list = [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"]
    for piece in b"abcdef":
        answer += [0.1, bytes([piece])]
    backend = raw_backend(answer, [OK])

    async def scenario():
        pool = pools_for(asyncio.get_running_loop(), read_timeout=0.3).pool(
            lb.Backend(backend.url))
        return await send(pool), await send(pool), pool.opened
    slow, after, opened = run(scenario)
    assert slow.error is None and slow.body == b"abcdef" and slow.events.count("body") >= 3
    assert after.body == b"ok" and opened == 1


def test_no_read_timeout_while_the_receiver_holds_the_response_back(servers):
    a = servers("a")
    a.body_size = 8_000_000

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pools_for(loop, read_timeout=0.3).pool(lb.Backend(a.url))
        held: list[int] = []

        def hold(recorder: Recorder) -> None:
            if not held:
                held.append(len(recorder.body))
                recorder.call.pause_reading()
                loop.call_later(0.8, lambda: (held.append(len(recorder.body)),
                                              recorder.call.resume_reading()))
        recorder = await send(pool, on_body=hold)
        return recorder, held
    recorder, held = run(scenario)
    assert recorder.error is None and len(recorder.body) == 8_000_000
    assert held[0] == held[1]               # nothing was read meanwhile


def test_connect_failures_say_nothing_was_sent():
    refused, _ = attempt(refused_url())
    assert type(refused.error) is ConnectError and refused.error.sent is False
    assert failure_text(refused.error, refused.pool) == "connection refused"
    assert refused.events == ["failed"] and refused.error.bytes_sent == 0
    with unaccepting_url() as silent:
        own, took = attempt(silent, connect_timeout=0.3)
        cut, cut_took = attempt(silent, connect_timeout=10, head_timeout=0.3)
    assert isinstance(own.error, ConnectTimeout) and not own.error.deadline and took < 1.3
    assert not own.error.sent
    assert failure_text(own.error, own.pool) == "connect timed out after 300ms"
    assert isinstance(cut.error, ConnectTimeout) and cut.error.deadline and cut_took < 1.3


def test_an_aborted_call_reports_nothing_and_closes_its_connection(servers):
    a = servers("a")
    a.behaviour = "hang"

    async def scenario():
        loop = asyncio.get_running_loop()
        pools = pools_for(loop)
        with unaccepting_url() as silent:
            connecting = Recorder(loop)
            pool = pools.pool(lb.Backend(silent))
            connecting.call = pool.request(request_head(), b"", connecting, more_body=False,
                                           resend=True, head_timeout=None, head_request=False)
            await asyncio.sleep(0.05)
            connecting.call.abort()
            await asyncio.sleep(0.05)
            assert not pool._connecting
        waiting = Recorder(loop)
        waiting.call = pools.pool(lb.Backend(a.url)).request(
            request_head(), b"", waiting, more_body=False, resend=True, head_timeout=None,
            head_request=False)
        await until(lambda: a.requests == 1)
        connection = waiting.call.connection
        waiting.call.abort()
        waiting.call.abort()
        await asyncio.sleep(0.1)
        return connecting, waiting, connection
    connecting, waiting, connection = run(scenario)
    assert connecting.events == [] and waiting.events == []
    assert connection.transport.is_closing()


# -- forget and close ---------------------------------------------------------------------------

def test_forget_closes_idle_connections_now_and_busy_ones_after_their_response(raw_backend):
    backend = raw_backend([OK], [OK], [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", 0.3,
                                       b"late"], [OK])

    async def scenario():
        loop = asyncio.get_running_loop()
        pools = pools_for(loop)
        pool = pools.pool(lb.Backend(backend.url))
        await asyncio.gather(send(pool), send(pool))        # two at once: two connections
        assert pool.idle() == 2
        busy = Recorder(loop)
        busy.call = pool.request(request_head(), b"", busy, more_body=False, resend=True,
                                 head_timeout=None, head_request=False)
        await until(lambda: busy.events == ["head"])
        pools.forget([lb.Backend(backend.url)])
        assert pool.idle() == 0 and pools.pools() == ()
        await busy.finished
        after = await send(pools.pool(lb.Backend(backend.url)))
        return busy, after, pool
    busy, after, pool = run(scenario)
    assert busy.body == b"late" and pool.idle() == 0 and pool.opened == 2
    assert after.body == b"ok" and backend.connections == 3


def test_forget_from_another_thread_closes_on_the_pools_loop(raw_backend):
    backend = raw_backend([OK])

    async def scenario():
        pools = pools_for(asyncio.get_running_loop())
        pool = pools.pool(lb.Backend(backend.url))
        await send(pool)
        await asyncio.to_thread(pools.forget, [lb.Backend(backend.url)])
        await until(lambda: pool.idle() == 0)
        await until(lambda: backend.open_connections() == 0)
    run(scenario)


def test_close_closes_idle_connections(raw_backend):
    backend = raw_backend([OK])

    async def scenario():
        pools = pools_for(asyncio.get_running_loop())
        await send(pools.pool(lb.Backend(backend.url)))
        pools.close()
        await until(lambda: backend.open_connections() == 0)
    run(scenario)


# -- TLS backends -------------------------------------------------------------------------------

def tls_get(loop: str, backend: lb.Backend, context: ssl.SSLContext | None, *heads: bytes,
            body: bytes = b""):
    async def scenario():
        pools = pools_for(asyncio.get_running_loop(), ssl=context)
        pool = pools.pool(backend)
        recorders = [await send(pool, head, body) for head in heads or [request_head()]]
        pools.close()
        return recorders, pool
    return run(scenario, loop)


def settings(url: str, **tls) -> lb.Settings:
    return lb.Settings(backends=url, **tls)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_https_backend_with_its_ca_and_a_kept_connection(loop, pki, https_backend):
    url = https_backend.url
    context = backend_ssl_context(settings(url, backend_ca=pki.ca))
    (one, two), pool = tls_get(loop, lb.Backend(url), context, request_head(), request_head())
    assert one.status == two.status == 200 and b'"server": "a"' in two.body
    assert pool.opened == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_an_unknown_certificate_is_a_tls_error_nothing_sent(loop, pki, https_backend):
    (failed,), pool = tls_get(loop, lb.Backend(https_backend.url), None)
    error = failed.error
    assert isinstance(error, TLSError) and error.sent is False and not error.timeout
    assert str(error) == failure_text(error, pool) == UNKNOWN_ISSUER
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert https_backend.requests == 0


def test_the_name_checked_is_the_backends_server_name(pki, https_backend):
    context = backend_ssl_context(settings(https_backend.url, backend_ca=pki.ca))
    named = lb.Backend(https_backend.url, server_name=SERVER_NAME)
    assert tls_get("uvloop", named, context)[0][0].status == 200
    other = lb.Backend(https_backend.url, server_name="other.lbmiddleware.test")
    (failed,), _ = tls_get("uvloop", other, context)
    assert str(failed.error) == ("TLS: certificate verify failed: Hostname mismatch, "
                                 "certificate is not valid for 'other.lbmiddleware.test'.")


@pytest.fixture(params=["TLSv1_2", "TLSv1_3"])
def mutual(request, pki):
    context = pki.server_context(client_certificate=True)
    context.maximum_version = getattr(ssl.TLSVersion, request.param)
    with TLSBackendServer("m", context) as backend:
        yield backend


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_certificate_is_sent_and_its_absence_is_a_failed_handshake(loop, pki, mutual):
    url = mutual.url
    with_cert = backend_ssl_context(settings(url, backend_ca=pki.ca,
                                             backend_client_cert=pki.client_both))
    assert tls_get(loop, lb.Backend(url), with_cert)[0][0].status == 200
    without = backend_ssl_context(settings(url, backend_ca=pki.ca))
    (failed,), _ = tls_get(loop, lb.Backend(url), without,
                           request_head(b"POST", length=10), body=b"b" * 10)
    assert isinstance(failed.error, TLSError) and failed.error.sent is False, failed.error
    assert str(failed.error) in ("TLS: tlsv13 alert certificate required",      # TLS 1.3
                                 "TLS: sslv3 alert handshake failure")          # TLS 1.2
    assert mutual.requests == 1
