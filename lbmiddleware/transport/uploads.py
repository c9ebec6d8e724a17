"""Whether a request's body can be sent again on a retry, and its size; a body read once
counted as it is sent (:class:`CountedStream`).

A body httpx holds in memory (``content=`` bytes, ``json=``, ``data=`` a form) is sent
again as it is. A generator or a file given as ``content=`` is read once. A multipart
upload (``files=``) is httpx's ``MultipartStream``, which renders its fields anew each
time it is read: its bytes and strings again, and each file from its start (httpx seeks it
back to 0 "to handle re-tries"), so it is sent again when every file can seek; a file read
once (a pipe, a socket's) cannot. ``MultipartStream`` is private to httpx: an httpx that
keeps it otherwise sends such uploads once, as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

__all__ = ["replayable_body", "CountedStream"]


def _multipart_classes() -> tuple[type[Any], type[Any]] | None:
    """httpx's multipart body and file field classes (private: see the module doc)."""
    try:
        from httpx._multipart import FileField, MultipartStream
    except ImportError:                         # another httpx: uploads are sent once
        return None
    return MultipartStream, FileField


_MULTIPART = _multipart_classes()


def replayable_body(request: httpx.Request) -> tuple[bool, int]:
    """Whether ``request``'s body can be sent again, and its size in bytes (0 when not
    known before it is sent)."""
    try:
        return True, len(request.content)       # a body httpx holds: sent again as is
    except httpx.RequestNotRead:                # a generator, a file, a multipart upload
        pass
    stream: Any = request.stream
    if _MULTIPART is None or type(stream) is not _MULTIPART[0]:
        return False, 0
    try:
        if not all(_renders_again(field, _MULTIPART[1]) for field in stream.fields):
            return False, 0
        return True, stream.get_content_length() or 0
    except Exception:                           # kept otherwise by this httpx: read once
        return False, 0


def _renders_again(field: Any, file_field: type[Any]) -> bool:
    """A form field renders the same bytes again: a value, or a file that can seek."""
    if type(field) is not file_field:
        return True
    file = field.file
    if isinstance(file, (str, bytes)):
        return True
    seekable = getattr(file, "seekable", None)
    return callable(seekable) and bool(seekable())


class CountedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request body read once (a generator, a file, a multipart upload whose file cannot
    seek), whose size is not known before it is sent: it counts the bytes it gives the
    inner transport (``sent``), for the attempt's outcome. Every attempt of the request
    sends this one wrapper: one after a connect failure, which took nothing of it, goes on
    from where the body is, as the body itself would."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self.sent += len(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()
