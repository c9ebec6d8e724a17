"""A sans-I/O HTTP/1.1 response parser: bytes in, the head and the body bytes out.

The socket, the timers and the flow control are :mod:`.connection`'s; this module only
knows the grammar, so it is tested by feeding it bytes (no socket, no event loop) and a
future client (a sync one, a WebSocket tunnel) can reuse it as it is::

    parser = ResponseParser()
    body = parser.feed(data)        # the body bytes this data completes (may be b"")
    parser.head                     # a ResponseHead once the final head is parsed
    parser.complete                 # the response has ended
    parser.feed_eof()               # the backend closed: ends a read-until-close body

Interim ``1xx`` heads are skipped. The body is framed by the head: none (``HEAD``,
:data:`NO_BODY_STATUSES`), ``Content-Length``, chunked, or everything until the backend
closes. Anything outside the HTTP/1.1 grammar (a status outside 100-599, a ``101`` not
asked for, a control character, a chunk-size line that is not hex digits, a head larger
than :data:`MAX_HEAD`) raises :class:`~.errors.ProtocolError`.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .errors import ProtocolError

__all__ = ["ResponseParser", "ResponseHead", "NO_BODY_STATUSES", "MAX_HEAD"]

MAX_HEAD = 64 * 1024         # bytes: a larger response head, chunk line or trailer is an error

#: Statuses whose response never has a body, whatever its Content-Length says (RFC 9110).
NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# The grammar of RFC 9110 §5.6 and RFC 9112 §4 and §7.1, strictly: what the backend sends
# is passed on by an ASGI server that rejects control characters and odd statuses (uvicorn
# dropped the connection with a traceback), and two parsers that frame a body differently
# are a desync (nginx rejects ``0x5`` as a chunk size; Python's ``int()`` takes ``0x5``,
# `` 5`` and ``5_0``).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rb"(?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?"   # no controls but HTAB
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# One header line (after the CRLF ending the previous line): a token, a colon, the value
# without surrounding blanks. A line that does not match (obs-fold, no colon, a space
# before the colon, a control character) leaves the count of matches short of the count
# of lines: an error.
_HEADER_LINE = re.compile(rb"\r\n(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*(?=\r\n|$)")
_FIELD_LINE = re.compile(_TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*")     # one trailer line
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
# chunk-size [ chunk-ext ]: 1 to 16 hex digits (any 64-bit size), then extensions
# ``;name[=token or quoted-string]`` with optional blanks around ``;`` and ``=``.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:"
                         + _TOKEN + rb"|" + _QUOTED + rb"))?)*[ \t]*")
_BARE_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n").match     # the fast, usual case

# Where the parser is. Plain strings: compared by identity first, as fast as an int.
_HEAD = "head"              # reading a head (interim ones are skipped)
_LENGTH = "length"          # a Content-Length body: ``_remaining`` bytes left
_CHUNKED = "chunked"        # a chunked body: ``_chunk_part`` says which part comes next
_UNTIL_CLOSE = "close"      # everything until the backend closes is body
_DONE = "done"              # the response has ended; later bytes are ``trailing_data``


class ResponseHead(NamedTuple):
    """The final response head. ``headers``: ``[(name, value)]`` bytes, as received.
    ``keep_alive``: the connection may carry another request after this response."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


# ``ResponseHead(...)`` runs a Python-level ``__new__``; this is the same tuple at half the
# cost, once per response.
_new_head = functools.partial(tuple.__new__, ResponseHead)


class ResponseParser:
    """One HTTP/1.1 response, parsed from the bytes fed to it.

    ``head_request``: the request was ``HEAD`` (the response has no body, whatever its
    head says). ``allow_upgrade``: a ``101 Switching Protocols`` is the final head and the
    bytes after it are :attr:`trailing_data` (refused otherwise: the request asked for no
    upgrade, and the bytes after a ``101`` are not HTTP).
    """

    __slots__ = ("head", "complete", "_phase", "_buffer", "_remaining", "_chunk_part",
                 "_head_request", "_allow_upgrade")

    def __init__(self, *, head_request: bool = False, allow_upgrade: bool = False) -> None:
        self.head: ResponseHead | None = None    # set once the final head is parsed
        self.complete = False                    # the response (head and body) has ended
        self._phase = _HEAD
        self._buffer = b""
        self._remaining = 0         # body bytes left (length) or in the chunk (chunked)
        self._chunk_part = "size"   # size | data | crlf | trailer
        self._head_request = head_request
        self._allow_upgrade = allow_upgrade

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the end of the response (a connection that has any is
        not reused: they are no answer to anything asked)."""
        return self._buffer if self.complete else b""

    def feed(self, data: bytes) -> bytes:
        """Parse ``data``, the next bytes from the backend; returns the body bytes they
        complete (``b""`` if none). Raises :class:`ProtocolError` (the body bytes of that
        same ``data`` are then dropped: the response is broken anyway)."""
        phase = self._phase
        if phase == _LENGTH:        # the usual case: body bytes, all of them ours
            remaining = self._remaining
            if len(data) <= remaining:
                self._remaining = remaining = remaining - len(data)
                if not remaining:
                    self._end()
                return data
        elif phase == _UNTIL_CLOSE:
            return data
        # Not ``+=`` on an empty buffer: that would copy ``data`` (and lose its type).
        self._buffer = self._buffer + data if self._buffer else data
        return self._parse()

    def feed_eof(self) -> None:
        """The backend closed the connection: the end of a body read until the close.
        Anywhere else before the end the response is cut short: :class:`ProtocolError`."""
        if self._phase == _UNTIL_CLOSE:
            self._end()
        elif not self.complete:
            raise ProtocolError("the connection closed before the end of the response")

    # -- the phases --------------------------------------------------------------------

    def _parse(self) -> bytes:
        while self._phase == _HEAD:
            if not self._parse_head():
                return b""
        phase = self._phase
        if phase == _CHUNKED:
            return self._parse_chunked()
        buffer = self._buffer
        if phase == _LENGTH:
            take = buffer[: self._remaining]
            self._buffer = buffer[len(take):]
            self._remaining -= len(take)
            if not self._remaining:
                self._phase = _DONE
                self.complete = True
            return take
        if phase == _UNTIL_CLOSE:
            self._buffer = b""
            return buffer
        return b""                  # done: what follows is trailing data

    def _parse_head(self) -> bool:
        """Parse one head if the buffer holds it all; True if one was parsed (an interim
        head, after which another follows, or the final one)."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if b"\n\n" in buffer[:MAX_HEAD]:
                # a head ended by bare line feeds: malformed now, not a head still to come
                # (waiting for CRLF CRLF would cost the read timeout)
                raise ProtocolError("a bare CR, LF or NUL in the response head")
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("the response head is too large")
            return False
        head = buffer[:end]
        self._buffer = buffer[end + 4:]
        if b"\0" in head or head.count(b"\n") != head.count(b"\r"):
            raise ProtocolError("a bare CR, LF or NUL in the response head")
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
                or _CONTROL.search(reason):
            raise ProtocolError(f"the backend's response is not HTTP/1.x: {status_line[:80]!r}")
        status = int(code)
        if not 100 <= status <= 599:
            raise ProtocolError(f"the backend's status {status} is outside 100-599")
        if status == 101 and not self._allow_upgrade:
            raise ProtocolError("the backend switched protocols (101) unasked")
        headers: list[tuple[bytes, bytes]] = \
            _HEADER_LINE.findall(head, max(line_end, 0)) if line_end >= 0 else []
        if len(headers) != head.count(b"\r\n"):
            raise ProtocolError(f"a malformed response header line: {_bad_line(head)!r}")
        if status < 200 and status != 101:
            return True         # an interim response (100, 102, 103): the real one follows
        length: int | None = None
        chunked = False
        repeated = False            # the same Content-Length twice: kept once (RFC 9110 8.6)
        keep_alive = version == b"HTTP/1.1"
        for name, value in headers:
            lower = name.lower()
            if lower not in _FRAMING_HEADERS:
                continue
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise ProtocolError("a bad Content-Length in the response")
                repeated = length is not None
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    keep_alive = False          # some other coding: read to the close
                    length = -1
            else:
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if repeated:
            headers = _first_content_length(headers)
        if status == 101:       # the connection is a tunnel now: the rest is not HTTP
            keep_alive = False
            self._end()
        elif self._head_request or status in NO_BODY_STATUSES:
            self._end()
        elif chunked:
            self._phase = _CHUNKED
            self._chunk_part = "size"
        elif length is not None and length >= 0:
            self._remaining = length
            if length:
                self._phase = _LENGTH
            else:
                self._phase = _DONE
                self.complete = True
        else:
            self._phase = _UNTIL_CLOSE
            keep_alive = False
        self.head = _new_head((status, reason, headers, keep_alive))
        return True

    def _parse_chunked(self) -> bytes:
        """Decode as much of the chunked body as the buffer holds.

        Walks the buffer with an offset, cuts it once and returns the body once per
        read: slicing each line off the front re-copied the rest of the buffer, so
        200,000 one-byte chunks in one write held the event loop for seconds.
        """
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        part = self._chunk_part
        parts: list[bytes] = []
        done = False
        while True:
            if part == "data":
                if pos == size:
                    break
                end = min(pos + self._remaining, size)
                parts.append(buffer[pos:end])
                self._remaining -= end - pos
                pos = end
                if self._remaining:
                    break
                part = "crlf"
            elif part == "size" and (line := _BARE_SIZE_LINE(buffer, pos)) is not None:
                # The usual line, a size alone: a chunk that is all here is taken at once.
                remaining = int(line.group(1), 16)
                start = line.end()
                end = start + remaining
                if remaining and end + 2 <= size and buffer.startswith(b"\r\n", end):
                    parts.append(buffer[start:end])
                    pos = end + 2
                    continue
                pos = start
                self._remaining = remaining
                part = "data" if remaining else "trailer"
            elif part == "crlf":
                if not buffer.startswith(b"\r\n", pos):
                    if size - pos >= 2 or (size > pos and not buffer.startswith(b"\r", pos)):
                        raise ProtocolError("a chunk is longer than its size")
                    break
                pos += 2
                part = "size"
            else:
                end = buffer.find(b"\r\n", pos, pos + MAX_HEAD + 2)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        raise ProtocolError("a chunk header or trailer is too large")
                    break
                if part == "size":
                    match = _CHUNK_LINE.fullmatch(buffer, pos, end)
                    if match is None:
                        raise ProtocolError(
                            f"a bad chunk size line in the response: {buffer[pos:end][:40]!r}")
                    self._remaining = int(match.group(1), 16)
                    part = "data" if self._remaining else "trailer"
                elif end == pos:            # the empty line after the trailers (dropped)
                    pos, done = end + 2, True
                    break
                elif _FIELD_LINE.fullmatch(buffer, pos, end) is None:
                    raise ProtocolError(
                        f"a malformed trailer line in the response: {buffer[pos:end][:80]!r}")
                pos = end + 2
        self._chunk_part = part
        self._buffer = buffer[pos:] if pos else buffer
        if done:
            self._end()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _end(self) -> None:
        self._phase = _DONE
        self.complete = True


def _first_content_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with their first ``Content-Length`` only (the others repeat its value)."""
    seen = False
    kept = []
    for name, value in headers:
        if name.lower() == b"content-length":
            if seen:
                continue
            seen = True
        kept.append((name, value))
    return kept


def _bad_line(head: bytes) -> bytes:
    """The first header line of ``head`` outside the grammar (for the error message)."""
    for line in head.split(b"\r\n")[1:]:
        if _FIELD_LINE.fullmatch(line) is None:
            return line[:80]
    return b""
