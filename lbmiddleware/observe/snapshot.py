"""The status of one or more pools as plain data: ``/status.json`` (schema version 1,
documented field by field in docs/status.md) and what the HTML page is drawn from.

Everything is read at the moment of the call: ``stats()``, ``pool_stats()`` and, for the
fleet's pool, ``source_stats()``, plus each pool's :class:`~.history.History` for rates and
charts. Times are ages and time left in seconds, never readings of a monotonic clock, which
mean nothing outside the process; the one clock time is ``time``, UTC.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core.balancer import Balancer
from ..errors import ConfigError
from .history import History, history_of
from .worker import worker_row

__all__ = ["snapshot", "named_pools", "bounded_load", "Pools", "SCHEMA"]

#: The version of the schema; a change that removes or redefines a field raises it.
SCHEMA = 1

#: What the status apps, ``snapshot`` and ``exposition`` take: a pool, a list of pools
#: (named pool1, pool2, ...) or a mapping name -> pool.
Pools = Balancer | Iterable[Balancer] | Mapping[str, Balancer]

# Readings of a monotonic clock in the core's rows: their ages take their place.
_MONOTONIC_BACKEND = frozenset({"ejected_until"})
_MONOTONIC_CHECK = frozenset({"checked_at"})
_MONOTONIC_SOURCE = frozenset({"last_success", "last_error_at", "next_refresh",
                               "failing_since"})


def named_pools(pools: Pools, what: str = "pools") -> list[tuple[str, Balancer]]:
    """``pools`` as (name, pool) pairs: one Balancer is ``default``, a list's are ``pool1``,
    ``pool2``... in order, a mapping's keep their names. Anything else is a TypeError, an
    empty collection or a bad name a ConfigError, each naming ``what`` and the value."""
    given: object = pools       # checked, whatever the annotation says
    if isinstance(given, Balancer):
        return [("default", given)]
    if isinstance(given, Mapping):
        pairs = list(given.items())
        for name, pool in pairs:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{what}: a pool's name must be a non-empty string, "
                                  f"not {name!r}")
            _check_pool(what, f"{what}[{name!r}]", pool)
    elif isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
        raise TypeError(f"{what} must be a Balancer, a list of Balancers or a mapping "
                        f"name -> Balancer, not {pools!r} ({type(pools).__name__})")
    else:
        listed = list(given)
        for index, pool in enumerate(listed):
            _check_pool(what, f"{what}[{index}]", pool)
        pairs = [(f"pool{number}", pool) for number, pool in enumerate(listed, 1)]
    if not pairs:
        raise ConfigError(f"{what} has value {pools!r}: no pool to show")
    return pairs


def _check_pool(what: str, where: str, pool: object) -> None:
    if not isinstance(pool, Balancer):
        raise TypeError(f"{where} must be a Balancer, not {pool!r} ({type(pool).__name__})")


def bounded_load(pool: Balancer) -> int:
    """The pool's bounded-load factor in percent where it acts (``ip_hash``), else 0: the
    setting does nothing under another policy, so nothing of it is shown there."""
    settings = pool.settings
    return settings.hash_balance_factor if settings.policy == "ip_hash" else 0


def snapshot(pools: Pools, *,
             history: Callable[[Balancer], History] = history_of) -> dict[str, Any]:
    """The status of ``pools`` now, as the schema (version :data:`SCHEMA`) says.
    ``history`` gives a pool's History (by default its one started History)."""
    named = named_pools(pools, "snapshot")
    shown = [_pool(name, pool, history(pool)) for name, pool in named]
    snap = {
        "schema": SCHEMA,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ready": all(pool["usable"] > 0 for pool in shown),
        "pools": shown,
    }
    worker = worker_row()
    if worker is not None:      # a gateway worker of several: these pools are its own
        snap["worker"] = worker
    return snap


def _pool(name: str, pool: Balancer, history: History) -> dict[str, Any]:
    rows = pool.stats()
    past = history.backends()
    source_stats = getattr(pool, "source_stats", None)     # the fleet's pool has sources
    sources = source_stats() if source_stats is not None else []
    return {
        "name": name,
        **_clean_row(pool.pool_stats()),
        "hash_balance_factor": bounded_load(pool),
        "sources": [_source(row) for row in sources],
        "backends": [_backend(row, past.get(row["url"]), history) for row in rows],
    }


def _source(row: Mapping[str, Any]) -> dict[str, Any]:
    shown = {"source": row["url"]}
    shown.update((key, value) for key, value in row.items()
                 if key != "url" and key not in _MONOTONIC_SOURCE)
    return _clean_row(shown)


def _backend(row: Mapping[str, Any], past: Any, history: History) -> dict[str, Any]:
    shown = {key: value for key, value in row.items() if key not in _MONOTONIC_BACKEND}
    check = row.get("health_check")
    if isinstance(check, Mapping):
        shown["health_check"] = {key: value for key, value in check.items()
                                 if key not in _MONOTONIC_CHECK}
    if past is None:
        past = history.of(row["url"])
    shown = _clean_row(shown)
    # (the history's numbers are finite already: no cleaning, which would cost more than
    # the rest of the row)
    requests, failures = past.last_rates
    transferred = past.bytes_per_second
    shown["requests_per_second"] = requests
    shown["failures_per_second"] = failures
    shown["bytes_per_second"] = transferred[-1] if transferred else None
    shown["history"] = {"interval": past.interval,
                        "requests_per_second": list(past.requests_per_second),
                        "failures_per_second": list(past.failures_per_second),
                        "latency_ms": list(past.latency_ms),
                        "bytes_per_second": list(transferred)}
    return shown


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): _clean(value) for key, value in row.items()}


def _clean(value: Any) -> Any:
    """``value`` as JSON can carry it: floats that are not finite become None (``json``
    would write ``Infinity``, which is not JSON), tuples lists, mappings dicts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value
