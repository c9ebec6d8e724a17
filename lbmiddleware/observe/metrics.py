"""Prometheus metrics for a pool (SEMANTICS part four), read from its live state at scrape time.

::

    import lbmiddleware as lb
    lb.metrics.register(pool)                      # prometheus_client's default registry
    lb.metrics.register(other, name="payments")    # several pools: told apart by ``pool``

A custom collector reads ``stats()``, ``pool_stats()`` and (for the fleet's
:class:`~lbmiddleware.Balancer`) ``source_stats()`` when Prometheus scrapes, as the
exporters of HAProxy and Envoy read their stats tables: nothing is counted on the pick and
report path, so a registered pool picks at the cost it always had, and a scrape costs one
``stats()`` call per pool. The counters are the pool's own lifetime counts. Every series
carries the label ``pool`` (the ``name`` it was registered under); a backend's carry
``backend`` (its URL); in a gateway worker of several (``serve --workers N``), the label
``worker`` too (see :mod:`.worker`). Labels never carry request data: no paths, no client
addresses.

A backend's series last as long as it is in ``stats()``: one that leaves the pool (removed
by an update or its source, after its drain) disappears with its counters at the next
scrape, and Prometheus marks its series stale; if the URL joins again its counters start at
zero, which ``rate()`` reads as a counter reset. ``prometheus_client`` (the ``metrics``
extra) is imported only by the functions that need it, so this module loads without it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.balancer import Balancer as CoreBalancer
from ..core.load import LATENCY_BUCKETS
from ..errors import ConfigError, needs_extra
from ..fleet import Balancer
from .snapshot import Pools, bounded_load, named_pools
from .worker import current_worker

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["register", "exposition", "PoolCollector", "CONTENT_TYPE", "STATES"]

#: The content type of :func:`exposition`'s text (Prometheus' text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The values of ``lbmiddleware_backend_state``'s ``state`` label: ``stats()``'s states.
STATES = ("healthy", "probation", "ejected", "down", "draining", "slow_start")
# The states in which a pick may choose a backend (``lbmiddleware_backend_up`` 1).
_USABLE = frozenset({"healthy", "probation", "slow_start"})

# The one _Pools collector of each registry that has pools registered in it.
_registered: weakref.WeakKeyDictionary[CollectorRegistry, _Pools] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(pool: CoreBalancer, registry: CollectorRegistry | None = None, *,
             name: str = "default") -> PoolCollector:
    """Expose ``pool``'s metrics in ``registry`` (prometheus_client's default ``REGISTRY``
    when None), under the label ``pool=name``.

    A name is taken once per registry: a second pool with the same name raises
    :class:`~lbmiddleware.ConfigError` (their series would be indistinguishable). The pool
    is held weakly: once it is garbage-collected its series go and its name is free again.
    Returns the pool's :class:`PoolCollector` (``unregister()`` takes it out). Without
    ``prometheus_client``, raises ``ModuleNotFoundError`` naming
    ``pip install 'lbmiddleware[metrics]'``.
    """
    with needs_extra("lb.metrics.register()"):
        import prometheus_client
    if not isinstance(pool, CoreBalancer):
        raise TypeError(f"lb.metrics.register() takes an lb.Balancer, got {pool!r}")
    _check_name(name)
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        pools = _registered.get(registry)
        if pools is None:
            pools = _Pools()
            registry.register(pools)     # refused if another collector has these names
            _registered[registry] = pools
        held = pools.add(name, pool)
    return PoolCollector(name, held, registry)


def exposition(pools: Pools) -> tuple[bytes, str]:
    """The metrics of ``pools`` as Prometheus text: ``(body, content_type)``, for a
    ``/metrics`` route (the status app's). Reads the pools now; registers nothing, so it
    never clashes with :func:`register` in the default registry. ``pools``: one pool (named
    ``default``), a list (``pool1``, ``pool2``...) or a mapping name -> pool
    (:func:`~.snapshot.named_pools`)."""
    with needs_extra("lbmiddleware's /metrics"):
        from prometheus_client.exposition import generate_latest
    worker = current_worker()
    return generate_latest(_Fixed(named_pools(pools),
                                  None if worker is None else str(worker.index))), CONTENT_TYPE


class PoolCollector:
    """One pool's place in a registry, as :func:`register` returns it.

    The registry itself holds one collector for all its pools, so that each metric family
    is written once with every pool's samples (a family written twice, one per pool, is
    refused by Prometheus); this object is the handle: :meth:`collect` yields this pool's
    metrics alone and :meth:`unregister` takes the pool out of the registry.
    """

    def __init__(self, name: str, pool: weakref.ref[CoreBalancer],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.registry = registry
        self._pool = pool

    @property
    def pool(self) -> CoreBalancer | None:
        """The pool (None once it has been garbage-collected)."""
        return self._pool()

    def collect(self) -> list[Metric]:
        pool = self._pool()
        return _families([] if pool is None else [(self.name, pool)])

    def unregister(self) -> None:
        """Take this pool's series out of the registry (idempotent); its name is free again."""
        with _lock:
            pools = _registered.get(self.registry)
            if pools is None or not pools.remove(self.name, self._pool):
                return
            if not pools.names():
                del _registered[self.registry]
                self.registry.unregister(pools)

    def __repr__(self) -> str:
        return f"<PoolCollector name={self.name!r} pool={self._pool()!r}>"


class _Pools:
    """The collector a registry holds: its registered pools by name, held weakly."""

    def __init__(self) -> None:
        # Replaced whole on each change (under _lock), so a scrape reads it without a lock.
        self._pools: dict[str, weakref.ref[CoreBalancer]] = {}

    def add(self, name: str, pool: CoreBalancer) -> weakref.ref[CoreBalancer]:
        """Hold ``pool`` under ``name``; the reference is the pool's key for :meth:`remove`."""
        held = self._pools.get(name)
        if held is not None and held() is not None:
            raise ConfigError(
                f"a pool named {name!r} is already registered in this registry: "
                f"register this one with another name= (the label pool tells them apart)")
        ref = weakref.ref(pool)
        self._pools = {**self._pools, name: ref}
        return ref

    def remove(self, name: str, ref: weakref.ref[CoreBalancer]) -> bool:
        if self._pools.get(name) is not ref:
            return False
        self._pools = {k: v for k, v in self._pools.items() if k != name}
        return True

    def names(self) -> list[str]:
        return [name for name, ref in self._pools.items() if ref() is not None]

    def collect(self) -> list[Metric]:
        named = [(name, pool) for name, ref in self._pools.items()
                 if (pool := ref()) is not None]
        return _families(named)

    def describe(self) -> list[Metric]:
        """The families without samples: the registry checks their names against its other
        collectors' (and does not scrape to learn them)."""
        return _families([])


class _Fixed:
    """A collector over pools given by name, for one exposition; in a gateway worker of
    several, every sample labelled ``worker`` (its index: see :mod:`.worker`)."""

    def __init__(self, named: list[tuple[str, CoreBalancer]], worker: str | None = None
                 ) -> None:
        self._named = named
        self._worker = worker

    def collect(self) -> list[Metric]:
        families = _families(self._named)
        if self._worker is not None:
            for family in families:
                family.samples = [sample._replace(labels={**sample.labels,
                                                          "worker": self._worker})
                                  for sample in family.samples]
        return families


def _families(named: Iterable[tuple[str, CoreBalancer]]) -> list[Metric]:
    """Every metric family, each with the samples of every pool in ``named``."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    pb, pbo = ["pool", "backend"], ["pool", "backend", "outcome"]
    requests = CounterMetricFamily(
        "lbmiddleware_backend_requests", "Attempts sent to the backend that ended with an "
        "outcome, by outcome (success, failure).", labels=pbo)
    duration = HistogramMetricFamily(
        "lbmiddleware_backend_request_duration_seconds", "Time from sending an attempt to "
        "the backend's response head, for the attempts that got one (successes and failing "
        "statuses; never a refused or timed-out attempt).", labels=pb)
    in_flight = GaugeMetricFamily(
        "lbmiddleware_backend_in_flight_requests", "Attempts sent to the backend that have "
        "not ended yet.", labels=pb)
    up = GaugeMetricFamily(
        "lbmiddleware_backend_up", "1 while a pick may choose the backend (healthy, on "
        "probation or in slow start), else 0.", labels=pb)
    state = GaugeMetricFamily(
        "lbmiddleware_backend_state", "1 for the backend's current state, 0 for the others.",
        labels=["pool", "backend", "state"])
    weight = GaugeMetricFamily(
        "lbmiddleware_backend_weight", "The backend's effective weight (its weight, lower "
        "during slow start).", labels=pb)
    ejections = CounterMetricFamily(
        "lbmiddleware_backend_ejections", "Times passive health ejected the backend.",
        labels=pb)
    checks = CounterMetricFamily(
        "lbmiddleware_backend_health_checks", "Active health checks of the backend, by "
        "result (pass, fail).", labels=["pool", "backend", "result"])
    sent = CounterMetricFamily(
        "lbmiddleware_backend_sent_bytes", "Request body bytes sent to the backend, counted "
        "as each attempt ends (with the received bytes: what the bandwidth policy weighs).",
        labels=pb)
    received = CounterMetricFamily(
        "lbmiddleware_backend_received_bytes", "Response body bytes received from the "
        "backend, counted as each attempt ends.", labels=pb)
    retries = CounterMetricFamily(
        "lbmiddleware_retries", "Attempts that retried a request on another backend.",
        labels=["pool"])
    panic = GaugeMetricFamily(
        "lbmiddleware_panic", "1 while no backend is usable and picks choose among them all "
        "(panic), else 0.", labels=["pool"])
    discovery = CounterMetricFamily(
        "lbmiddleware_discovery_updates", "Answers (success) and failed asks (failure) of "
        "the pool's discovery sources.", labels=["pool", "source", "result"])
    exhausted = CounterMetricFamily(
        "lbmiddleware_retry_budget_exhausted", "Retries the retry budget refused (the client "
        "got the failure it had), while the budget is on.", labels=["pool"])
    available = GaugeMetricFamily(
        "lbmiddleware_retry_budget_available_retries", "Retries the retry budget allows now: "
        "ratio x requests + min_per_second x ttl - retries, over the last ttl seconds; below "
        "1 the next retry is refused.", labels=["pool"])
    overflows = CounterMetricFamily(
        "lbmiddleware_hash_overflow", "ip_hash picks that left their key's home backend "
        "because it held its bounded share (hash_balance_factor), while a factor is set.",
        labels=["pool"])
    # Bounds spelt as prometheus_client spells its own histograms' (repr, for these values),
    # so that both kinds of series of a process agree on le.
    bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS]

    for name, pool in named:
        for row in pool.stats():
            url: str = row["url"]
            labels = [name, url]
            failures: int = row["failures"]
            requests.add_metric([name, url, "success"], row["requests"] - failures)
            requests.add_metric([name, url, "failure"], failures)
            buckets = [*zip(bounds, row["latency_buckets"], strict=True),
                       ("+Inf", row["latency_count"])]
            duration.add_metric(labels, buckets, row["latency_sum"])
            in_flight.add_metric(labels, row["in_flight"])
            now = row["state"]
            up.add_metric(labels, 1 if now in _USABLE else 0)
            for each in STATES:
                state.add_metric([name, url, each], 1 if each == now else 0)
            weight.add_metric(labels, row["effective_weight"])
            ejections.add_metric(labels, row["ejections"])
            check: dict[str, Any] | None = row["health_check"]
            if check is not None:
                checks.add_metric([name, url, "pass"], check["passes_total"])
                checks.add_metric([name, url, "fail"], check["fails_total"])
            sent.add_metric(labels, row["bytes_sent"])
            received.add_metric(labels, row["bytes_received"])
        totals = pool.pool_stats()
        retries.add_metric([name], totals["retries"])
        panic.add_metric([name], 1 if totals["panic"] else 0)
        budget: dict[str, Any] | None = totals["retry_budget"]
        if budget is not None:
            exhausted.add_metric([name], budget["exhausted_total"])
            available.add_metric([name], budget["available"])
        if bounded_load(pool) or totals["hash_overflows_total"]:
            overflows.add_metric([name], totals["hash_overflows_total"])
        if isinstance(pool, Balancer):
            for source in pool.source_stats():
                discovery.add_metric([name, source["url"], "success"], source["updates_total"])
                discovery.add_metric([name, source["url"], "failure"], source["failures_total"])
    return [requests, duration, in_flight, up, state, weight, ejections, checks, sent,
            received, retries, panic, discovery, exhausted, available, overflows]


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name has value {name!r}: a pool's name is a non-empty string "
                          f"(the value of its metrics' label pool)")
