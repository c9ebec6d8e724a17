"""The pool that follows the fleet: the public :class:`~lbmiddleware.Balancer` (the core's
pool plus its sources' watchers and its health checks, :mod:`.pool`), and the one event
loop per process they run on (:mod:`.loop`, loaded on first use only)."""

from .pool import Balancer

__all__ = ["Balancer"]
