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
