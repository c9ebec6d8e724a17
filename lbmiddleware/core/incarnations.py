"""The Backend objects a pool's ended incarnations handed out, so that their late ends are
told from a new member's.

A backend that leaves with requests in flight (its drain timed out) may come back as a member
of the same URL before those requests end. Their ends must not count for the new member: they
are known by the very Backend objects the old incarnation's picks returned, which a new
member's picks never return (an equal copy is made for it). A report with an equal object
built by the caller still ends a member's pick, as it always did. Used under the balancer's
lock (or on its owner's thread). Standard library only.
"""

from __future__ import annotations

import dataclasses

from .backend import Backend
from .state import BackendState

__all__ = ["Retired", "RETIRED_URLS", "RETIRED_OBJECTS"]

#: Ended incarnations remembered: at most this many URLs, each with at most RETIRED_OBJECTS
#: Backend objects (the last ones its picks returned); the oldest URL is forgotten first (a
#: late end still to come from it would then count as the URL's again).
RETIRED_URLS = 1024
RETIRED_OBJECTS = 16


class Retired:
    """Per URL, the Backend objects picks of its ended incarnations returned."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[str, tuple[Backend, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._objects)

    def retire(self, state: BackendState) -> None:
        """``state`` left with requests in flight: the objects its picks returned
        (``state.backend``, ``state.former``) are an ended incarnation's from now on."""
        url = state.backend.url
        objects = self._objects.pop(url, ())
        self._objects[url] = (*objects, *state.former, state.backend)[-RETIRED_OBJECTS:]
        state.former = ()
        while len(self._objects) > RETIRED_URLS:
            del self._objects[next(iter(self._objects))]

    def late(self, backend: Backend) -> bool:
        """True when ``backend`` is an object a pick of an ended incarnation returned: its
        end is a late one, to ignore. Kept until forgotten (not counted down: an end given
        twice must not reach the new member either)."""
        return any(backend is b for b in self._objects.get(backend.url, ()))

    def fresh(self, backend: Backend) -> Backend:
        """``backend``, or an equal copy if picks of an ended incarnation of its URL returned
        this very object: a new member's picks are never one of them."""
        if self._objects and self.late(backend):
            return dataclasses.replace(backend)
        return backend
