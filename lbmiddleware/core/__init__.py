"""The strategy core: backends, settings, policies, health, the balancer and the attempt
loop every front-end runs (retry rule, outcome, completion handle).

Standard library only, no I/O: every front-end builds on it, and it imports none of them.
"""

from .attempts import Attempts, Completion, Outcome, RetryRule
from .backend import Backend
from .balancer import Balancer
from .forwarding import ForwardingSettings
from .settings import POLICIES, Settings

__all__ = ["Backend", "Balancer", "Settings", "ForwardingSettings", "POLICIES",
           "Attempts", "Completion", "Outcome", "RetryRule"]
