"""What a pool's entries list: the static backends and each source's last set, what
``drain()`` holds out of them, and which sources have answered or are failing.

The union of the entries (:meth:`Entries.union`) is the pool's membership: the static list
first, then each source in settings order (others in the order they first answered), a URL
listed twice being the first entry's. The Balancer folds each new set in (``update()``) and
turns the union into members (health, drain, slow start: SEMANTICS part two); this only
keeps the lists. Written under the balancer's lock (or on its owner's thread); ``same`` and
``union`` of a given mapping are also read without it, for a guess made outside the lock.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import NoHealthyBackend
from .backend import Backend

__all__ = ["Entries"]

#: An entry's key: None for the static list, else the source's URL.
Key = str | None


class Entries:
    """The static list (key None) and each source's set (key: its URL), in order."""

    __slots__ = ("lists", "held", "unanswered", "failing", "_index", "_warned")

    def __init__(self, static: tuple[Backend, ...], sources: Iterable[str]) -> None:
        self.lists: dict[Key, tuple[Backend, ...]] = {None: static}
        for url in sources:
            self.lists[url] = ()
        #: The URLs drain() keeps out of the union (until undrain()).
        self.held: dict[str, None] = {}
        #: The sources of the settings that have not answered yet: a source's first answer
        #: is its initial list (no slow start, up for active health); its later ones join.
        self.unanswered: set[str | None] = set(self.lists) - {None}
        #: The sources in an outage and why (SourceFailed, SourceRecovered): read only when a
        #: pick finds the pool empty (:meth:`no_backends`).
        self.failing: dict[str, str] = {}
        self._index: dict[Key, dict[str, tuple[int, int, str | None]]] = {}
        self._warned: set[tuple[str, Key]] = set()

    def same(self, key: Key, backends: tuple[Backend, ...]) -> bool:
        """True when ``backends`` are entry ``key``'s now, with the same weights, priorities
        and server names, in any order."""
        index = self._index.get(key)
        if index is None:
            if key in self.lists or key is None:
                index = self._indexed(key)
            else:
                return False
        if len(backends) != len(index):
            return False
        for backend in backends:
            if index.get(backend.url) != (backend.weight, backend.priority, backend.server_name):
                return False
        return True

    def _indexed(self, key: Key) -> dict[str, tuple[int, int, str | None]]:
        index = {b.url: (b.weight, b.priority, b.server_name) for b in self.lists.get(key, ())}
        self._index[key] = index
        return index

    def replace(self, key: Key, backends: tuple[Backend, ...]) -> None:
        """Entry ``key`` lists ``backends`` from now on."""
        self.lists[key] = backends
        self._indexed(key)

    def union(self, lists: Mapping[Key, tuple[Backend, ...]] | None = None
              ) -> tuple[tuple[Backend, ...], list[str]]:
        """The members the entries give (or ``lists``, a copy changed for a guess): static
        first, then each source in order, without what drain() holds out; a URL listed
        twice is the first entry's, and the warning that says so comes once (only for the
        entries' own lists)."""
        owners: dict[str, Key] = {}
        union: list[Backend] = []
        warnings: list[str] = []
        held = self.held
        for key, backends in (self.lists if lists is None else lists).items():
            for backend in backends:
                url = backend.url
                if url in held:
                    continue
                if url in owners:
                    if lists is None and (url, key) not in self._warned:
                        self._warned.add((url, key))
                        first = owners[url] or "the static list"
                        warnings.append(f"backend {url} is listed by {key or 'the static list'} "
                                        f"and by {first}: {first}'s entry is used")
                    continue
                owners[url] = key
                union.append(backend)
        return tuple(union), warnings

    def listed(self, lists: Mapping[Key, tuple[Backend, ...]] | None = None) -> set[str]:
        """Every URL an entry lists (held ones too)."""
        return {b.url for entry in (self.lists if lists is None else lists).values()
                for b in entry}

    def no_backends(self) -> NoHealthyBackend:
        """The error of a pool with no members, saying which sources are why: those failing
        (with their error) and those that have not answered yet. Built only when raised."""
        why = []
        for url in self.lists:
            if url in self.failing:
                why.append(f"source {url} is failing ({self.failing[url]})")
            elif url in self.unanswered:
                why.append(f"source {url} has not answered yet")
        return NoHealthyBackend("the pool has no backends" + (": " if why else "")
                                + "; ".join(why))
