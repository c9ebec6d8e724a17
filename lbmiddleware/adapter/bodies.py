"""Response bodies inside an attempt: read whole, prefetched, discarded before a retry, or
streamed to the caller with the attempt ending when the body does.

* ``stream=False`` (the default): :func:`read_body` reads the body inside the attempt, so a
  connection cut mid-body is a failure that can still be retried (the caller has seen
  nothing yet). It is read undecoded: decoding stays requests' business, after the attempt
  (a false ``Content-Encoding`` is not a backend failure), and ``Response.elapsed`` stays
  the time to the response head, as requests documents it;
* ``stream=True``: :func:`watch_body` counts the body's bytes as they are read and keeps an
  error that breaks it off, and :func:`end_when_done` ends the attempt, exactly once, when the
  body is read to the end (with its bytes), the response is closed, or it is garbage
  collected; a body that broke off is a failure of its backend, not retried (the caller has
  the response), with the failed-attempt line every front-end logs. ``least_conn`` and
  ``latency`` therefore see a response being streamed as in flight, which it is: its
  backend is still sending it. With the adapter's ``prefetch``, :func:`prefetch_body` reads the
  first piece inside the attempt first;
* a failure-status response that a retry replaces is let go by :func:`discard`.

Reading a body raises urllib3's errors, which each reader translates into requests' as
the requests step it stands in for would (see :func:`read_body` and :func:`prefetch_body`).
"""

from __future__ import annotations

import datetime
import functools
import io
import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import requests
from requests.exceptions import ChunkedEncodingError
from requests.models import Response
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

from ..core.attempts import Attempts, Outcome, broken_body
from .errors import describe

__all__ = ["DRAIN_LIMIT", "read_body", "prefetch_body", "PrefetchedResponse", "discard",
           "watch_body", "end_when_done"]

# A failure-status response is read (to keep its connection) before a retry only when it
# announces a body this small; a larger or unknown one is closed instead.
DRAIN_LIMIT = 64 * 1024

_R = TypeVar("_R", bound=Response)
_T = TypeVar("_T")


def _become(response: Response, cls: type[_R]) -> _R:
    """``response``, now of ``cls``: a subclass of :class:`Response` that adds an attribute
    or a property, never state of its own that ``__init__`` would set."""
    response.__class__ = cls
    return cast(_R, response)       # (what the assignment just made it)


# -- stream=False: the whole body, inside the attempt ------------------------------------------

def read_body(response: Response) -> int:
    """Read the whole body inside the attempt, without decoding it, and return its size:
    decoding is requests' business, after the attempt (it tolerates a false
    ``Content-Encoding`` on a redirect it follows). An encoded body is read raw, and
    requests is given a raw response over the bytes read, which it reads and decodes as it
    would have read the connection.

    Read errors are translated as ``Response.content`` (``iter_content``) translates them,
    a read timeout into a ``requests.ConnectionError`` among them: an encoded body then
    fails as a plain one does, which ``response.content`` reads here, and as it would
    without the adapter."""
    raw: HTTPResponse = response.raw
    started = time.perf_counter()
    if "Content-Encoding" not in raw.headers:
        size = len(response.content)     # nothing to decode: the fast path of requests
    else:
        try:
            data = raw.read(decode_content=False)
        except ProtocolError as exc:
            raise ChunkedEncodingError(exc) from exc
        except ReadTimeoutError as exc:
            raise requests.ConnectionError(exc) from exc
        except SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
        response.raw = HTTPResponse(
            body=io.BytesIO(data), headers=raw.headers, status=raw.status, version=raw.version,
            version_string=raw.version_string, reason=raw.reason, preload_content=False,
            original_response=raw._original_response,    # requests reads cookies from it
            retries=raw.retries, enforce_content_length=False, request_url=raw.url)
        size = len(data)
    read = _become(response, _BodyReadResponse)
    read._body_time = datetime.timedelta(seconds=time.perf_counter() - started)
    return size


class _BodyReadResponse(Response):
    """A response whose body was read inside the attempt. ``Session.send`` sets ``elapsed``
    to its whole call of the adapter; requests documents it as the time to the response
    head, so the time spent reading the body is taken off that (first) setting."""

    _body_time: datetime.timedelta          # until ``elapsed`` is set

    @property
    def elapsed(self) -> datetime.timedelta:
        elapsed: datetime.timedelta = self.__dict__["elapsed"]
        return elapsed

    @elapsed.setter
    def elapsed(self, value: datetime.timedelta) -> None:
        self.__dict__["elapsed"] = value - self.__dict__.pop("_body_time", datetime.timedelta())


# -- stream=True: the first piece inside the attempt, the rest as the caller reads ------------

class PrefetchedResponse(Response):
    """A streamed response whose first piece was read inside the attempt: its raw pieces,
    undecoded, the first one included, are ``raw_chunks``."""

    raw_chunks: Iterator[bytes]


def prefetch_body(response: Response, size: int) -> PrefetchedResponse:
    """Read the first piece (at most ``size`` bytes, whatever has arrived) of a streamed
    body inside the attempt, so that a backend cutting the connection right after the head
    is a failure that can still be retried (nothing has reached the caller). The raw
    pieces, the first one included, are left in ``response.raw_chunks``.

    Read errors are translated as requests' own ``send`` translates a timeout, a
    ``ReadTimeout`` (this read is part of the adapter's send: the WSGI proxy answers it
    with 504, "did not answer in time", where a ``ConnectionError`` would be a 502), and a
    cut body as ``iter_content`` does, a ``ChunkedEncodingError``. Both carry the
    response, closed. (Not :func:`read_body`'s translation: that one stands in for
    ``Response.content``, and a caller of ``stream=False`` gets what requests gives.)"""
    chunks = _raw_chunks(response.raw, size)
    try:
        first = next(chunks, b"")
    except ReadTimeoutError as exc:
        response.close()
        raise requests.exceptions.ReadTimeout(exc, response=response) from exc
    except ProtocolError as exc:
        response.close()
        raise ChunkedEncodingError(exc, response=response) from exc
    prefetched = _become(response, PrefetchedResponse)
    prefetched.raw_chunks = itertools.chain((first,), chunks) if first else chunks
    return prefetched


def _raw_chunks(raw: HTTPResponse, size: int) -> Iterator[bytes]:
    """The body as it comes, undecoded, in pieces of at most ``size`` bytes: each piece is
    what one read returned, so a slow body is passed on as it arrives, not in full pieces."""
    while True:
        data = raw.read1(size, decode_content=False)
        if not data:
            return
        yield data


class _BodyWatch:
    """What the reads of one streamed body showed: its bytes read so far, and the error that
    broke it off (None while none did). Kept apart from the response, so that its finalizer
    can still report them once the response is collected.

    urllib3 releases the connection (or closes the response) inside a read step, before the
    step returns its last bytes or raises its error; that release ends the attempt. So while
    a step runs (``reading``), the end waits for the step to finish (``held``), and the
    attempt ends knowing how the read went."""

    __slots__ = ("received", "error", "reading", "held", "end")

    def __init__(self) -> None:
        self.received = 0
        self.error: Exception | None = None
        self.reading = False
        self.held = False
        self.end: Callable[[], object] | None = None      # the attempt's, once it has one

    def step(self, read: Callable[[], _T]) -> _T:
        """Run one read step: count the bytes it read, keep its error, then end the
        attempt if urllib3 ended it meanwhile."""
        self.reading = True
        try:
            data = read()
            if isinstance(data, bytes):
                self.received += len(data)
            return data
        except Exception as exc:
            if self.error is None:
                self.error = exc
            partial = getattr(exc, "partial", None)     # http.client's: the bytes that came
            if isinstance(partial, bytes):
                self.received += len(partial)
            raise
        finally:
            self.reading = False
            if self.held:
                self.held = False
                self.ending()

    def ending(self) -> None:
        """The response released its connection or was closed: end the attempt, now or
        when the read step that did it finishes."""
        if self.reading:
            self.held = True
        elif self.end is not None:
            self.end()


class _WatchedResponse(HTTPResponse):
    """urllib3's response, its body's reads watched: the bytes counted as they come off the
    connection (undecoded and without chunked framing, as :func:`read_body` counts a whole
    body), and an error that breaks the body off kept.

    Every read of the body, whichever reader the caller uses (``read``, ``read1``,
    ``stream``, requests' ``iter_content``), passes through these steps of urllib3:
    ``_raw_read`` (a body read through ``http.client``), or ``_update_chunk_length`` and
    ``_handle_chunk`` (a chunked body streamed chunk by chunk). (urllib3's own ``tell()``
    counts after the release at the body's end, and not at all for chunks.)"""

    watch: _BodyWatch

    def _raw_read(self, amt: int | None = None, *, read1: bool = False) -> bytes:
        return self.watch.step(functools.partial(super()._raw_read, amt, read1=read1))

    def _update_chunk_length(self) -> None:
        self.watch.step(super()._update_chunk_length)

    def _handle_chunk(self, amt: int | None) -> bytes:
        return self.watch.step(functools.partial(super()._handle_chunk, amt))


def watch_body(response: Response) -> None:
    """Watch the reads of ``response``'s body from now on (its bytes, a failure), for the
    end that :func:`end_when_done` reports (a response whose raw body is not urllib3's own
    response is not watched: its attempt ends with the outcome it has)."""
    raw = response.raw
    if type(raw) is HTTPResponse:
        raw.__class__ = _WatchedResponse
        cast(_WatchedResponse, raw).watch = _BodyWatch()


def end_when_done(response: Response, attempts: Attempts, outcome: Outcome) -> None:
    """End the current attempt of ``attempts``, whose answer is ``response`` streamed, once:
    when its raw response releases its connection, is closed or is garbage collected,
    whichever comes first. With ``outcome`` and the body bytes read, or, when a read broke
    the body off (:func:`watch_body`), as a failure that no retry can follow (the caller
    has the response), with the failed-attempt line of every front-end."""
    raw: HTTPResponse = response.raw
    watch = raw.watch if isinstance(raw, _WatchedResponse) else None
    done = weakref.finalize(raw, _end, attempts, outcome, watch)
    ending = done if watch is None else watch.ending
    if watch is not None:
        watch.end = done
    raw_type = type(raw)
    raw_ref = weakref.ref(raw)        # the wrappers live on raw: no reference cycle

    def release_conn() -> None:
        try:
            target = raw_ref()
            if target is not None:
                raw_type.release_conn(target)
        finally:
            ending()

    def close() -> None:
        try:
            target = raw_ref()
            if target is not None:
                raw_type.close(target)
        finally:
            ending()

    # On this one response only: its connection's release and its close end the attempt.
    raw.release_conn = release_conn  # type: ignore[method-assign]
    raw.close = close  # type: ignore[method-assign]


def _end(attempts: Attempts, outcome: Outcome, watch: _BodyWatch | None) -> None:
    """The streamed attempt's end: ``outcome`` with the body bytes read (wait=False: a
    garbage collection may run this inside the balancer's own lock), or the failure of a
    body that broke off (ended by a read step of the caller's, never by a collection)."""
    if watch is None:
        attempts.end(outcome, wait=False)
    elif watch.error is None:
        attempts.end(outcome._replace(bytes_received=watch.received) if watch.received
                     else outcome, wait=False)
    else:
        timeout = isinstance(watch.error, (ReadTimeoutError, TimeoutError))
        attempts.end_failed(broken_body(outcome, watch.received,
                                        describe(watch.error, True, timeout), timeout=timeout))


# -- before a retry --------------------------------------------------------------------------

def discard(response: Response) -> None:
    """Let go of a response before a retry: read a small body (the connection goes back to
    the pool), close anything else."""
    try:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT:
            _ = response.content    # read to its end, and dropped: the connection is reusable
    except requests.RequestException:
        pass
    finally:
        response.close()
