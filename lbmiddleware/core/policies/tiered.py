"""Tiers: one policy instance per priority level, and the draw of a tier per pick (Envoy
priority levels; nginx's and HAProxy's ``backup``).

The balancer uses this wrapper instead of its policy only while its members have more than one
priority; a pool of one tier picks through the policy itself, at today's cost. The loads come
from :func:`~lbmiddleware.core.tiers.tier_loads` (Envoy's overprovisioning rule), computed when
membership or health changes (:meth:`Tiered.refresh`), never per pick. A pick draws a point in
[0, 100): at random, or for a keyed policy (``ip_hash``) from the key's hash, so a key keeps its
tier while the loads stay, and its backend inside the tier. With no usable backend in any tier
(panic) the pool's own policy instance picks among every member, as with one tier.

Which instance hears of a request's start and end matters to the policies that keep per-backend
state (``least_conn``'s heap entries): a start goes to the instance that picked, an end to the
instance that picks now (the panic one in panic, else the backend's tier's). A policy that counts
the requests in flight on the backends it holds (bounded-load ``ip_hash``:
``counts_in_flight``) hears every start and end of a backend in both instances that hold it,
its tier's and the panic one, whichever picked: each counts exactly its own backends' load. So
do the bytes (``transferred``: ``bandwidth``), which keeps both instances' windows current, the
panic one's for the next panic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..hashing import stable_hash
from ..state import BackendState, Members
from ..tiers import draw_tier, tier_loads
from .base import Exclude, Policy

__all__ = ["Tiered"]


def key_point(key: str) -> float:
    """A point in [0, 100) from a key's hash: its tier while the loads stay. Bits 40-63 of
    the hash (the Maglev slot uses the low bits, its probe step bits 32 and up)."""
    return ((stable_hash(key) >> 40) & 0xFFFFFF) * (100.0 / 0x1000000)


class Tiered(Policy):
    """Picks a tier by its load, then a backend with that tier's own policy instance."""

    def __init__(self, panic: Policy, make: Callable[[], Policy],
                 overprovisioning: float) -> None:
        super().__init__(panic.rng, panic.timer, panic.load)
        self.name = panic.name
        self.keyed = panic.keyed
        self._panic_policy = panic
        self._make = make
        self._overprovisioning = overprovisioning
        self._by_priority: dict[int, Policy] = {}
        # Per tier in priority order: (policy, usable members); and the loads.
        self._tiers: list[tuple[Policy, Members]] = []
        self._loads: tuple[int, ...] = ()
        self._members: dict[int, int] = {}     # priority -> members (draining excluded)
        self._order: list[int] = []             # the tiers' priorities, as in _tiers
        self._everyone: Members | None = None
        self._panic = True
        self._whole = -1
        self._picked_by: Policy = panic
        self._everywhere = panic.counts_in_flight

    @property
    def loads(self) -> tuple[int, ...]:
        return self._loads

    def membership_changed(self, states: Sequence[BackendState], prepared: Any = None) -> None:
        """``states``: every backend a policy may hold (members and draining ones)."""
        groups: dict[int, list[BackendState]] = {}
        for state in states:
            groups.setdefault(state.backend.priority, []).append(state)
        self._by_priority = {priority: self._by_priority.get(priority) or self._make()
                             for priority in sorted(groups)}
        for priority, policy in self._by_priority.items():
            policy.membership_changed(groups[priority])
        self._panic_policy.membership_changed(states, prepared)

    def refresh(self, everyone: Members, usable: Members) -> None:
        """New snapshots: ``everyone`` (the members), ``usable`` (those a pick may choose)."""
        generation = usable.generation
        members: dict[int, int] = {}
        for state in everyone.states:
            priority = state.backend.priority
            members[priority] = members.get(priority, 0) + 1
        usable_by: dict[int, list[BackendState]] = {priority: [] for priority in members}
        for state in usable.states:
            usable_by[state.backend.priority].append(state)
        order = sorted(members)
        self._members = members
        self._order = order
        self._tiers = [(self._policy_for(priority), Members(tuple(usable_by[priority]), generation,
                                                             usable.carry))
                       for priority in order]
        self._loads = tier_loads([(members[p], len(usable_by[p])) for p in order],
                                 self._overprovisioning) if order else ()
        self._everyone = everyone
        self._panic = not any(self._loads)
        # One tier takes everything (the backups idle, the usual case): no draw needed.
        self._whole = next((i for i, load in enumerate(self._loads) if load == 100), -1)

    def _policy_for(self, priority: int) -> Policy:
        policy = self._by_priority.get(priority)
        if policy is None:
            policy = self._by_priority[priority] = self._make()
        return policy

    def _point(self, key: str | None) -> float:
        if key is not None and self.keyed:
            return key_point(key)
        return self.rng.random() * 100.0

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        if self._panic or members is self._everyone:
            self._picked_by = policy = self._panic_policy
            return policy.pick(members, key, exclude, now)
        index = self._whole
        if index < 0:
            index = draw_tier(self._loads, self._point(key))
        policy, usable = self._tiers[index]
        if exclude and sum(1 for s in exclude if s in usable) >= len(usable):
            policy, usable = self._next_tier(exclude)
        self._picked_by = policy
        return policy.pick(usable, key, exclude, now)

    def _next_tier(self, exclude: Exclude) -> tuple[Policy, Members]:
        """The first tier with a usable backend not excluded: a tier with a load first (in
        priority order), then any (a retry goes to the backup once the primaries are tried).
        The balancer widens to panic before every usable backend is excluded."""
        loaded = [tier for tier, load in zip(self._tiers, self._loads, strict=True) if load]
        for policy, usable in (*loaded, *self._tiers):
            if any(s not in exclude for s in usable.states):
                return policy, usable
        raise AssertionError("every usable backend is excluded")      # the balancer widens

    def lookup(self, members: Members, key: str) -> BackendState:
        if self._panic or members is self._everyone:
            return self._panic_policy.lookup(members, key)
        tiers = self._tiers
        if members.generation < 0:
            # A throwaway snapshot (an ejection is over): the tiers it would give.
            usable_by: dict[int, list[BackendState]] = {p: [] for p in self._members}
            for state in members.states:
                usable_by.setdefault(state.backend.priority, []).append(state)
            order = sorted(usable_by)
            loads = tier_loads([(max(self._members.get(p, 0), len(usable_by[p])),
                                 len(usable_by[p])) for p in order], self._overprovisioning)
            if not any(loads):
                return self._panic_policy.lookup(members, key)
            index = draw_tier(loads, key_point(key))
            priority = order[index]
            return self._policy_for(priority).lookup(Members(tuple(usable_by[priority]), -1), key)
        policy, usable = tiers[draw_tier(self._loads, key_point(key))]
        return policy.lookup(usable, key)

    def prefer(self, state: BackendState, members: Members) -> bool:
        """May ``state`` (a usable member a sticky cookie names) be chosen without a draw?
        Only in a tier that takes traffic now (or in a panic, or a pick among everyone);
        if so the next :meth:`started` goes to that tier's instance, as if it had picked."""
        if self._panic or members is self._everyone:
            self._picked_by = self._panic_policy
            return True
        priority = state.backend.priority
        for (policy, _), load, in_order in zip(self._tiers, self._loads, self._order,
                                               strict=True):
            if in_order == priority:
                if not load:
                    return False
                self._picked_by = policy
                return True
        return False

    @property
    def overflows(self) -> int:  # type: ignore[override]
        """Every instance's overflow picks (bounded-load ip_hash)."""
        return self._panic_policy.overflows + sum(p.overflows
                                                  for p in self._by_priority.values())

    def _holders(self, state: BackendState) -> tuple[Policy, ...]:
        """The instances that hold ``state``: its tier's (if it has one) and the panic one."""
        tier = self._by_priority.get(state.backend.priority)
        return (tier, self._panic_policy) if tier is not None else (self._panic_policy,)

    def transferred(self, state: BackendState, nbytes: int,
                    now: float | None = None) -> None:
        for policy in self._holders(state):
            policy.transferred(state, nbytes, now)

    def started(self, state: BackendState, now: float | None = None) -> None:
        if self._everywhere:
            for policy in self._holders(state):
                policy.started(state, now)
            return
        self._picked_by.started(state, now)

    def finished(self, state: BackendState) -> None:
        if self._everywhere:
            for policy in self._holders(state):
                policy.finished(state)
            return
        if self._panic:
            self._panic_policy.finished(state)
            return
        tier = self._by_priority.get(state.backend.priority)
        (tier or self._panic_policy).finished(state)
