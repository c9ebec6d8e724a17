"""fleet.departures.follow_departures, on the core's pool (no I/O): the front-end is called
for departures only, held weakly, and a dropped one's listener unsubscribes itself."""

from __future__ import annotations

import gc
import weakref

from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import MembershipChanged
from lbmiddleware.fleet.departures import follow_departures

from ..support.departures import record_unsubscribes


class FrontEnd:
    def __init__(self) -> None:
        self.departed: list[list[str]] = []

    def close_departed(self, event: MembershipChanged) -> None:
        self.departed.append([backend.url for backend in event.removed])


def test_departures_reach_the_front_end_and_joins_do_not():
    pool = Balancer(["http://a:1"])
    front_end = FrontEnd()
    unsubscribe = follow_departures(front_end, pool, FrontEnd.close_departed)
    pool.update(["http://a:1", "http://b:1"])           # a join: nothing to close
    assert front_end.departed == []
    pool.update(["http://b:1"])
    assert front_end.departed == [["http://a:1"]]
    unsubscribe()
    pool.update(["http://c:1"])
    assert front_end.departed == [["http://a:1"]]


def test_a_dropped_front_end_is_not_kept_and_its_listener_unsubscribes_itself(monkeypatch):
    pool = Balancer(["http://a:1"])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    front_end = FrontEnd()
    follow_departures(front_end, pool, FrontEnd.close_departed)
    ref = weakref.ref(front_end)
    del front_end
    gc.collect()
    assert ref() is None
    pool.update(["http://a:1", "http://b:1"])           # a join: the listener stays
    assert unsubscribed == []
    pool.update(["http://b:1"])                         # the next departure: it goes
    assert len(unsubscribed) == 1


def test_dropped_front_ends_are_unsubscribed_by_the_next_one_without_a_departure(monkeypatch):
    """A front-end per call on one shared static pool, dropped without close(): no departure
    ever comes, so each dropped one's listener would stay (memory, and a longer copy for
    every later subscription); the next front-end built unsubscribes them."""
    pool = Balancer(["http://a:1"])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    for _ in range(100):
        follow_departures(FrontEnd(), pool, FrontEnd.close_departed)
    kept = FrontEnd()
    follow_departures(kept, pool, FrontEnd.close_departed)
    assert len(unsubscribed) == 100
    pool.update(["http://b:1"])                         # the one kept still follows
    assert kept.departed == [["http://a:1"]]


def test_a_front_end_collected_while_this_thread_holds_the_pools_lock_does_not_wait_for_it(
        monkeypatch):
    """A garbage collection runs inside any allocation, also inside the pool's own lock (a
    pick): the collected front-end's unsubscribe, which takes that lock, is queued, not run
    there (it would wait for this very thread forever)."""
    pool = Balancer(["http://a:1"])
    unsubscribed = record_unsubscribes(pool, monkeypatch)
    front_end = FrontEnd()
    front_end.cycle = front_end                         # only a collection frees it
    follow_departures(front_end, pool, FrontEnd.close_departed)
    ref = weakref.ref(front_end)
    del front_end
    with pool._lock:
        gc.collect()
    assert ref() is None and unsubscribed == []
    follow_departures(FrontEnd(), pool, FrontEnd.close_departed)
    assert len(unsubscribed) == 1
