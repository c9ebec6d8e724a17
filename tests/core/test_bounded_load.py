"""Bounded-load consistent hashing for ``ip_hash`` (SEMANTICS part three; Mirrokni et al.,
Envoy's and HAProxy's ``hash_balance_factor``)."""

import math
import random
from collections import Counter

import lbmiddleware as lb
from lbmiddleware.core.policies import IPHash
from lbmiddleware.core.state import BackendState, Members

from ..conftest import FakeClock

A, B, C, D = "http://a:1", "http://b:1", "http://c:1", "http://d:1"
NOTHING: frozenset[BackendState] = frozenset()


def slots(in_flight, factor, weight, total_weight):
    """SEMANTICS' bound, spelt out: what a backend may hold after one more request."""
    return max(1, math.ceil(math.ceil((in_flight + 1) * factor / 100) * weight / total_weight))


def zipf_keys(rng, count, keys=1000, s=1.1):
    population = [f"198.51.{i // 256}.{i % 256}" for i in range(keys)]
    weights = [1 / (rank + 1) ** s for rank in range(keys)]
    return rng.choices(population, weights, k=count)


def hot_key_run(pool, *, steps=6000, hold=150, seed=7):
    """Zipf(1.1) keys, about ``hold`` requests in flight (each step starts one, and ends a
    random one once ``hold`` are open). Yields, before each pick is counted: the key, the
    requests in flight per URL, their total, the key's home, and the backend picked."""
    rng = random.Random(seed)
    held, open_by_url = [], Counter()
    for key in zipf_keys(rng, steps):
        home = pool.lookup(key)
        backend = pool.pick(key=key)
        yield key, open_by_url, len(held), home, backend
        held.append(backend)
        open_by_url[backend.url] += 1
        if len(held) > hold:
            ended = held.pop(rng.randrange(len(held)))
            open_by_url[ended.url] -= 1
            pool.report(ended)


BACKENDS20 = [lb.Backend(f"http://10.0.0.{i}:80", 1 + i % 3) for i in range(20)]
TOTAL20 = sum(b.weight for b in BACKENDS20)


def test_the_bound_holds_under_hot_keys():
    pool = lb.Balancer(BACKENDS20, policy="ip_hash", hash_balance_factor=125)
    weight = {b.url: b.weight for b in BACKENDS20}
    peak = Counter()
    for _, open_by_url, in_flight, _, backend in hot_key_run(pool):
        assert open_by_url[backend.url] + 1 <= slots(in_flight, 125, weight[backend.url],
                                                     TOTAL20)
        peak[backend.url] = max(peak[backend.url], open_by_url[backend.url] + 1)
    # Per unit of weight no backend held much more than its share of the ~150 in flight.
    assert max(peak[url] / weight[url] for url in peak) <= math.ceil(151 * 1.25) / TOTAL20 + 1


def test_without_the_bound_the_hot_keys_pile_up():
    # The same run with the bound off: the hottest key's home holds far more than its slots
    # (so the test above does test the bound).
    pool = lb.Balancer(BACKENDS20, policy="ip_hash")
    weight = {b.url: b.weight for b in BACKENDS20}
    worst = max(open_by_url[backend.url] + 1 - slots(in_flight, 125, weight[backend.url],
                                                      TOTAL20)
                for _, open_by_url, in_flight, _, backend in hot_key_run(pool))
    assert worst > 10
    assert pool.pool_stats()["hash_overflows_total"] == 0


def test_a_key_whose_home_has_room_never_moves_and_each_overflow_is_counted():
    pool = lb.Balancer(BACKENDS20, policy="ip_hash", hash_balance_factor=125)
    weight = {b.url: b.weight for b in BACKENDS20}
    moved = 0
    for _, open_by_url, in_flight, home, backend in hot_key_run(pool):
        room = open_by_url[home.url] < slots(in_flight, 125, weight[home.url], TOTAL20)
        assert (backend == home) == room
        moved += backend != home
    assert moved > 100                         # the hot keys did overflow, often
    assert pool.pool_stats()["hash_overflows_total"] == moved


def test_a_key_overflows_along_its_own_fixed_sequence():
    backends = [f"http://10.0.1.{i}:80" for i in range(8)]

    def overflow_order(seed):
        # factor 100 over 8 equal backends: each holds ceil(ceil(A + 1) / 8) at most, so
        # one key held open fills its home, then moves on, one backend after another.
        pool = lb.Balancer(backends, policy="ip_hash", hash_balance_factor=100,
                           rng=random.Random(seed))
        order = []
        for _ in range(8):
            url = pool.pick(key="203.0.113.9").url
            if url not in order:
                order.append(url)
        return order

    first = overflow_order(1)
    assert len(first) == 8 and overflow_order(2) == first
    # Its first step away from home is where it goes while its home is ejected.
    pool = lb.Balancer(backends, policy="ip_hash", rng=random.Random(3))
    assert pool.lookup("203.0.113.9").url == first[0]
    home = pool.pick(key="203.0.113.9")
    pool.report(home, ok=False)
    for _ in range(2):
        pool.report(pool.pick(key="x", exclude=[b for b in pool.backends if b != home]), ok=False)
    assert pool.lookup("203.0.113.9").url == first[1]


def test_the_overflow_skips_excluded_backends():
    backends = [f"http://10.0.1.{i}:80" for i in range(8)]
    pool = lb.Balancer(backends, policy="ip_hash", hash_balance_factor=100)
    key = "203.0.113.9"
    home = pool.pick(key=key)                  # holds its one slot
    second = pool.pick(key=key)
    pool.report(second)
    third = pool.pick(key=key, exclude=[second])
    assert third not in (home, second)
    assert pool.pool_stats()["hash_overflows_total"] == 2


def test_lookup_names_the_home_whatever_its_load():
    pool = lb.Balancer([A, B, C], policy="ip_hash", hash_balance_factor=100)
    home = pool.lookup("198.51.100.23")
    held = [pool.pick(key="198.51.100.23") for _ in range(3)]
    assert held[0] == home and home not in held[1:]
    assert pool.lookup("198.51.100.23") == home


def test_weights_scale_each_backends_slots():
    # One key held open 60 times over weights 3, 1, 1, 1 with factor 100 (no slack): each
    # backend fills to its share of the load, the weight-3 one three times the others'.
    backends = [lb.Backend(A, 3), lb.Backend(B), lb.Backend(C), lb.Backend(D)]
    pool = lb.Balancer(backends, policy="ip_hash", hash_balance_factor=100)
    held = Counter()
    for in_flight in range(60):
        backend = pool.pick(key="198.51.100.7")
        assert held[backend.url] < slots(in_flight, 100, backend.weight, 6)
        held[backend.url] += 1
    assert held == {A: 30, B: 10, C: 10, D: 10}


def test_keyless_requests_count_in_flight_too():
    pool = lb.Balancer([A, B, C], policy="ip_hash", hash_balance_factor=100)
    for _ in range(6):
        pool.pick()                            # round-robin: two on each
    home = pool.lookup("198.51.100.23")
    # A = 6: each may hold ceil(7 / 3) = 3, so the key's home takes one more.
    assert pool.pick(key="198.51.100.23") == home
    assert pool.pick(key="198.51.100.23") != home


def test_ends_free_the_slots():
    pool = lb.Balancer([A, B, C], policy="ip_hash", hash_balance_factor=100)
    key = "198.51.100.23"
    held = [pool.pick(key=key) for _ in range(9)]
    assert Counter(b.url for b in held) == {A: 3, B: 3, C: 3}
    for backend in held:
        pool.report(backend)
    assert [pool.pick(key=key) for _ in range(2)][1] != pool.lookup(key)
    assert pool.pool_stats()["hash_overflows_total"] == 7


def test_a_factor_of_zero_is_off():
    pool = lb.Balancer([A, B, C], policy="ip_hash")
    assert {pool.pick(key="198.51.100.23").url for _ in range(50)} == {
        pool.lookup("198.51.100.23").url}
    assert pool.pool_stats()["hash_overflows_total"] == 0


def test_the_setting_from_the_environment_and_the_balancer():
    for pool in (lb.Balancer([A, B, C], policy="ip_hash", hash_balance_factor=125),
                 lb.Balancer.from_env({"LB_BACKENDS": f"{A},{B},{C}", "LB_POLICY": "ip_hash",
                                       "LB_HASH_BALANCE_FACTOR": "125"})):
        assert pool.settings.hash_balance_factor == 125
        # A = 0, 1, 2, 3: slots 1, 1, 2, 2 (ceil(ceil(n x 1.25) / 3)).
        picks = [pool.pick(key="198.51.100.23") for _ in range(4)]
        home = pool.lookup("198.51.100.23")
        assert [b == home for b in picks] == [True, False, True, False]
        assert pool.pool_stats()["hash_overflows_total"] == 2


class TestTiers:
    """Under tiers each tier's instance bounds its own backends by its own load."""

    def pool(self, clock):
        backends = [lb.Backend(u) for u in (A, B, C)] + [lb.Backend(D, priority=1)]
        return lb.Balancer(backends, policy="ip_hash", hash_balance_factor=100, timer=clock,
                           max_fails=1, fail_timeout=10.0)

    def test_the_bound_counts_the_tiers_own_load(self, clock):
        pool = self.pool(clock)
        key = "198.51.100.23"
        held = [pool.pick(key=key) for _ in range(9)]
        # Tier 0 (a, b, c) takes everything; A counts its requests only: 3 each.
        assert Counter(b.url for b in held) == {A: 3, B: 3, C: 3}
        assert pool.pool_stats()["hash_overflows_total"] == 6

    def fail_each(self, pool):
        for backend in pool.backends:
            others = [b for b in pool.backends if b != backend]
            pool.report(pool.pick(key="x", exclude=others), ok=False)

    def succeed_each(self, pool):
        for backend in pool.backends:
            others = [b for b in pool.backends if b != backend]
            pool.report(pool.pick(key="y", exclude=others))

    def assert_exact(self, pool):
        """Nothing in flight: with factor 100 the key's home holds one and the next
        overflows. A count left over (+12 on the instance that picks) would let the home
        take both."""
        home = pool.lookup("198.51.100.23")
        held = [pool.pick(key="198.51.100.23") for _ in range(2)]
        assert [b == home for b in held] == [True, False]
        for backend in held:
            pool.report(backend)

    def test_counts_stay_exact_across_a_panic(self, clock):
        # Picked by tier 0's instance, ended in a panic (when the panic instance picks).
        pool = self.pool(clock)
        held = [pool.pick(key=f"k{i}") for i in range(12)]
        self.fail_each(pool)                   # every backend ejected: a panic
        for backend in held:
            pool.report(backend)
        clock.advance(10.0)
        self.succeed_each(pool)                # back, probation passed: tiers again
        self.assert_exact(pool)
        # Picked in a panic, ended under the tiers; checked in the next panic.
        self.fail_each(pool)
        held = [pool.pick(key=f"k{i}") for i in range(12)]
        clock.advance(20.0)
        self.succeed_each(pool)
        for backend in held:
            pool.report(backend)
        self.fail_each(pool)
        self.assert_exact(pool)

    def test_overflows_of_every_tier_are_summed(self, clock):
        pool = self.pool(clock)
        for _ in range(2):
            pool.pick(key="198.51.100.23")
        assert pool.pool_stats()["hash_overflows_total"] == 1


def test_the_policy_counts_only_the_backends_it_holds():
    clock = FakeClock()
    policy = IPHash(random.Random(1), clock, balance_factor=100)
    states = [BackendState(lb.Backend(url), clock()) for url in (A, B, C)]
    members = Members(tuple(states), 1)
    key = "198.51.100.23"
    policy.membership_changed(states)
    home = policy.lookup(members, key)
    home.in_flight = 1
    policy.membership_changed(states)          # counts what is already in flight: A = 1
    stranger = BackendState(lb.Backend(D), clock())
    for _ in range(2):                         # not one of its backends: not counted
        stranger.in_flight += 1
        policy.started(stranger)
    # A = 1: each may hold ceil(2 / 3) = 1, so the home is full (with A = 3 it would not be).
    assert policy.pick(members, key, NOTHING) is not home
    for _ in range(2):
        stranger.in_flight -= 1
        policy.finished(stranger)
    home.in_flight -= 1
    policy.finished(home)                      # A = 0: the home has room again
    assert policy.pick(members, key, NOTHING) is home


class Watched(BackendState):
    """A backend state that counts how often a pick looks at it: a read of its requests in
    flight, or a hash (a set's membership test)."""

    __slots__ = ("_in_flight",)
    looks = 0

    @property
    def in_flight(self):
        Watched.looks += 1
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value):
        self._in_flight = value

    def __hash__(self):
        Watched.looks += 1
        return id(self) >> 4


def pareto_keys(rng, count):
    """The issue's hot keys: ``k<int(Pareto(1.1))>``, so ``k1`` is 53% of the requests."""
    return [f"k{int(rng.paretovariate(1.1))}" for _ in range(count)]


class Driver:
    """The policy driven as the balancer drives it: a pick starts a request, an end
    finishes it; every policy in ``policies`` hears both (twins kept in step)."""

    def __init__(self, states, *policies, generation=1):
        self.states = states
        self.policies = policies
        self.members = Members(tuple(states), generation)
        for policy in policies:
            policy.membership_changed(states)
        self.held = []

    def start(self, state):
        state.in_flight += 1
        for policy in self.policies:
            policy.started(state)
        self.held.append(state)

    def end(self, index=0):
        state = self.held.pop(index)
        state.in_flight -= 1
        for policy in self.policies:
            policy.finished(state)


def test_a_hot_key_costs_a_pick_a_few_looks_not_a_list_of_the_members():
    # 1,000 backends, 1,000 requests in flight, c = 125%: each backend may hold 2. The hot
    # key (53% of the requests) fills its own sequence ~290 backends deep, so past its 64
    # probes; the pick then listed all 1,000 members (30.7 us against 3.0 us unbounded).
    clock = FakeClock()
    states = [Watched(lb.Backend(f"http://10.0.{i // 250}.{i % 250}:8080"), clock())
              for i in range(1000)]
    policy = IPHash(random.Random(1), clock, balance_factor=125)
    driver = Driver(states, policy)
    for i in range(1000):
        driver.start(policy.pick(driver.members, f"warm{i}", NOTHING))
    keys = pareto_keys(random.Random(2), 8000)
    for key in keys[:4000]:                    # the hot key's sequence fills
        driver.end()
        driver.start(policy.pick(driver.members, key, NOTHING))
    Watched.looks = 0
    for key in keys[4000:]:
        driver.end()
        driver.start(policy.pick(driver.members, key, NOTHING))
    looks = Watched.looks / 4000
    hot = {state for state, key in zip(driver.held, keys[-1000:], strict=True) if key == "k1"}
    assert len(hot) > 200                      # k1 is spread over its sequence, deep
    assert looks < 15, f"{looks:.1f} looks per pick (and its end)"


def test_past_its_probes_a_key_still_takes_the_first_backend_with_room_on_its_sequence():
    # Twins: one picks as it does, keeping its hot keys' walks (four at most here, so they
    # are also dropped and walked again); the other is asked with a stranger excluded,
    # which walks the key's sequence from its home every time. Requests end in random
    # order and the load swings, so slots open behind a hot key's deepest backend (an end,
    # or more slots as the load grows) and close again; weights 1-3 move each backend's
    # slot count at loads of its own; then a new snapshot leaves a tenth of the backends
    # out (ejected: homes and sequences step over them). The picks must agree.
    clock = FakeClock()
    rng = random.Random(5)
    states = [BackendState(lb.Backend(f"http://10.0.1.{i}:80", 1 + i % 3), clock())
              for i in range(200)]
    policy = IPHash(random.Random(1), clock, balance_factor=100)
    policy.max_walks = 4
    reference = IPHash(random.Random(1), clock, balance_factor=100)
    driver = Driver(states, policy, reference)
    stranger = frozenset({BackendState(lb.Backend("http://192.0.2.1:80"), clock())})
    keys = pareto_keys(rng, 12000) + [f"198.51.100.{i % 50}" for i in range(2000)]
    rng.shuffle(keys)
    moved = 0
    for step, key in enumerate(keys):
        if step == 7000:
            driver.members = Members(tuple(states[i] for i in range(200) if i % 10), 2)
        target = 250 + 200 * math.sin(step / 700)
        while driver.held and (len(driver.held) > target or rng.random() < 0.3):
            driver.end(rng.randrange(len(driver.held)))
        expected = reference.pick(driver.members, key, stranger)
        picked = policy.pick(driver.members, key, NOTHING)
        assert picked is expected, (step, key)
        moved += policy.lookup(driver.members, key) is not picked
        driver.start(picked)
    assert moved > 4000
    assert policy.overflows == moved
    # The walks dropped left nothing behind on their backends (an end looks through those).
    kept = sum(len(walk.order) - 1 for walk in policy._walks.values())
    assert sum(len(entries) for entries in policy._watchers.values()) == kept


def test_a_retry_finding_only_full_backends_takes_the_least_loaded():
    # c = 100 over three backends with 5 requests in flight: each may hold 2. a holds 3,
    # b 2, c none but the retry excludes it: b, the least loaded of the two left.
    clock = FakeClock()
    states = [BackendState(lb.Backend(url), clock()) for url in (A, B, C)]
    a, b, c = states
    policy = IPHash(random.Random(1), clock, balance_factor=100)
    driver = Driver(states, policy)
    for state in (a, a, a, b, b):
        driver.start(state)
    for key in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        assert policy.pick(driver.members, key, frozenset({c})) is b
