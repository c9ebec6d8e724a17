"""The requests front-end: :class:`LoadBalancingAdapter`, a transport adapter that spreads a
Session's calls over a pool of backends."""

from .adapter import (
    AdapterSettings,
    FinalResponse,
    LoadBalancingAdapter,
    NoHealthyBackendError,
    UnusableResponse,
)

__all__ = ["LoadBalancingAdapter", "AdapterSettings", "NoHealthyBackendError",
           "FinalResponse", "UnusableResponse"]
