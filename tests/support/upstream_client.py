"""Drive the ASGI side's upstream client (lbmiddleware.upstream) directly: one pool, requests
one after the other."""

from __future__ import annotations

import asyncio

import lbmiddleware as lb
from lbmiddleware.upstream import Upstream


def fetch(url: str, *requests: tuple, read_timeout: float = 5.0):
    """Send requests (method, body) one after the other on one pool; return for each
    (status, headers, body) or the exception raised, and the number of connections the
    pool opened."""
    async def scenario():
        upstream = Upstream(read_timeout=read_timeout)
        pool = upstream.pool(lb.Backend(url))
        results = []
        for method, body in requests:
            try:
                response = await pool.request(method, b"/", [(b"Accept", b"*/*")], body,
                                              replayable=method in (b"GET", b"HEAD"))
                data = response.take()
                while True:
                    chunk = await response.read()
                    if not chunk:
                        break
                    data += chunk
                results.append((response.status, dict(response.headers), data))
            except Exception as exc:        # the test inspects it
                results.append(exc)
        upstream.close()
        return results, pool.opened

    return asyncio.run(scenario())
