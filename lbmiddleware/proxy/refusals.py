"""The requests the proxy refuses to forward, as exceptions that carry their status.

A front-end catches :class:`UnsafeRequest` (``NotProxied`` included) and answers
``error_response(exc.status)``: the rule that refuses a request decides the status, the
front-end only translates. The rules: ``docs/contract.md``, "Proxying".
"""

from __future__ import annotations

import re

from ..errors import LBError

__all__ = ["UnsafeRequest", "NotProxied", "UNSAFE_TEXT", "UNSAFE_BYTES"]

# CR, LF and NUL: what would end or cut a request line or a header line upstream (request
# smuggling, header injection). Never forwarded, wherever they appear.
UNSAFE_TEXT = re.compile(r"[\r\n\x00]")
UNSAFE_BYTES = re.compile(rb"[\r\n\x00]")


class UnsafeRequest(LBError, ValueError):
    """The request cannot be forwarded safely (CR/LF/NUL in a header, path or query): 400."""

    status = 400


class NotProxied(UnsafeRequest):
    """The request asks for what the proxy cannot forward (a WebSocket upgrade): 501.

    Refused rather than sent on without its hop-by-hop ``Upgrade``: the backend would
    answer a plain GET, and the client would wait for a ``101`` that never comes.
    """

    status = 501
