"""The responses the proxy makes itself: 400, 404, 431, 501, 502, 503 (with
``Retry-After``) and 504, each one short line of plain text with nothing from a stack trace.

The table: ``docs/contract.md``, "Proxying" / "Errors the proxy answers itself".
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ErrorResponse", "error_response", "RETRY_AFTER"]


class ErrorResponse(NamedTuple):
    """A response the proxy makes itself: status, reason, headers (``str`` pairs), body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


_ERRORS = {
    400: ("Bad Request", "the request cannot be forwarded"),
    404: ("Not Found", "no route for this path"),
    431: ("Request Header Fields Too Large", "the request head is too large"),
    501: ("Not Implemented", "WebSockets are not proxied"),
    502: ("Bad Gateway", "no backend gave a response"),
    503: ("Service Unavailable", "no backend is available"),
    504: ("Gateway Timeout", "the backend did not answer in time"),
}
RETRY_AFTER = 5     # seconds, for 503


def error_response(status: int, detail: str | None = None,
                   retry_after: int = RETRY_AFTER) -> ErrorResponse:
    """The proxy's own response for ``status`` (400, 404, 431, 501, 502, 503, 504).

    The body is one short line of plain text, ``"502 Bad Gateway: no backend gave a
    response\\n"``; ``detail`` replaces the part after the colon (keep it free of
    internals). 503 carries ``Retry-After``.
    """
    reason, default = _ERRORS[status]
    body = f"{status} {reason}: {detail or default}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if status == 503:
        headers.append(("Retry-After", str(retry_after)))
    return ErrorResponse(status, reason, tuple(headers), body)
