"""The httpx front-end: :class:`LoadBalancingTransport` and
:class:`AsyncLoadBalancingTransport`, transports that spread an ``httpx.Client``'s or
``httpx.AsyncClient``'s requests over a pool of backends (``pip install
'lbmiddleware[httpx]'``).

One job per module:

* :mod:`~lbmiddleware.transport.sync` and :mod:`~lbmiddleware.transport.aio`: the two
  transports, the core's attempt loop around their own I/O;
* :mod:`~lbmiddleware.transport.base`: what they share (settings, sticky key, the request
  as a backend gets it, timeouts, departures, closing);
* :mod:`~lbmiddleware.transport.origins`: which requests the pool gets (the virtual origin),
  and a backend's redirect to itself mapped back to it;
* :mod:`~lbmiddleware.transport.targets`: one inner httpx transport per backend;
* :mod:`~lbmiddleware.transport.proxies`: the proxy the environment names for a real URL;
* :mod:`~lbmiddleware.transport.outgoing`: each attempt's URL, ``Host`` and request;
* :mod:`~lbmiddleware.transport.uploads`: whether a request's body can be sent again
  (a body read once is counted as it is sent);
* :mod:`~lbmiddleware.transport.bodies`: an attempt ends when its response body does;
* :mod:`~lbmiddleware.transport.errors`: httpx's errors as outcomes (one table) in the
  words every front-end uses, and the exceptions the caller gets.
"""

from ..errors import needs_extra

with needs_extra(__name__):         # httpx comes with the `httpx` extra
    from .aio import AsyncLoadBalancingTransport
    from .errors import NoHealthyBackendError
    from .sync import LoadBalancingTransport

__all__ = ["LoadBalancingTransport", "AsyncLoadBalancingTransport", "NoHealthyBackendError"]

# The public classes answer to the package's name, wherever they are defined (in reprs).
for _public in (LoadBalancingTransport, AsyncLoadBalancingTransport, NoHealthyBackendError):
    _public.__module__ = __name__
del _public
