"""The sticky cookie's value: which backend a client was sent to, said opaquely.

A front-end with ``sticky_cookie`` set (``LB_STICKY_COOKIE``) gives each client a cookie
whose value names the backend that answered it; the next request carrying it goes to that
backend while a pick may choose it (:meth:`Balancer.pick <lbmiddleware.core.balancer.
Balancer.pick>`'s ``prefer``). The value is a digest of the backend's URL, not the URL: it
does not tell clients the pool's addresses, and a value that names no member (forged, copied
from another pool, of a backend gone) routes nowhere: the request is balanced as usual.
It is the same in every process and after a restart (no secret, no random salt), so the
workers of one gateway and the replicas of one client app all follow each other's cookies
(HAProxy's ``cookie ... insert`` with a server's name, Traefik's hashed server URL).

Standard library only.
"""

from __future__ import annotations

import functools
import hashlib

__all__ = ["sticky_value"]


@functools.lru_cache(maxsize=4096)
def sticky_value(url: str) -> str:
    """The cookie value of the backend at ``url`` (normalised, as ``Backend.url``): 16 hex
    digits of a keyed BLAKE2b digest."""
    return hashlib.blake2b(url.encode("utf-8"), digest_size=8,
                           person=b"lbmiddleware").hexdigest()
