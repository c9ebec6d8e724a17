"""Backend health: what the balancer learns from outcomes and how long a backend stays out.

:mod:`.passive` holds the rules for real requests' outcomes (consecutive-failure ejection,
growing ejection time, probation). :mod:`.active` holds the rules for active probes' results
(HAProxy's rise/fall counter) in a record of its own: a backend is usable only when both agree.
"""

from .active import ActiveHealth, ActiveRecord
from .passive import HealthRecord, PassiveHealth

__all__ = ["PassiveHealth", "HealthRecord", "ActiveHealth", "ActiveRecord"]
