"""lbmiddleware: client-side load balancing for Python, without a separate proxy.

One strategy core (weighted round-robin, weighted random, sticky consistent hashing,
peak-EWMA latency, least-connections, passive health), a pool that follows the fleet
(:class:`Balancer`: DNS and etcd sources, active health checks, drain, backup tiers) and
thin front-ends around it.
"""

from typing import TYPE_CHECKING

# The gateway's and the proxy's settings (standard library only) are imported here so that
# every settings class has registered its LB_ variables before any are read: an unknown LB_
# name is then a probable typo, and the core never imports a front-end to know that.
from . import gateway_settings as _gateway_settings  # noqa: F401  (registers GatewaySettings)
from .core.backend import Backend, Source
from .core.forwarding import ForwardingSettings
from .core.hashing import stable_hash
from .core.settings import POLICIES, Settings
from .errors import ConfigError, LBError, NoHealthyBackend
from .errors import needs_extra as _needs_extra
from .fleet import Balancer
from .proxy.settings import ProxySettings

#: The requests adapter's settings are the forwarding settings of every front-end.
AdapterSettings = ForwardingSettings

__version__ = "0.1.0"

# Front-ends import third-party libraries (requests, an HTTP client, uvicorn), so they load on
# first use: ``import lbmiddleware`` stays standard-library only.
_FRONT_ENDS = {
    "LoadBalancingAdapter": "lbmiddleware.adapter",
    "NoHealthyBackendError": "lbmiddleware.adapter",
    "LoadBalancerMiddleware": "lbmiddleware.asgi",
    "WSGILoadBalancer": "lbmiddleware.wsgi",
    "LoadBalancingTransport": "lbmiddleware.transport",
    "AsyncLoadBalancingTransport": "lbmiddleware.transport",
    "status_app": "lbmiddleware.observe",
    "status_wsgi_app": "lbmiddleware.observe",
}
# Modules offered as attributes, loaded on first use as the front-ends are.
_MODULES: dict[str, str] = {"metrics": "lbmiddleware.observe.metrics"}

if TYPE_CHECKING:
    # Type checkers see the front-ends' real types; at run time __getattr__ loads them.
    from .adapter import LoadBalancingAdapter, NoHealthyBackendError
    from .asgi import LoadBalancerMiddleware
    from .observe import metrics, status_app, status_wsgi_app
    from .transport import AsyncLoadBalancingTransport, LoadBalancingTransport
    from .wsgi import WSGILoadBalancer
else:
    # Hidden from type checkers, so that a misspelt name is an error there, not an Any.
    def __getattr__(name: str) -> object:
        import importlib

        if name in _MODULES:
            return importlib.import_module(_MODULES[name])
        module = _FRONT_ENDS.get(name)
        if module is None:
            raise AttributeError(f"module 'lbmiddleware' has no attribute {name!r}")

        # a front-end that needs an extra's library names the extra that installs it
        with _needs_extra(f"lbmiddleware.{name}"):
            loaded = importlib.import_module(module)
        return getattr(loaded, name)

__all__ = [
    "Backend", "Source", "Balancer", "Settings", "ForwardingSettings", "POLICIES",
    "LBError", "ConfigError", "NoHealthyBackend", "stable_hash",
    "LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
    "LoadBalancerMiddleware", "WSGILoadBalancer", "ProxySettings",
    "LoadBalancingTransport", "AsyncLoadBalancingTransport",
    "status_app", "status_wsgi_app", "metrics",
    "__version__",
]
