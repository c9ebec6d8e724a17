"""``bandwidth``: power of two choices on the bytes each backend moved lately (NetScaler
LEASTBANDWIDTH).

Per backend, the body bytes of its attempts (sent plus received, as each attempt ends:
:meth:`~.base.Policy.transferred`) over a sliding window of :data:`WINDOW` seconds, in
one-second buckets rotated lazily when a pick or a transfer reads them (at most
:data:`WINDOW` buckets cleared per read, usually none: O(1)). A pick draws two distinct
backends at random and keeps the one with the lower charge per unit of weight (each
transfer's bytes divided by the weight the backend had when it moved them); see
:meth:`LeastBandwidth.charge`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..load import PeakEwma
from ..state import BackendState, Members
from .base import Exclude, Policy

__all__ = ["LeastBandwidth", "WINDOW"]

WINDOW = 14          # seconds, in one-second buckets (NetScaler's LEASTBANDWIDTH window)
_DRAWS = 8           # random draws that may land on excluded backends before listing the rest


class _Window:
    """Bytes and attempts per one-second bucket over the last :data:`WINDOW` seconds, with
    their totals; ``second`` is the newest bucket's second (``floor(timer())``).

    Each transfer is kept twice: its bytes (``bytes``: the mean bytes per attempt, which
    in-flight requests are charged) and its bytes weighed by the backend's share of the
    pool's weight at that moment (``weighed``: bytes x total weight // weight, what a pick
    compares). Weighed as they arrive, bytes moved at a small weight (a slow start's) stay
    the fair share they were, however the weights change while they are in the window;
    and the measure does not jump when every weight is scaled (to hundredths while a slow
    start runs, back when it ends). Whole numbers: the sums are exact."""

    __slots__ = ("bytes", "weighed", "counts", "second", "total", "weighed_total",
                 "requests", "arrived", "before", "turn", "weight")

    def __init__(self, second: int, arrived: int = 0, before: int = 0, weight: int = 1) -> None:
        self.bytes = [0] * WINDOW
        self.weighed = [0] * WINDOW
        self.counts = [0] * WINDOW
        self.second = second
        self.total = 0          # bytes in the window
        self.weighed_total = 0  # weighed bytes in the window
        self.requests = 0       # attempts with bytes in the window
        self.arrived = arrived  # the second the policy first saw it eligible
        self.before = before    # the pool's weighed bytes in that second before it arrived
        self.turn = 0.0         # stride scheduling's virtual time: ties go by weighted turns
        self.weight = weight    # the backend's weight in the last snapshot a pick saw

    def advance(self, second: int) -> None:
        """Move the window on to ``second``: the buckets it leaves behind are emptied."""
        gap = second - self.second
        if gap <= 0:
            return
        if gap >= WINDOW:
            self.bytes = [0] * WINDOW
            self.weighed = [0] * WINDOW
            self.counts = [0] * WINDOW
            self.total = self.weighed_total = self.requests = 0
        else:
            sizes, weighed, counts = self.bytes, self.weighed, self.counts
            for bucket in range(self.second + 1, second + 1):
                index = bucket % WINDOW
                self.total -= sizes[index]
                self.weighed_total -= weighed[index]
                self.requests -= counts[index]
                sizes[index] = weighed[index] = counts[index] = 0
        self.second = second

    def remove(self, other: _Window) -> None:
        """Take ``other``'s buckets out of this sum (both at the same ``second``)."""
        sizes, weighed, counts = self.bytes, self.weighed, self.counts
        for index in range(WINDOW):
            sizes[index] -= other.bytes[index]
            weighed[index] -= other.weighed[index]
            counts[index] -= other.counts[index]
        self.total -= other.total
        self.weighed_total -= other.weighed_total
        self.requests -= other.requests


class LeastBandwidth(Policy):
    """The least bytes per unit of weight over the last 14 s, by power of two choices.

    The charge of a backend (:meth:`charge`) is its window's bytes, each transfer's
    divided by the backend's weight *when it moved* (kept weighed by the backend's share of
    the pool's weight then: :class:`_Window`), plus two estimates of what the window does
    not hold yet. Divided as they arrive, the bytes a slow-starting backend moved at a
    small weight stay the fair share they were as its weight grows: its share of the
    picks follows its effective weight through the ramp and is its fair one at the end.
    (Dividing the window's bytes by the weight of the moment a pick reads them made those
    bytes look cheap: a fourth backend joining three with a 10 s slow start took 27% of
    the picks at ramp 0.5, where its weight gives 14%, and 44% at the ramp's end.)

    * **In flight.** The front-ends report an attempt's bytes when it ends, so a response
      still streaming is not in the window: each request in flight is charged the
      backend's mean bytes per attempt over the window (the pool's mean while it has
      none). Without it a backend handed ten large downloads in one second would look
      idle until they end, and draw every pick in between; with it a backend that serves
      large responses costs more per request from the moment it is picked.
    * **Newcomers.** A backend the policy has seen eligible for less than the window (it
      joined, returned from an ejection or a drain, or the policy just started) has not
      lived the whole window. For the part of the window before it arrived it is charged
      what the others moved then, per unit of weight (their mean, from the pool's weighed
      bytes in those seconds and in its arrival second up to its arrival); then its own
      bytes. So at arrival it costs the mean of the others, neither starved (an empty
      window is not an infinite cost) nor stampeded (nor a zero one), and from then on it
      compares with each of them by what each moved since it arrived: a fair race however
      the pool's rate changes, and its own bytes take over as the seconds before it leave
      the window. The backends of the initial list arrive together with no bytes before
      them, so they compare by their own bytes (a backend that arrives while the window
      holds no bytes is taken as old as the window). (A blend at the pool's mean rate over
      the window instead gave a backend back from a 10 s ejection 42% of three backends'
      picks, not 33%: the others' windows then still held the higher rate of the seconds
      it was out.) O(1): at most 14 buckets summed, for a
      backend younger than the window only.

    Ties (equal charges: no bytes yet, or none in the window) go to the fewer requests in
    flight per unit of weight, then by weighted turns (stride scheduling, as least_conn's
    ties: each pick decided by a tie moves the winner's turn on by ``1 / weight``), so
    with no bytes at all the picks still follow the weights and rotate.

    The candidates are drawn uniformly (two distinct members not excluded); the weights
    act through the charge per unit of weight, as in the latency policy. What a policy
    instance knows is kept per instance, by snapshot (``members.generation``): one per
    tier under :class:`~.tiered.Tiered`, each fed the bytes of its own backends. Bytes of
    a backend that is not eligible (ejected, draining) are not counted: it starts again
    as a newcomer when it returns. Buckets are whole seconds of the timer, so the window
    holds between 13 and 14 s of bytes.
    """

    name = "bandwidth"
    needs_time = True
    counts_bytes = True

    def __init__(self, rng: random.Random, timer: Callable[[], float],
                 load: PeakEwma | None = None) -> None:
        super().__init__(rng, timer, load)
        self._generation = -1
        self._records: dict[BackendState, _Window] = {}
        self._aligned: tuple[_Window, ...] = ()     # the records in the snapshot's order
        self._pool = _Window(0)          # the bytes of every record, bucket by bucket
        self._total_weight = 1           # the snapshot's
        self._others = 0                 # its members but one: a newcomer's others
        self._virtual_time = 0.0

    # -- what a pick weighs -------------------------------------------------------------

    def charge(self, state: BackendState) -> float | None:
        """The bytes per unit of weight a pick weighs for ``state`` now (None when it was not
        eligible in the last snapshot a pick saw): its weighed bytes over that snapshot's
        total weight, so while the weights stay, its bytes over its weight; a change of
        weights rescales every backend's charge alike. It moves the windows on, as a pick
        does: call it where the policy's picks run (under the balancer's lock; tests)."""
        record = self._records.get(state)
        if record is None:
            return None
        second = self._now()
        if record.second != second:
            record.advance(second)
        return (record.weighed_total + self._estimate(state, record, second)) / self._total_weight

    def _now(self) -> int:
        """The pool's window moved on to the timer's second (never back)."""
        second = int(self.timer())      # floor: the timer's readings are not negative
        pool = self._pool
        if second > pool.second:
            pool.advance(second)
            return second
        return pool.second

    def _estimate(self, state: BackendState, record: _Window, second: int) -> float:
        """The weighed bytes ``state``'s window does not hold: its requests in flight, and
        the part of the window before it arrived (``record`` at ``second`` already)."""
        extra = 0.0
        in_flight = state.in_flight
        if in_flight:
            if record.requests:
                extra = in_flight * record.total / record.requests
            else:
                pool = self._pool
                if pool.requests:
                    extra = in_flight * pool.total / pool.requests
            extra = extra * self._total_weight / record.weight
        arrived = record.arrived
        if arrived > second - WINDOW and self._others:      # younger than the window
            weighed = self._pool.weighed
            before = record.before
            for bucket in range(second - WINDOW + 1, arrived):
                before += weighed[bucket % WINDOW]
            extra += before / self._others
        return extra

    # -- the hooks ----------------------------------------------------------------------

    def transferred(self, state: BackendState, nbytes: int,
                    now: float | None = None) -> None:
        record = self._records.get(state)
        if record is None:
            return              # not eligible when last seen: it starts afresh on return
        second = int(self.timer() if now is None else now)
        pool = self._pool
        if second != pool.second:
            if second > pool.second:
                pool.advance(second)
            else:
                second = pool.second
        if record.second != second:
            record.advance(second)
        index = second % WINDOW
        weighed = nbytes * self._total_weight // record.weight
        pool.bytes[index] += nbytes
        pool.weighed[index] += weighed
        pool.counts[index] += 1
        pool.total += nbytes
        pool.weighed_total += weighed
        pool.requests += 1
        record.bytes[index] += nbytes
        record.weighed[index] += weighed
        record.counts[index] += 1
        record.total += nbytes
        record.weighed_total += weighed
        record.requests += 1

    def pick(self, members: Members, key: str | None, exclude: Exclude,
             now: float | None = None) -> BackendState:
        second = int(self.timer() if now is None else now)
        if members.generation != self._generation:
            self._rebuild(members, second)
        states = members.states
        count = len(states)
        if count == 1:
            return states[0]
        pool = self._pool
        if second != pool.second:
            if second > pool.second:
                pool.advance(second)
            else:
                second = pool.second
        if exclude:
            pair = self._draw_excluding(states, count, exclude)
            if len(pair) == 1:
                return pair[0]
            a, b = pair
            records = self._records
            ra, rb = records[a], records[b]
        else:
            random_ = self.rng.random
            first = int(random_() * count)
            other = int(random_() * (count - 1))
            if other >= first:
                other += 1
            a, b = states[first], states[other]
            aligned = self._aligned
            ra, rb = aligned[first], aligned[other]
        if ra.second != second:
            ra.advance(second)
        if rb.second != second:
            rb.advance(second)
        # The weighed bytes compare as they are (each already per unit of weight); the
        # estimates only for a backend with requests in flight or young.
        young = second - WINDOW
        ca: float = ra.weighed_total
        if a.in_flight or ra.arrived > young:
            ca += self._estimate(a, ra, second)
        cb: float = rb.weighed_total
        if b.in_flight or rb.arrived > young:
            cb += self._estimate(b, rb, second)
        if ca != cb:
            return a if ca < cb else b
        return self._tie(a, ra, b, rb)

    def _tie(self, a: BackendState, ra: _Window, b: BackendState, rb: _Window) -> BackendState:
        """Equal charges: fewer requests in flight per unit of weight, then the earlier
        turn (stride scheduling: the winner's turn moves on by ``1 / weight``)."""
        la, lb = a.in_flight * b.weight, b.in_flight * a.weight
        if lb < la or (la == lb and rb.turn < ra.turn):
            a, ra = b, rb
        turn = ra.turn
        if turn < self._virtual_time:
            turn = self._virtual_time
        else:
            self._virtual_time = turn
        ra.turn = turn + 1.0 / a.weight
        return a

    def _draw_excluding(self, states: Sequence[BackendState], count: int,
                        exclude: Exclude) -> tuple[BackendState, ...]:
        """Two distinct members not in ``exclude`` (or the only one left): random draws,
        which land on an excluded backend rarely (a retry excludes a few), then the list
        of those left."""
        random_ = self.rng.random
        for _ in range(_DRAWS):
            a = states[int(random_() * count)]
            if a not in exclude:
                for _ in range(_DRAWS):
                    b = states[int(random_() * count)]
                    if b is not a and b not in exclude:
                        return a, b
                break
        left = [s for s in states if s not in exclude]
        if len(left) == 1:
            return (left[0],)
        first = int(random_() * len(left))
        other = int(random_() * (len(left) - 1))
        if other >= first:
            other += 1
        return left[first], left[other]

    def _rebuild(self, members: Members, second: int) -> None:
        """Records for a new snapshot: kept for the backends still eligible (with their
        weight in it), new (arrived now) for those that joined it; the bytes of those that
        left it are taken out of the pool's window."""
        pool = self._pool
        second = max(second, pool.second)
        pool.advance(second)
        old = self._records
        eligible = members.set
        for state, record in old.items():
            if state not in eligible:
                record.advance(second)
                pool.remove(record)
        # A backend that arrives while the pool's window holds no bytes (the initial list)
        # has no part of the window to be charged for: as if it had lived it all.
        arrived = second if pool.total else second - WINDOW
        before = pool.weighed[second % WINDOW]
        records: dict[BackendState, _Window] = {}
        for state in members.states:
            kept = old.get(state)
            if kept is None:
                records[state] = _Window(second, arrived, before, state.weight)
            else:
                kept.weight = state.weight
                records[state] = kept
        self._records = records
        self._aligned = tuple(records[state] for state in members.states)
        self._total_weight = members.total_weight
        self._others = len(records) - 1
        self._generation = members.generation
