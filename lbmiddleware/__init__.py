"""lbmiddleware: client-side load balancing for Python, without a separate proxy.

One strategy core (:class:`Balancer`: weighted round-robin, weighted random, sticky
consistent hashing, peak-EWMA latency, least-connections, passive health) and thin
front-ends around it.
"""

from .backend import Backend
from .balancer import Balancer
from .config import POLICIES, Settings
from .errors import ConfigError, LBError, NoHealthyBackend
from .hashing import stable_hash

__version__ = "0.1.0"

__all__ = [
    "Backend", "Balancer", "Settings", "POLICIES",
    "LBError", "ConfigError", "NoHealthyBackend", "stable_hash",
    "__version__",
]
