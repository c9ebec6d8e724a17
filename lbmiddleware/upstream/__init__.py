"""The asyncio HTTP/1.1 client the proxy front-ends forward with: keep-alive connection
pools per backend, streamed bodies both ways, typed errors that say whether the request
was sent."""

from .connection import (HIGH_WATER, NO_BODY_STATUSES, ConnectError, ConnectTimeout,
                         ProtocolError, ReadTimeout, Response, UpstreamError)
from .pool import HostPool, Upstream

__all__ = [
    "Upstream", "HostPool", "Response", "UpstreamError", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "ProtocolError", "HIGH_WATER", "NO_BODY_STATUSES",
]
