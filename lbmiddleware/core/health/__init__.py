"""Backend health: what the balancer learns from outcomes and how long a backend stays out.

:mod:`.passive` holds the rules for real requests' outcomes (consecutive-failure ejection,
growing ejection time, probation). Active health checks, when they come, are a sibling that
writes the same per-backend record.
"""

from .passive import HealthRecord, PassiveHealth

__all__ = ["PassiveHealth", "HealthRecord"]
