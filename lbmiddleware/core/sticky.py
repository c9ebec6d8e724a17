"""The sticky cookie's value: which backend a client was sent to, said opaquely.

A front-end with ``sticky_cookie`` set (``LB_STICKY_COOKIE``) gives each client a cookie
whose value names the backend that answered it; the next request carrying it goes to that
backend while a pick may choose it (:meth:`Balancer.pick <lbmiddleware.core.balancer.
Balancer.pick>`'s ``prefer``). The value is a digest of the backend's URL, not the URL, and
a value that names no member (forged, copied from another pool, of a backend gone) routes
nowhere: the request is balanced as usual. It is the same in every process and after a
restart (no random salt), so the workers of one gateway and the replicas of one client app
all follow each other's cookies (HAProxy's ``cookie ... insert`` with a server's name,
Traefik's hashed server URL). Without a secret, someone who guesses the pool's addresses
can match a value to one by hashing candidates (a /24 and a few ports take milliseconds);
with ``sticky_cookie_secret`` (the same in every process) the digest is keyed and cannot be
matched without it.

Standard library only.
"""

from __future__ import annotations

import functools
import hashlib

__all__ = ["sticky_value"]


@functools.lru_cache(maxsize=4096)
def sticky_value(url: str, secret: str = "") -> str:
    """The cookie value of the backend at ``url`` (normalised, as ``Backend.url``): 16 hex
    digits of a BLAKE2b digest, keyed with ``secret`` when one is given."""
    key = secret.encode("utf-8")
    if len(key) > 64:                   # BLAKE2b's longest key
        key = hashlib.blake2b(key).digest()
    return hashlib.blake2b(url.encode("utf-8"), digest_size=8, key=key,
                           person=b"lbmiddleware").hexdigest()
