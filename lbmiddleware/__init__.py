"""lbmiddleware: client-side load balancing for Python, without a separate proxy.

One strategy core (:class:`Balancer`: weighted round-robin, weighted random, sticky
consistent hashing, peak-EWMA latency, least-connections, passive health) and thin
front-ends around it.
"""

from .core.backend import Backend
from .core.balancer import Balancer
from .core.hashing import stable_hash
from .core.settings import POLICIES, Settings
from .errors import ConfigError, LBError, NoHealthyBackend

__version__ = "0.1.0"

# Front-ends import third-party libraries (requests, an HTTP client, uvicorn), so they load on
# first use: ``import lbmiddleware`` stays standard-library only.
_FRONT_ENDS = {
    "LoadBalancingAdapter": "lbmiddleware.adapter",
    "AdapterSettings": "lbmiddleware.adapter",
    "NoHealthyBackendError": "lbmiddleware.adapter",
    "ProxySettings": "lbmiddleware.proxy.settings",
    "LoadBalancerMiddleware": "lbmiddleware.asgi",
    "WSGILoadBalancer": "lbmiddleware.wsgi",
}


def __getattr__(name: str):
    module = _FRONT_ENDS.get(name)
    if module is None:
        raise AttributeError(f"module 'lbmiddleware' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

__all__ = [
    "Backend", "Balancer", "Settings", "POLICIES",
    "LBError", "ConfigError", "NoHealthyBackend", "stable_hash",
    "LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
    "LoadBalancerMiddleware", "WSGILoadBalancer", "ProxySettings",
    "__version__",
]
