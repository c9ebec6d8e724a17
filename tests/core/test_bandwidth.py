"""The ``bandwidth`` policy (SEMANTICS part three; NetScaler LEASTBANDWIDTH): bytes per unit of
weight over a 14 s window, power of two choices, in-flight requests and newcomers estimated."""

import random
from collections import Counter

import pytest

import lbmiddleware as lb
from lbmiddleware.core.policies.bandwidth import WINDOW, LeastBandwidth
from lbmiddleware.core.state import BackendState, Members

from ..conftest import FakeClock
from .test_policies import PolicyContract

A, B, C, D = "http://a:1", "http://b:1", "http://c:1", "http://d:1"
NOTHING: frozenset[BackendState] = frozenset()


class TestBandwidthContract(PolicyContract):
    policy = "bandwidth"


class Harness:
    """The policy driven as the balancer drives it: a pick counts the request in flight,
    its end uncounts it and then reports its bytes."""

    def __init__(self, *backends, seed=1, clock=None):
        self.clock = clock or FakeClock()
        self.policy = LeastBandwidth(random.Random(seed), self.clock)
        self.states = {}
        self.generation = 0
        self.members = None
        self.set_members(*backends)

    def set_members(self, *backends):
        """A new snapshot: ``backends`` are URLs or (URL, weight); states are kept by URL."""
        states = []
        for spec in backends:
            url, weight = (spec, 1) if isinstance(spec, str) else spec
            if url not in self.states:
                self.states[url] = BackendState(lb.Backend(url, weight), self.clock())
            states.append(self.states[url])
        self.generation += 1
        self.members = Members(tuple(states), self.generation)

    def look(self):
        """A pick that starts nothing: the policy takes the current snapshot."""
        return self.policy.pick(self.members, None, NOTHING)

    def start(self, exclude=NOTHING):
        state = self.policy.pick(self.members, None, exclude)
        state.in_flight += 1
        self.policy.started(state)
        return state

    def end(self, state, nbytes):
        state.in_flight -= 1
        self.policy.finished(state)
        if nbytes:
            self.policy.transferred(state, nbytes)

    def serve(self, requests, sizes, interval=0.01):
        """``requests`` one at a time, ``interval`` apart; ``sizes``: URL -> bytes each."""
        picks, moved = Counter(), Counter()
        for _ in range(requests):
            state = self.start()
            url = state.backend.url
            self.clock.advance(interval)
            self.end(state, sizes[url])
            picks[url] += 1
            moved[url] += sizes[url]
        return picks, moved

    def charge(self, url):
        return self.policy.charge(self.states[url])


def test_a_backend_moving_big_responses_gets_fewer_picks_in_proportion(clock):
    # Through the real balancer: a's responses are 10x b's and c's; the bytes even out,
    # so a gets a tenth of the picks of each of the others.
    pool = lb.Balancer([A, B, C], policy="bandwidth", rng=random.Random(1), timer=clock)
    sizes = {A: 100_000, B: 10_000, C: 10_000}
    picks, moved = Counter(), Counter()
    for _ in range(6000):
        backend = pool.pick()
        clock.advance(0.01)
        pool.report(backend, True, 0.01, bytes_sent=200, bytes_received=sizes[backend.url] - 200)
        picks[backend.url] += 1
        moved[backend.url] += sizes[backend.url]
    assert picks[B] / picks[A] == pytest.approx(10, rel=0.1)
    assert picks[C] / picks[A] == pytest.approx(10, rel=0.1)
    mean = sum(moved.values()) / 3
    assert all(abs(moved[url] - mean) / mean < 0.03 for url in (A, B, C)), moved


def test_bytes_sent_count_as_well_as_bytes_received(clock):
    pool = lb.Balancer([A, B], policy="bandwidth", rng=random.Random(2), timer=clock)
    picks = Counter()
    for _ in range(2000):
        backend = pool.pick()
        clock.advance(0.01)
        # Uploads to a are 4x the downloads from b.
        if backend.url == A:
            pool.report(backend, True, 0.01, bytes_sent=40_000)
        else:
            pool.report(backend, True, 0.01, bytes_received=10_000)
        picks[backend.url] += 1
    assert picks[B] / picks[A] == pytest.approx(4, rel=0.1)


def test_weights_take_bytes_in_proportion():
    # Equal responses: bytes per unit of weight even out, so picks follow the weights.
    harness = Harness((A, 3), (B, 1), (C, 2))
    picks, _ = harness.serve(6000, {A: 5_000, B: 5_000, C: 5_000})
    assert picks[A] / 6000 == pytest.approx(3 / 6, abs=0.02)
    assert picks[B] / 6000 == pytest.approx(1 / 6, abs=0.02)
    assert picks[C] / 6000 == pytest.approx(2 / 6, abs=0.02)


def test_the_charge_is_bytes_in_the_window_per_unit_of_weight():
    harness = Harness((A, 2), B)
    harness.look()                             # the policy sees them from now on
    harness.clock.advance(WINDOW)              # both have lived a whole window
    a, b = harness.states[A], harness.states[B]
    harness.policy.transferred(a, 8_000)
    harness.policy.transferred(b, 3_000)
    assert harness.charge(A) == 4_000.0
    assert harness.charge(B) == 3_000.0


def test_bytes_leave_the_window_after_14_seconds():
    harness = Harness(A, B)
    harness.look()
    harness.clock.advance(WINDOW)
    a, b = harness.states[A], harness.states[B]
    harness.policy.transferred(a, 50_000)      # at second 1014
    harness.clock.advance(1.0)
    harness.policy.transferred(b, 7_000)       # at second 1015
    harness.clock.advance(WINDOW - 2)          # 1027.x: both still in the window
    assert (harness.charge(A), harness.charge(B)) == (50_000.0, 7_000.0)
    harness.clock.advance(1.0)                 # 1028: a's second has left, b's not yet
    assert (harness.charge(A), harness.charge(B)) == (0.0, 7_000.0)
    harness.clock.advance(1.0)
    assert (harness.charge(A), harness.charge(B)) == (0.0, 0.0)
    # Long after, every bucket is empty however long the gap.
    harness.policy.transferred(a, 1_000)
    harness.clock.advance(1_000.0)
    assert harness.charge(A) == 0.0


def test_a_big_transfer_keeps_a_backend_out_until_it_leaves_the_window():
    harness = Harness(A, B, C)
    harness.look()
    harness.clock.advance(WINDOW)
    harness.policy.transferred(harness.states[A], 10_000_000)       # at second 1014
    sizes = {A: 1_000, B: 1_000, C: 1_000}
    picks, _ = harness.serve(1390, sizes)      # up to 1027.9: b and c move 0.7 MB each
    assert picks[A] == 0
    harness.clock.advance(0.1)                 # 1028: the 10 MB have left the window
    picks, _ = harness.serve(200, sizes)
    # a's window is empty: it wins every pair it is drawn in (2 in 3) while it catches up.
    assert picks[A] == pytest.approx(200 * 2 / 3, abs=15)
    harness.serve(2000, sizes)
    picks, _ = harness.serve(1500, sizes)
    assert picks[A] / 1500 == pytest.approx(1 / 3, abs=0.03)


def test_a_newcomer_is_charged_the_mean_neither_starved_nor_stampeded():
    harness = Harness(A, B, C)
    harness.serve(3000, {A: 20_000, B: 20_000, C: 20_000})    # 30 s: all mature
    harness.set_members(A, B, C, D)
    harness.look()                             # d joins
    # (The charges are compared at one moment: each is per unit of the weights of now.)
    mean = sum(harness.charge(url) for url in (A, B, C)) / 3
    assert harness.charge(D) == pytest.approx(mean, rel=0.01)
    sizes = {A: 20_000, B: 20_000, C: 20_000, D: 20_000}
    first_second, _ = harness.serve(100, sizes)
    assert 10 <= first_second[D] <= 40         # a quarter is 25: no stampede, no starvation
    rest, _ = harness.serve(1300, sizes)       # the rest of its first window
    assert rest[D] / 1300 == pytest.approx(0.25, abs=0.04)
    later, _ = harness.serve(2000, sizes)
    assert later[D] / 2000 == pytest.approx(0.25, abs=0.03)


def test_a_newcomer_blends_its_own_bytes_into_the_mean_as_it_lives():
    harness = Harness(A, B)
    harness.serve(2000, {A: 10_000, B: 10_000})                # 20 s
    harness.set_members(A, B, C)
    c = harness.states[C]
    harness.look()
    mean = (harness.charge(A) + harness.charge(B)) / 2
    assert harness.charge(C) == pytest.approx(mean, rel=0.01)
    harness.clock.advance(WINDOW / 2)          # half its window lived, no bytes of its own
    rate_part = harness.charge(C)
    # What a and b moved before it came, of what is still in the window: their charges now.
    assert rate_part == pytest.approx((harness.charge(A) + harness.charge(B)) / 2, rel=0.01)
    assert rate_part < mean / 1.5
    harness.policy.transferred(c, 30_000)
    assert harness.charge(C) == pytest.approx(rate_part + 30_000)
    harness.clock.advance(WINDOW / 2)          # a full window: its own bytes only
    assert harness.charge(C) == 30_000.0


def test_a_returning_backend_starts_again_as_a_newcomer(clock):
    pool = lb.Balancer([A, B, C], policy="bandwidth", rng=random.Random(3), timer=clock,
                       max_fails=1, fail_timeout=10.0)

    def serve(requests):
        picks = Counter()
        for _ in range(requests):
            backend = pool.pick()
            clock.advance(0.01)
            pool.report(backend, True, 0.01, bytes_received=10_000)
            picks[backend.url] += 1
        return picks

    serve(2000)
    pool.report(pool.pick(exclude=[B, C]), ok=False)      # a is ejected for 10 s
    assert A not in serve(1000)                # b and c take the traffic
    clock.advance(0.1)
    # a is back; its window emptied while it was out. Charged its empty window it would win
    # every pair it is drawn in (2 in 3) for seconds; charged the mean it takes a third.
    assert serve(300)[A] / 300 == pytest.approx(1 / 3, abs=0.04)


def test_requests_in_flight_are_charged_the_backends_mean_bytes():
    harness = Harness(A, B)
    harness.look()
    harness.clock.advance(WINDOW)
    a, b = harness.states[A], harness.states[B]
    for size in (10_000, 30_000):
        harness.policy.transferred(a, size)    # a's mean: 20,000 per attempt
    harness.policy.transferred(b, 40_000)
    assert harness.charge(A) == harness.charge(B) == 40_000.0
    a.in_flight = 3                            # three responses still streaming
    assert harness.charge(A) == 40_000.0 + 3 * 20_000
    picks = Counter(harness.policy.pick(harness.members, None, NOTHING).backend.url
                    for _ in range(50))
    assert picks == {B: 50}


def test_in_flight_on_a_backend_without_bytes_is_charged_the_pools_mean():
    harness = Harness(A, B, C)
    harness.look()
    harness.clock.advance(WINDOW)
    a, b, c = (harness.states[u] for u in (A, B, C))
    harness.policy.transferred(a, 6_000)
    harness.policy.transferred(b, 2_000)       # pool: 8,000 in 2 attempts
    c.in_flight = 2
    assert harness.charge(C) == 2 * 4_000


def test_a_burst_of_big_downloads_spreads_before_any_ends():
    # All picks held open (the responses stream): each one makes its backend cost its mean
    # bytes more, so the burst spreads instead of piling onto the least charged backend
    # (which would win every pair it is drawn in: half of them).
    harness = Harness(A, B, C, D)
    sizes = {A: 50_000, B: 60_000, C: 40_000, D: 50_000}
    harness.serve(2000, sizes)
    held = Counter(harness.start().backend.url for _ in range(400))
    assert max(held.values()) < 130, held
    assert held[C] > held[A] > held[B], held              # fewer of the bigger responses
    charges = [harness.charge(url) for url in (A, B, C, D)]
    assert max(charges) - min(charges) <= 2 * 60_000, charges


def test_ties_rotate_by_weight_when_no_bytes_move():
    # No bytes at all (HEAD requests, say): every charge is 0 and nothing is in flight
    # between picks; ties go by weighted turns.
    harness = Harness((A, 2), B)
    picks, _ = harness.serve(300, {A: 0, B: 0})
    assert abs(picks[A] - 200) <= 1 and abs(picks[B] - 100) <= 1


def test_ties_go_to_fewer_in_flight_per_unit_of_weight():
    harness = Harness((A, 2), B, C)
    held = Counter(harness.start().backend.url for _ in range(400))
    assert abs(held[A] - 200) <= 3 and abs(held[B] - 100) <= 3 and abs(held[C] - 100) <= 3


def test_exclude_is_never_picked_and_the_last_one_left_is():
    harness = Harness(*(f"http://h{i}:1" for i in range(10)))
    harness.serve(500, {f"http://h{i}:1": 1_000 * (i + 1) for i in range(10)})
    excluded = frozenset(harness.states[f"http://h{i}:1"] for i in range(4))
    for _ in range(500):
        assert harness.policy.pick(harness.members, None, excluded) not in excluded
    all_but_one = frozenset(s for url, s in harness.states.items() if url != "http://h7:1")
    for _ in range(20):
        assert harness.policy.pick(harness.members, None, all_but_one).backend.url == (
            "http://h7:1")


def test_exclude_still_picks_by_charge():
    harness = Harness(A, B, C)
    harness.look()
    harness.clock.advance(WINDOW)
    harness.policy.transferred(harness.states[B], 1_000_000)
    excluded = frozenset({harness.states[A]})
    picks = Counter(harness.policy.pick(harness.members, None, excluded).backend.url
                    for _ in range(50))
    assert picks == {C: 50}


def test_one_clock_read_per_pick():
    reads = []
    clock = FakeClock()

    def timer():
        reads.append(clock.now)
        return clock.now

    harness = Harness(*(f"http://h{i}:1" for i in range(1000)), clock=clock)
    harness.policy.timer = timer
    harness.start()
    del reads[:]
    for _ in range(100):
        harness.policy.pick(harness.members, None, NOTHING)
        clock.advance(0.3)
    assert len(reads) == 100


def test_bytes_of_a_backend_out_of_the_snapshot_are_not_counted():
    # a leaves (ejected, draining) with a request in flight whose 5 MB end while it is out:
    # they count neither for it nor in the pool's mean, and it comes back as a newcomer.
    harness = Harness(A, B, C)
    harness.serve(2000, {A: 10_000, B: 10_000, C: 10_000})
    a = harness.states[A]
    harness.set_members(B, C)
    harness.look()
    assert harness.policy.charge(a) is None
    harness.policy.transferred(a, 5_000_000)
    two = harness.charge(B) + harness.charge(C)
    harness.set_members(A, B, C)
    harness.look()
    mean = (harness.charge(B) + harness.charge(C)) / 2
    assert harness.charge(A) == pytest.approx(mean, rel=0.01)
    # b's and c's bytes are what they were, now per unit of three backends' weight, not two.
    assert mean * 2 == pytest.approx(two * 2 / 3, rel=1e-12)


def test_under_tiers_each_tier_balances_its_own_bytes(clock):
    primaries = [lb.Backend(u) for u in (A, B, C)]
    pool = lb.Balancer([*primaries, lb.Backend(D, priority=1)], policy="bandwidth",
                       rng=random.Random(4), timer=clock)
    sizes = {A: 100_000, B: 10_000, C: 10_000, D: 10_000}
    picks = Counter()
    for _ in range(4000):
        backend = pool.pick()
        clock.advance(0.01)
        pool.report(backend, True, 0.01, bytes_received=sizes[backend.url])
        picks[backend.url] += 1
    assert picks[D] == 0                       # the backup idles
    assert picks[B] / picks[A] == pytest.approx(10, rel=0.15)


def test_under_tiers_the_panic_instance_keeps_counting_bytes(clock):
    # The instance that picks in a panic hears the bytes of the tiers' picks too: in the
    # next panic it knows a's responses are big.
    primaries = [lb.Backend(u) for u in (A, B, C)]
    pool = lb.Balancer([*primaries, lb.Backend(D, priority=1)], policy="bandwidth",
                       rng=random.Random(5), timer=clock, max_fails=1, fail_timeout=10.0)

    def fail_each():
        for backend in pool.backends:
            pool.report(pool.pick(exclude=[b for b in pool.backends if b != backend]), ok=False)

    fail_each()                                # a first panic: its instance picks once
    first = pool.pick()
    clock.advance(10.0)
    for backend in pool.backends:              # back: the tiers pick again
        pool.report(pool.pick(exclude=[b for b in pool.backends if b != backend]))
    pool.report(first)
    sizes = {A: 100_000, B: 10_000, C: 10_000, D: 10_000}
    for _ in range(3000):
        backend = pool.pick()
        clock.advance(0.01)
        pool.report(backend, True, 0.01, bytes_received=sizes[backend.url])
    fail_each()                                # the next panic
    # Held picks (streaming responses) are charged each backend's mean: a's is 10x.
    held = Counter(pool.pick().url for _ in range(200))
    assert held[A] * 5 < held[B], held


def test_a_weight_change_keeps_the_bytes_moved_at_the_old_weight():
    # a and b (weight 1) moved the same bytes; then a's weight becomes 2 (a slow start's
    # step, say). What a moved at weight 1 was its fair share then: it must not look cheap
    # now (10,000 over 2 against b's 10,000 over 1), or a wins every pair until it has
    # "caught up" and takes far more than two thirds of the picks.
    harness = Harness(A, B)
    harness.look()
    harness.clock.advance(WINDOW)
    a, b = harness.states[A], harness.states[B]
    harness.policy.transferred(a, 10_000)
    harness.policy.transferred(b, 10_000)
    a.weight = 2
    harness.set_members(A, B)
    harness.look()
    assert harness.charge(A) == harness.charge(B)
    picks, _ = harness.serve(300, {A: 1_000, B: 1_000})
    assert picks[A] / 300 == pytest.approx(2 / 3, abs=0.03)


def _one_second(pool, clock, requests=1000, size=1000):
    """A second of ``requests`` requests of ``size`` bytes, one at a time: each URL's share."""
    picks = Counter()
    for _ in range(requests):
        clock.advance(1.0 / requests)
        backend = pool.pick()
        picks[backend.url] += 1
        pool.report(backend, True, 0.01, bytes_received=size)
    return {url: count / requests for url, count in picks.items()}


def test_a_slow_starting_newcomer_follows_its_effective_weight(clock):
    # Three backends move bytes evenly; d joins with a 10 s slow start. Its share of each
    # second's picks follows its effective weight, ramp / (3 + ramp), and is a quarter from
    # the ramp's end on. Bytes divided by the weight of the moment a pick reads them gave
    # it 27% at ramp 0.5 (effective share 14%) and 44% at the ramp's end: what it moved at
    # a small weight looked cheap once the weight had grown.
    urls = [A, B, C]
    pool = lb.Balancer(urls, policy="bandwidth", timer=clock, rng=random.Random(3),
                       slow_start=10)
    for _ in range(30):
        _one_second(pool, clock)
    pool.update([*urls, D])
    seen = []
    for _ in range(16):
        share = _one_second(pool, clock).get(D, 0.0)
        # The weight of the second: the ramp steps at its first pick.
        ramp = next(row for row in pool.stats() if row["url"] == D)["effective_weight"]
        seen.append((round(share, 3), round(ramp / (3 + ramp), 3)))
    assert all(abs(share - want) <= 0.01 for share, want in seen), seen
    assert seen[-1][1] == 0.25
