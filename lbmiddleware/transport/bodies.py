"""Response bodies: an attempt ends when its body does.

An httpx transport hands back every response with its body still to read: the client
reads it (``stream=False``) or the caller does (``client.stream(...)``), and closes it in
both cases. So the response's stream is wrapped (:class:`AttemptBody`,
:class:`AsyncAttemptBody`) and the attempt it belongs to ends exactly once, when the body:

* is read to the end, or closed before: the attempt's outcome (its status decides), with
  the bytes received (``least_conn`` and ``latency`` see a response being read as in
  flight, which it is: its backend is still sending it);
* fails to arrive (reset, cut short, timed out): a failure of the backend, in the words
  every front-end uses (:func:`~lbmiddleware.core.attempts.broken_body`, with its
  failed-attempt line). Not retried: the caller has the response already;
* is abandoned by a cancelled task (``asyncio.CancelledError``) or an interrupt: released,
  without an outcome, as the core's rules say for a cancellation.

A response dropped without being closed ends through its completion handle's finalizer
(released). The wrapper also gives the backend's inner transport its request back
(:meth:`~.targets.Target.release`), and closes that transport when the backend has left
the pool and this was its last request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from ..core.attempts import Attempts, Outcome, broken_body
from .errors import Timeouts, describe

if TYPE_CHECKING:
    from .targets import Target

__all__ = ["AttemptBody", "AsyncAttemptBody", "DRAIN_LIMIT", "discard", "adiscard"]

# A failure-status response is read (to keep its connection) before a retry only when it
# announces a body this small; a larger or unknown one is closed instead.
DRAIN_LIMIT = 64 * 1024

# Where an outcome's bytes received are: the answer's outcome gets them by slicing, a third
# of ``_replace``'s time, once per request.
_RECEIVED = Outcome._fields.index("bytes_received")


class _Ending:
    """What both wrappers do when a body ends (see the module doc). (The defaults are the
    class's: a wrapper is made per request, and sets only what it changes.)"""

    _target: Target[Any]
    _received: int = 0
    _attempts: Attempts | None = None
    _outcome: Outcome | None = None
    _timeouts: Timeouts | None = None
    _ended: bool = False

    def end_attempt(self, attempts: Attempts, outcome: Outcome,
                    timeouts: Timeouts | None) -> None:
        """This body is the answer the caller gets: its end ends the current attempt of
        ``attempts`` (``timeouts``: the attempt's, to name one that runs out)."""
        self._attempts, self._outcome, self._timeouts = attempts, outcome, timeouts

    def _end(self, error: BaseException | None = None) -> Any:
        """End once: the attempt (if this body is the answer), then the request on the
        backend's transport, returned when it must be closed now."""
        if self._ended:
            return None
        self._ended = True
        try:
            attempts, outcome = self._attempts, self._outcome
            if attempts is not None and outcome is not None:
                if error is None:           # (the bytes received set by slicing, inlined)
                    attempts.end(tuple.__new__(Outcome, outcome[:_RECEIVED] + (
                        self._received,) + outcome[_RECEIVED + 1:]))
                elif isinstance(error, Exception):
                    attempts.end_failed(broken_body(
                        outcome, self._received, describe(error, self._timeouts),
                        timeout=isinstance(error, httpx.TimeoutException)))
                else:                       # cancelled, interrupted: no outcome
                    attempts.release(wait=not isinstance(error, GeneratorExit))
        finally:
            closing = self._target.release()
        return closing


class AttemptBody(_Ending, httpx.SyncByteStream):
    """A backend's response body for a sync client (see the module doc)."""

    def __init__(self, stream: httpx.SyncByteStream, target: Target[httpx.BaseTransport]
                 ) -> None:
        self._stream = stream
        self._target = target

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._stream:
                self._received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise                           # the reader stopped: close() ends it
        except BaseException as exc:        # the body failed; or an interrupt
            self._finish(exc)
            raise
        closing: httpx.BaseTransport | None = self._end()       # (_finish, inlined)
        if closing is not None:
            closing.close()

    def close(self) -> None:
        if self._ended:                     # read to the end: the attempt has ended
            self._stream.close()
            return
        try:
            self._stream.close()
        finally:
            self._finish()

    def _finish(self, error: BaseException | None = None) -> None:
        closing: httpx.BaseTransport | None = self._end(error)
        if closing is not None:
            closing.close()


class AsyncAttemptBody(_Ending, httpx.AsyncByteStream):
    """A backend's response body for an async client (see the module doc)."""

    def __init__(self, stream: httpx.AsyncByteStream,
                 target: Target[httpx.AsyncBaseTransport]) -> None:
        self._stream = stream
        self._target = target

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                self._received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise                           # the reader stopped: aclose() ends it
        except Exception as exc:            # the body failed
            await self._finish(exc)
            raise
        except BaseException as exc:        # cancelled: no await here, closed later
            closing = self._end(exc)
            if closing is not None:
                self._target.close_later(closing)
            raise
        await self._finish()

    async def aclose(self) -> None:
        if self._ended:                     # read to the end: the attempt has ended
            await self._stream.aclose()
            return
        try:
            await self._stream.aclose()
        finally:
            await self._finish()

    async def _finish(self, error: BaseException | None = None) -> None:
        closing: httpx.AsyncBaseTransport | None = self._end(error)
        if closing is not None:
            await closing.aclose()


# -- before a retry ------------------------------------------------------------------------

def _small(response: httpx.Response) -> bool:
    length = response.headers.get("Content-Length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


def discard(response: httpx.Response) -> None:
    """Let go of a failure-status response before a retry: read a small body, undecoded
    (its connection goes back to the pool), close anything else."""
    try:
        if _small(response):
            for _ in response.iter_raw():
                pass
    except httpx.HTTPError:
        pass
    finally:
        response.close()


async def adiscard(response: httpx.Response) -> None:
    """:func:`discard` for an async client."""
    try:
        if _small(response):
            async for _ in response.aiter_raw():
                pass
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
