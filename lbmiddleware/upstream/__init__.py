"""The asyncio HTTP/1.1 client the proxy front-ends forward with: keep-alive connection
pools per backend, streamed bodies both ways, typed errors that say whether the request
was sent.

One job per module, imported in this order (no cycle): :mod:`.errors`; :mod:`.head` (the
request head both upstream clients send); :mod:`.parser` (the sans-I/O response grammar);
:mod:`.deadlines` (cheap timeouts); :mod:`.response` (the streamed body the front-ends read);
:mod:`.connection` (the asyncio I/O of one exchange); :mod:`.pool` (keep-alive connections
per backend).
"""

from .errors import ConnectError, ConnectTimeout, ProtocolError, ReadTimeout, UpstreamError
from .head import request_head
from .parser import NO_BODY_STATUSES
from .pool import HostPool, Upstream
from .response import HIGH_WATER, Response

__all__ = [
    "Upstream", "HostPool", "Response", "UpstreamError", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "ProtocolError", "HIGH_WATER", "NO_BODY_STATUSES", "request_head",
]
