"""Following a balancer's departures from a front-end, held weakly.

Each front-end closes its own connections to backends that leave its balancer (the requests
adapter its urllib3 pools, the ASGI middleware its upstream pools): it subscribes to the
balancer's :class:`~lbmiddleware.core.events.MembershipChanged` and acts on ``removed``.
The listener must not keep the front-end alive (a shared balancer outlives the front-ends
built on it), so it holds the front-end weakly, and is unsubscribed once that is gone: a
client (and its front-end) made per call on one shared pool and dropped without
``close()`` must not leave a listener each on the pool (each costing memory, and every
later subscription a longer copy).

The unsubscribe takes the balancer's lock, which a garbage collection may interrupt while
this very thread holds it (a collection runs inside any allocation): so the collected
front-end's unsubscribe is queued (a list append, lock-free), and the queue is emptied by
the next :func:`follow_departures` (a new front-end: where dropped ones pile up) and by
the next departure, never from inside a collection.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

from ..core.balancer import Balancer as CoreBalancer
from ..core.events import Event, MembershipChanged

__all__ = ["follow_departures", "forget_collected"]

_FrontEnd = TypeVar("_FrontEnd")

#: The unsubscribes of front-ends collected since the queue was last emptied.
_collected: list[Callable[[], None]] = []


def forget_collected() -> None:
    """Unsubscribe the listeners of the front-ends collected so far. Call it where no
    balancer lock can be held by this thread (not from a finalizer)."""
    while _collected:
        try:
            unsubscribe = _collected.pop()
        except IndexError:              # another thread took the last one
            return
        unsubscribe()


def follow_departures(front_end: _FrontEnd, balancer: CoreBalancer,
                      on_departure: Callable[[_FrontEnd, MembershipChanged], None]
                      ) -> Callable[[], None]:
    """Call ``on_departure(front_end, event)`` for every ``MembershipChanged`` of
    ``balancer`` whose ``removed`` is not empty, on the thread that changed the members;
    returns the unsubscribe function (the front-end's ``close()`` calls it).

    The listener holds ``front_end`` weakly (``on_departure`` takes it as an argument, so
    pass a function or an unbound method, never a bound one): a shared balancer does not
    keep a dropped front-end alive, and the listener of a collected one is unsubscribed by
    the next call of this function or the next departure (see the module doc)."""
    forget_collected()

    def listener(event: Event) -> None:
        if type(event) is MembershipChanged and event.removed:
            alive = ref()
            if alive is not None:
                on_departure(alive, event)
            forget_collected()

    unsubscribe = balancer.subscribe(listener)
    # (the callback holds the unsubscribe, not the front-end: called as it is collected)
    ref = weakref.ref(front_end, lambda _: _collected.append(unsubscribe))
    return unsubscribe
