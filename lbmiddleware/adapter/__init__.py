"""The requests front-end: :class:`LoadBalancingAdapter`, a transport adapter that spreads a
Session's calls over a pool of backends (``pip install 'lbmiddleware[requests]'``).

One job per module:

* :mod:`~lbmiddleware.adapter.adapter`: the adapter (key, attempts, forward, outcome);
* :mod:`~lbmiddleware.adapter.bodies`: response bodies inside an attempt (read, prefetched,
  discarded, or the attempt ending when a streamed body does);
* :mod:`~lbmiddleware.adapter.errors`: requests' and urllib3's errors as outcomes (one
  table), and the exceptions the caller gets;
* :mod:`~lbmiddleware.adapter.proxies`: each attempt's proxies, decided by the backend's
  URL (the environment read as requests reads it), not by the virtual host's;
* :mod:`~lbmiddleware.adapter.responses`: the urllib3 pools' connections (final responses
  only, no more body after an early answer).
"""

from ..errors import needs_extra

with needs_extra(__name__):         # requests and urllib3 come with the `requests` extra
    from .adapter import AdapterSettings, LoadBalancingAdapter
    from .errors import NoHealthyBackendError
    from .responses import FinalResponse, UnusableResponse

__all__ = ["LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
           "FinalResponse", "UnusableResponse"]

# The public classes answer to the package's name, wherever they are defined: in reprs, and
# in pickles (a pickled Session names its adapter's class), which then outlive a move.
for _public in (LoadBalancingAdapter, NoHealthyBackendError, FinalResponse, UnusableResponse):
    _public.__module__ = __name__
del _public
