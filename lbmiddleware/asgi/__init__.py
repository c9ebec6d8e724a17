"""The ASGI reverse-proxy middleware (also the gateway's application)."""

from .middleware import LoadBalancerMiddleware

__all__ = ["LoadBalancerMiddleware"]
