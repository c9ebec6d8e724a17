"""The strategy core: backends, settings, policies, health and the balancer.

Standard library only, no I/O: every front-end builds on it, and it imports none of them.
"""

from .backend import Backend
from .balancer import Balancer
from .forwarding import ForwardingSettings
from .settings import POLICIES, Settings

__all__ = ["Backend", "Balancer", "Settings", "ForwardingSettings", "POLICIES"]
