"""Sources that turn a name into backends and follow it: DNS A/AAAA (``dns+http://``), DNS
SRV (``srv+http://``) and etcd (``etcd://``).

Each source gets a watcher (:func:`watcher_for`) whose ``run(publish, emit)`` the fleet runs on
its asyncio loop: every new set goes to ``publish`` (``pool.update(backends, source=...)``),
source failures and recoveries to ``emit`` as events, and ``watcher.status`` says how the source
is doing. The rules every watcher shares are in :mod:`.watcher`, the delays in :mod:`.backoff`.
No watcher starts a thread of its own; DNS needs dnspython (``pip install 'lbmiddleware[dns]'``),
imported only when a DNS source first asks.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .backoff import Backoff, refresh_delay
from .status import SourceStatus
from .watcher import Answer, Emit, Follower, PollingWatcher, Publish, SourceError, Watcher

if TYPE_CHECKING:
    from ..core.backend import Source
    from ..core.settings import Settings

__all__ = ["watcher_for", "Watcher", "Publish", "Emit", "SourceStatus", "Backoff",
           "refresh_delay", "Follower", "PollingWatcher", "SourceError", "Answer"]

def watcher_for(source: Source, settings: Settings, *,
                rng: random.Random | None = None) -> Watcher:
    """The watcher that follows ``source`` with ``settings``' DNS servers and refresh
    bounds. (Importing the DNS watchers does not import dnspython: their first question
    does.)"""
    if source.kind == "etcd":
        from .etcd import EtcdWatcher
        return EtcdWatcher(source, settings, rng=rng)
    from .dns import DnsWatcher, SrvWatcher
    if source.kind == "srv":
        return SrvWatcher(source, settings, rng=rng)
    return DnsWatcher(source, settings, rng=rng)
