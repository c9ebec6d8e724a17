"""The retry budget: retries may add at most a fixed share to the load (Finagle's
``RetryBudget``, Linkerd's default).

Without one, a backend that sheds load with 503 makes every request try the others too:
the pool gets up to ``retries + 1`` times its load exactly when it has least room. With
one, over the last ``ttl`` seconds the retries made stay within ``ratio`` x the requests
made plus ``min_per_second`` x ``ttl``: every original request deposits ``ratio`` of a
retry, the reserve lets a quiet pool retry at all, and a retry that finds nothing left is
not made (the client gets the failure it had). SEMANTICS part three, "Retry budget".

Counted in one-second slots, so the window is ``ttl`` rounded up to whole seconds and moves
in steps of one second. Not thread-safe: one per Balancer, used under its lock.
Standard library only.
"""

from __future__ import annotations

import math

__all__ = ["RetryBudget"]


class RetryBudget:
    """Requests and retries per second over a sliding window, and the rule between them."""

    __slots__ = ("ratio", "min_per_second", "ttl", "exhausted", "_requests", "_retries",
                 "_retry_total", "_slots", "_index", "_from", "_until")

    def __init__(self, ratio: float, min_per_second: float, ttl: float) -> None:
        if not ratio >= 0 or math.isinf(ratio):
            raise ValueError(f"a retry budget's ratio is a finite number of at least 0, "
                             f"not {ratio!r}")
        if not ttl >= 1.0 or math.isinf(ttl):
            raise ValueError(f"a retry budget's ttl is at least 1 second, not {ttl!r}")
        if not min_per_second >= 0 or math.isinf(min_per_second):
            raise ValueError(f"a retry budget's min_per_second is a finite number of at "
                             f"least 0, not {min_per_second!r}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self.exhausted = 0                      # retries refused, since the start
        self._slots = math.ceil(ttl)
        # Per second, a ring. The requests are summed when a retry asks (a few a second at
        # most), not kept as a total that every request would add to.
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots
        self._retry_total = 0                   # the sum of _retries
        # The current slot's index, and the clock readings it covers: [_from, _until), _from
        # its second (none before the first request: an empty range).
        self._index = 0
        self._from = math.inf
        self._until = -math.inf

    def _advance(self, now: float) -> int:
        """The current slot's index at ``now``, once the slots that fell out of the window
        are emptied."""
        second = math.floor(now)
        current = self._from
        slots = self._slots
        if current != second:
            if second - slots < current < second:   # the window moved on: the slots passed
                requests, retries = self._requests, self._retries
                for passed in range(int(current) + 1, second + 1):
                    index = passed % slots
                    self._retry_total -= retries[index]
                    requests[index] = retries[index] = 0
            else:                       # the first, all of it passed, or a clock set back
                self._requests = [0] * slots
                self._retries = [0] * slots
                self._retry_total = 0
            self._index = second % slots
            self._from = second
            self._until = second + 1
        return self._index

    def deposit(self, now: float) -> None:
        """One original request (a first attempt) at ``now``."""
        if self._from <= now < self._until:
            index = self._index     # (the current slot: _advance has nothing to do)
        else:
            index = self._advance(now)      # (first: it may replace the lists)
        self._requests[index] += 1

    def available(self, now: float) -> float:
        """Retries that may be made at ``now`` (may be fractional; below 1: none)."""
        self._advance(now)
        return (self.ratio * sum(self._requests) + self.min_per_second * self.ttl
                - self._retry_total)

    def try_spend(self, now: float) -> bool:
        """Spend one retry at ``now`` if the budget holds one; else count it as refused."""
        index = self._advance(now)
        if self._retry_total + 1 > (self.ratio * sum(self._requests)
                                    + self.min_per_second * self.ttl):
            self.exhausted += 1
            return False
        self._retries[index] += 1
        self._retry_total += 1
        return True

    def refund(self, now: float) -> None:
        """Give back one retry spent (a retry that was not made after all: no backend was
        left, or none had time for it), from the latest slot that holds one."""
        index = self._advance(now)
        retries, slots = self._retries, self._slots
        for back in range(slots):
            slot = (index - back) % slots
            if retries[slot]:
                retries[slot] -= 1
                self._retry_total -= 1
                return

    def stats(self, now: float) -> dict[str, float | int]:
        """The budget as ``pool_stats()`` shows it."""
        available = self.available(now)
        return {"ratio": self.ratio, "min_per_second": self.min_per_second, "ttl": self.ttl,
                "requests": sum(self._requests), "retries": self._retry_total,
                "available": max(0.0, available), "exhausted_total": self.exhausted}

    def __repr__(self) -> str:
        return (f"RetryBudget(ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
                f"ttl={self.ttl:g})")
