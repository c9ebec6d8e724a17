"""The sans-I/O response parser (lbmiddleware.upstream.parser): bytes in, head and body out.

No socket and no event loop: each test feeds the bytes a backend could send, in one piece
or cut anywhere, and checks what a client relies on (status, headers, body bytes, where
the response ends) or that the response is refused with a ProtocolError.
"""

from __future__ import annotations

import pytest

from lbmiddleware.upstream import NO_BODY_STATUSES, ProtocolError
from lbmiddleware.upstream.parser import MAX_HEAD, ResponseParser

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def parse(wire: bytes, *, pieces: int | None = None, eof: bool = False,
          **options: bool) -> tuple[ResponseParser, bytes]:
    """Feed ``wire`` whole, or cut into pieces of ``pieces`` bytes; the parser and the body."""
    parser = ResponseParser(**options)
    step = pieces or len(wire) or 1
    body = b"".join(parser.feed(wire[i:i + step]) for i in range(0, len(wire), step))
    if eof:
        parser.feed_eof()
    return parser, body


def every_cut(wire: bytes):
    """``wire`` whole, byte by byte, and cut in two at every offset."""
    yield [wire]
    yield [wire[i:i + 1] for i in range(len(wire))]
    for cut in range(1, len(wire)):
        yield [wire[:cut], wire[cut:]]


# -- the head -----------------------------------------------------------------------------------

def test_status_reason_and_headers_as_received():
    parser, body = parse(b"HTTP/1.1 201 Created Here\r\nX-One: 1\r\nset-cookie: a=1\r\n"
                         b"Set-Cookie: b=2\r\nX-Blank:   padded value \t\r\nEmpty:\r\n"
                         b"Content-Length: 2\r\n\r\nok")
    head = parser.head
    assert (head.status, head.reason) == (201, b"Created Here")
    assert head.headers == [(b"X-One", b"1"), (b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2"),
                            (b"X-Blank", b"padded value"), (b"Empty", b""),
                            (b"Content-Length", b"2")]
    assert body == b"ok" and parser.complete and head.keep_alive


def test_no_head_until_the_blank_line():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") == b""
    assert parser.head is None and not parser.complete
    assert parser.feed(b"\r\nok") == b"ok"
    assert parser.head.status == 200 and parser.complete


@pytest.mark.parametrize("wire, keep_alive", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\n\r\n", False)])              # read to the close: never reused
def test_keep_alive_follows_the_version_and_connection(wire, keep_alive):
    parser, _ = parse(wire)
    assert parser.head.keep_alive is keep_alive


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"])
def test_interim_responses_are_skipped(interim):
    wire = interim + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    for pieces in every_cut(wire):
        parser = ResponseParser()
        body = b"".join(parser.feed(piece) for piece in pieces)
        assert parser.head.status == 200 and body == b"final" and parser.complete
        assert parser.head.headers == [(b"Content-Length", b"5")]


def test_a_101_is_refused_unless_asked_for():
    wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with pytest.raises(ProtocolError, match="101"):
        parse(wire)
    parser, body = parse(wire + b"\x81\x05hello", allow_upgrade=True)
    assert parser.head.status == 101 and parser.complete and body == b""
    assert parser.trailing_data == b"\x81\x05hello"      # the tunnel's first bytes, untouched
    assert not parser.head.keep_alive


@pytest.mark.parametrize("status_line", [
    b"HTTP/1.1 099 Low", b"HTTP/1.1 600 Weird", b"HTTP/1.1 999 Weird", b"HTTP/1.1 20 OK",
    b"HTTP/1.1 2000 OK", b"HTTP/1.1 +20 OK", b"HTTP/1.1  200 OK", b"HTTP/2 200 OK",
    b"HTTP/1.1 2OO OK", b"ICY 200 OK", b"HTTP/1.1 200 O\x01K"])
def test_a_status_line_outside_the_grammar_is_refused(status_line):
    with pytest.raises(ProtocolError):
        parse(status_line + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("status", [100, 200, 404, 599])
def test_statuses_from_100_to_599_are_taken(status):
    final = b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status
    wire = final + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if status < 200 else final
    parser, _ = parse(wire)
    assert parser.head.status == (200 if status < 200 else status)


@pytest.mark.parametrize("line", [
    b"X: a\x01b", b"X: a\x7fb", b"X: \x1b[31m", b"X: a\x00b", b"X: a\nb", b"X: a\rb",
    b"X : a", b"X", b": a", b" folded", b"X\x01: a", b"X Y: a"])
def test_a_header_line_outside_the_grammar_is_refused(line):
    with pytest.raises(ProtocolError):
        parse(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n")


def test_a_control_character_in_an_interim_head_is_refused():
    with pytest.raises(ProtocolError):
        parse(b"HTTP/1.1 103 Early\r\nLink: \x01\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_a_tab_in_a_value_is_kept():
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nX: a\tb\r\nContent-Length: 0\r\n\r\n")
    assert parser.head.headers[0] == (b"X", b"a\tb")


def test_a_head_larger_than_the_limit_is_refused_before_its_end_arrives():
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError, match="too large"):
        for _ in range(MAX_HEAD // 1024 + 1):
            parser.feed(b"X-Filler: " + b"f" * 1012 + b"\r\n")


def test_a_head_just_under_the_limit_is_taken():
    filler = b"X-Filler: " + b"f" * 1012 + b"\r\n"
    lines = (MAX_HEAD - 100) // len(filler)
    parser, body = parse(b"HTTP/1.1 200 OK\r\n" + filler * lines + b"Content-Length: 2\r\n\r\nok",
                         pieces=4096)
    assert parser.head.status == 200 and len(parser.head.headers) == lines + 1 and body == b"ok"


# -- Content-Length bodies ------------------------------------------------------------------------

def test_a_content_length_body_in_pieces():
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\n" + bytes(range(97, 123))
    for pieces in every_cut(wire):
        parser = ResponseParser()
        body = b""
        for piece in pieces:
            assert not parser.complete
            body += parser.feed(piece)
        assert body == b"abcdefghijklmnopqrstuvwxyz" and parser.complete
        assert parser.trailing_data == b""


def test_bytes_after_a_content_length_body_are_not_body():
    parser, body = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert body == b"ok" and parser.complete and parser.trailing_data == b"EXTRA"
    assert parser.feed(b"MORE") == b"" and parser.trailing_data == b"EXTRAMORE"


@pytest.mark.parametrize("framing", [
    b"Content-Length: -1", b"Content-Length: 1e3", b"Content-Length: +5", b"Content-Length: 0x5",
    b"Content-Length: 5\r\nContent-Length: 6", b"Content-Length: 5, 6", b"Content-Length:"])
def test_a_bad_or_conflicting_content_length_is_refused(framing):
    with pytest.raises(ProtocolError, match="Content-Length"):
        parse(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\nhello")


def test_the_same_content_length_twice_is_one():
    """RFC 9110 8.6: equal values may be replaced by one; never both passed on (the client
    would get two Content-Length fields)."""
    parser, body = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n"
                         b"content-length: 5\r\n\r\nhello")
    assert body == b"hello" and parser.complete
    assert parser.head.headers == [(b"Content-Length", b"5"), (b"X-A", b"1")]


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok"])
def test_a_head_ended_by_bare_line_feeds_is_refused_at_once(wire):
    """A head whose lines end in a bare LF is malformed (contract: a 502 at once), not a head
    still to come: waiting for CRLF CRLF would cost the read timeout (a 504)."""
    with pytest.raises(ProtocolError, match="bare CR, LF"):
        parse(wire)


def test_a_connection_closed_inside_a_body_or_head_is_a_cut_response():
    for wire in (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"HTTP/1.1 200 OK\r\nCont",
                 b"", CHUNKED_HEAD + b"5\r\nhel"):
        parser = ResponseParser()
        parser.feed(wire)
        with pytest.raises(ProtocolError):
            parser.feed_eof()


# -- chunked bodies ------------------------------------------------------------------------------

CHUNKS = b"".join(b"%x\r\n%s\r\n" % (n, b"abcdefghijklmnopq"[:n]) for n in (1, 2, 16, 3, 1))
CHUNKED_BODY = b"a" + b"ab" + b"abcdefghijklmnop" + b"abc" + b"a"


@pytest.mark.parametrize("end", [b"0\r\n\r\n", b"0\r\nX-Trailer: t\r\nX-Other:\r\n\r\n"],
                         ids=["no trailer", "trailers"])
def test_a_chunked_body_whatever_the_read_boundaries(end):
    wire = CHUNKED_HEAD + CHUNKS + end
    for pieces in every_cut(wire):
        parser = ResponseParser()
        body = b"".join(parser.feed(piece) for piece in pieces)
        assert body == CHUNKED_BODY and parser.complete and parser.trailing_data == b""
        assert parser.head.headers == [(b"Transfer-Encoding", b"chunked")]   # trailers dropped


def test_many_one_byte_chunks_in_one_piece():
    parser, body = parse(CHUNKED_HEAD + b"1\r\nx\r\n" * 10_000 + b"0\r\n\r\n")
    assert body == b"x" * 10_000 and parser.complete


def test_the_last_coding_decides_chunked():
    parser, body = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n"
                         b"Content-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert body == b"abc" and parser.complete and parser.head.keep_alive


@pytest.mark.parametrize("chunk", [
    b"5;ext=1\r\nhello\r\n", b'5 ; a = "q \\" v" ;b\r\nhello\r\n', b"5;a;b=c\r\nhello\r\n",
    b"000A\r\nhellohello\r\n", b"000000000000000A\r\nhellohello\r\n", b"5 \r\nhello\r\n",
    b"a\r\nhellohello\r\n"])
def test_chunk_extensions_and_size_spellings_are_accepted(chunk):
    for pieces in (None, 1):
        parser, body = parse(CHUNKED_HEAD + chunk + b"0\r\n\r\n", pieces=pieces)
        assert body in (b"hello", b"hellohello") and parser.complete


@pytest.mark.parametrize("chunks", [
    b"0x5\r\nhello\r\n", b"+5\r\nhello\r\n", b"-5\r\nhello\r\n", b" 5\r\nhello\r\n",
    b"5_0\r\n" + b"x" * 80 + b"\r\n", b"0" * 16 + b"05\r\nhello\r\n", b";x\r\nhello\r\n",
    b"\r\nhello\r\n", b"5;x\nhello\r\nhello\r\n", b"5;a\x01b\r\nhello\r\n", b"5;=x\r\nhello\r\n",
    b'5;a="b\r\nhello\r\n', b"g\r\nhello\r\n"],
    ids=["0x", "plus", "minus", "leading space", "underscore", "17 digits", "no size",
         "empty line", "bare LF", "control in extension", "extension without a name",
         "unterminated quote", "not hex"])
def test_a_bad_chunk_size_line_is_refused(chunks):
    for pieces in (None, 1):
        with pytest.raises(ProtocolError):
            parse(CHUNKED_HEAD + chunks + b"0\r\n\r\n", pieces=pieces)


@pytest.mark.parametrize("chunks", [b"5\r\nhello!\r\n0\r\n\r\n", b"5\r\nhelloXY0\r\n\r\n"])
def test_chunk_data_longer_than_its_size_is_refused(chunks):
    for pieces in (None, 1):
        with pytest.raises(ProtocolError, match="longer than its size"):
            parse(CHUNKED_HEAD + chunks, pieces=pieces)


@pytest.mark.parametrize("trailer", [b"X: a\x01", b"X : a", b"no colon", b" folded"])
def test_a_malformed_trailer_is_refused(trailer):
    with pytest.raises(ProtocolError, match="trailer"):
        parse(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n")


def test_a_chunk_line_larger_than_the_limit_is_refused():
    with pytest.raises(ProtocolError, match="too large"):
        parse(CHUNKED_HEAD + b"5;" + b"x" * (MAX_HEAD + 10), pieces=8192)


def test_bytes_after_the_last_chunk_are_not_body():
    parser, body = parse(CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert body == b"ok" and parser.complete
    assert parser.trailing_data == b"HTTP/1.1 200 OK\r\n"


class CountingBytes(bytes):
    """bytes that count what slicing copies and what ``find`` scans (shared ``work``)."""

    work = [0]

    def __getitem__(self, index):
        result = bytes.__getitem__(self, index)
        if isinstance(index, slice):
            self.work[0] += len(result)
            return CountingBytes(result)
        return result

    def find(self, sub, start=0, end=None):
        found = bytes.find(self, sub, start, len(self) if end is None else end)
        limit = len(self) if end is None else min(end, len(self))
        stop = limit if found < 0 else found + len(sub)
        self.work[0] += max(0, stop - start)
        return found


def test_decoding_many_small_chunks_is_linear_work():
    """The chunk parser's copying and scanning grows with the bytes, not bytes x chunks
    (counted, not timed: each line sliced off the front re-copied the rest)."""
    def work(chunks: int) -> int:
        parser = ResponseParser()
        parser.feed(CHUNKED_HEAD)
        CountingBytes.work[0] = 0
        payload = b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
        body = parser.feed(CountingBytes(payload))
        assert parser.complete and body == b"x" * chunks
        return CountingBytes.work[0]

    for chunks in (1000, 5000):
        size = len(b"1\r\nx\r\n") * chunks + 5
        assert work(chunks) <= 3 * size


# -- no body, and a body read until the close ---------------------------------------------------

@pytest.mark.parametrize("status", sorted(NO_BODY_STATUSES))
def test_204_and_304_have_no_body_whatever_their_framing_says(status):
    for framing in (b"Content-Length: 5", b"Transfer-Encoding: chunked", b""):
        parser, body = parse(b"HTTP/1.1 %d X\r\n%s\r\n\r\n" % (status, framing))
        assert parser.complete and body == b"" and parser.head.keep_alive


def test_a_response_to_head_has_no_body():
    for framing in (b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Connection: keep-alive"):
        parser, body = parse(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % framing, head_request=True)
        assert parser.complete and body == b"" and parser.head.keep_alive


def test_a_body_without_framing_is_read_until_the_close():
    for framing in (b"", b"Transfer-Encoding: gzip\r\n"):
        wire = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\nall of this\r\n\r\nuntil the close"
        for pieces in (None, 1, 7):
            parser, body = parse(wire, pieces=pieces)
            assert body == b"all of this\r\n\r\nuntil the close" and not parser.complete
            assert not parser.head.keep_alive
            parser.feed_eof()
            assert parser.complete


def test_an_empty_body_read_until_the_close():
    parser, body = parse(b"HTTP/1.0 200 OK\r\n\r\n", eof=True)
    assert parser.head.status == 200 and body == b"" and parser.complete
