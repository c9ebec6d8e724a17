"""lbmiddleware: client-side load balancing for Python, without a separate proxy.

One strategy core (:class:`Balancer`: weighted round-robin, weighted random, sticky
consistent hashing, peak-EWMA latency, least-connections, passive health) and thin
front-ends around it.
"""

from typing import TYPE_CHECKING

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


# The libraries behind an extra: a front-end that needs one names the extra that installs it.
_EXTRAS = {"requests": "requests", "urllib3": "requests"}

if TYPE_CHECKING:
    # Type checkers see the front-ends' real types; at run time __getattr__ loads them.
    from .adapter import AdapterSettings, LoadBalancingAdapter, NoHealthyBackendError
    from .asgi import LoadBalancerMiddleware
    from .proxy.settings import ProxySettings
    from .wsgi import WSGILoadBalancer
else:
    # Hidden from type checkers, so that a misspelt name is an error there, not an Any.
    def __getattr__(name: str) -> object:
        module = _FRONT_ENDS.get(name)
        if module is None:
            raise AttributeError(f"module 'lbmiddleware' has no attribute {name!r}")
        import importlib

        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            extra = _EXTRAS.get((exc.name or "").partition(".")[0])
            if extra is None:
                raise
            raise ModuleNotFoundError(
                f"lbmiddleware.{name} needs {exc.name}, which is not installed: "
                f"pip install 'lbmiddleware[{extra}]'", name=exc.name) from exc
        return getattr(loaded, name)

__all__ = [
    "Backend", "Balancer", "Settings", "POLICIES",
    "LBError", "ConfigError", "NoHealthyBackend", "stable_hash",
    "LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
    "LoadBalancerMiddleware", "WSGILoadBalancer", "ProxySettings",
    "__version__",
]
