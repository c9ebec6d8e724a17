"""Following a balancer's departures from a front-end, held weakly.

Each front-end closes its own connections to backends that leave its balancer (the requests
adapter its urllib3 pools, the ASGI middleware its upstream pools): it subscribes to the
balancer's :class:`~lbmiddleware.core.events.MembershipChanged` and acts on ``removed``.
The listener must not keep the front-end alive (a shared balancer outlives the front-ends
built on it), so it holds the front-end weakly and unsubscribes itself once that is gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

from ..core.balancer import Balancer as CoreBalancer
from ..core.events import Event, MembershipChanged

__all__ = ["follow_departures"]

_FrontEnd = TypeVar("_FrontEnd")


def follow_departures(front_end: _FrontEnd, balancer: CoreBalancer,
                      on_departure: Callable[[_FrontEnd, MembershipChanged], None]
                      ) -> Callable[[], None]:
    """Call ``on_departure(front_end, event)`` for every ``MembershipChanged`` of
    ``balancer`` whose ``removed`` is not empty, on the thread that changed the members;
    returns the unsubscribe function (the front-end's ``close()`` calls it).

    The listener holds ``front_end`` weakly (``on_departure`` takes it as an argument, so
    pass a function or an unbound method, never a bound one): a shared balancer does not
    keep a dropped front-end alive, and the listener of a collected one unsubscribes itself
    at the next departure."""
    ref = weakref.ref(front_end)

    def listener(event: Event) -> None:
        if type(event) is MembershipChanged and event.removed:
            alive = ref()
            if alive is not None:
                on_departure(alive, event)
            else:
                unsubscribe()

    unsubscribe = balancer.subscribe(listener)
    return unsubscribe
