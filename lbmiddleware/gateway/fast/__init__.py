"""The gateway's own HTTP server (``LB_SERVER=fast``): an :class:`asyncio.Protocol` server on
uvloop with httptools, forwarding by callbacks with no task per request; the shared attempt
loop and the proxy package's rules. See ``server.py``."""

from .server import serve_fast

__all__ = ["serve_fast"]
