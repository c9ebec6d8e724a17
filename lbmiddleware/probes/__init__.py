"""Active health checks: the I/O that feeds the core's active health (``report_probe``).

:class:`Prober` runs one task per member of a pool on an asyncio loop (the fleet's), each
probing its backend on HAProxy's spread and jittered schedule (:mod:`.prober`);
:class:`HealthCheck` is one probe, ``GET <path>`` over the upstream client's connection
(:mod:`.check`). The rules that turn results into up and down (rise, fall, pending) are the
core's (``core/health/active.py``). Standard library only.
"""

from ..core.casts import format_duration
from .check import HealthCheck
from .prober import JITTER, ProbedPool, Prober, ProbeSettings

# (format_duration: how a probe's reasons spell a limit, "timeout after 2s", the core's one
# spelling of a duration, under its own name)
__all__ = ["Prober", "HealthCheck", "ProbedPool", "ProbeSettings", "JITTER", "format_duration"]
