"""One contract every policy keeps, then what each policy does on its own."""

import random
from collections import Counter

import pytest

import lbmiddleware as lb

A, B, C = "http://a:1", "http://b:1", "http://c:1"
WEIGHTED = [lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)]


def make(policy, backends=WEIGHTED, seed=1, **options):
    return lb.Balancer(backends, policy=policy, rng=random.Random(seed), **options)


def eject(pool, url, times=3):
    """Fail ``url`` until it is ejected (picks only it, by excluding the others)."""
    others = [b for b in pool.backends if b.url != url]
    for _ in range(times):
        backend = pool.pick(key="eject", exclude=others)
        assert backend.url == url
        pool.report(backend, ok=False)
    assert {s["url"]: s["state"] for s in pool.stats()}[url] == "ejected"


class PolicyContract:
    """Run against every policy (cachetools-style shared contract tests)."""

    policy: str

    def key(self, i):
        return f"198.51.100.{i % 256}/{i}" if self.policy == "ip_hash" else None

    def test_shares_follow_weights_under_load(self):
        # Hold every pick open, as concurrent requests do: in-flight shares follow weights.
        pool = make(self.policy)
        held = Counter(pool.pick(key=self.key(i)).url for i in range(3000))
        assert held[A] / 3000 == pytest.approx(0.5, abs=0.05)
        assert held[B] / 3000 == pytest.approx(0.3, abs=0.05)
        assert held[C] / 3000 == pytest.approx(0.2, abs=0.05)

    def test_equal_backends_share_one_at_a_time_traffic(self, clock):
        pool = make(self.policy, [A, B, C], timer=clock)
        seen = Counter()
        for i in range(600):
            backend = pool.pick(key=self.key(i))
            seen[backend.url] += 1
            clock.advance(0.01)
            pool.report(backend, ok=True, latency=0.01)
        assert set(seen) == {A, B, C}
        assert min(seen.values()) > 100

    def test_exclude_is_never_picked(self):
        pool = make(self.policy)
        for i in range(300):
            backend = pool.pick(key=self.key(i), exclude=[lb.Backend(A, 5)])
            assert backend.url != A
            pool.report(backend)

    def test_exclude_everything_raises(self):
        pool = make(self.policy)
        with pytest.raises(lb.NoHealthyBackend, match="every backend was tried"):
            pool.pick(key=self.key(0), exclude=list(pool.backends))

    def test_same_seed_same_sequence(self):
        def run(seed):
            pool = make(self.policy, seed=seed)
            out = []
            for i in range(200):
                backend = pool.pick(key=self.key(i))
                out.append(backend.url)
                pool.report(backend, ok=True, latency=0.01 * (1 + i % 3))
            return out
        assert run(3) == run(3)

    def test_ejected_backend_is_skipped(self, clock):
        pool = make(self.policy, timer=clock)
        eject(pool, A)
        for i in range(300):
            backend = pool.pick(key=self.key(i))
            assert backend.url != A
            pool.report(backend)

    def test_in_flight_returns_to_zero(self):
        pool = make(self.policy)
        picked = [pool.pick(key=self.key(i)) for i in range(50)]
        assert sum(s["in_flight"] for s in pool.stats()) == 50
        for backend in picked:
            pool.report(backend)
        assert all(s["in_flight"] == 0 for s in pool.stats())
        assert sum(s["requests"] for s in pool.stats()) == 50


class TestRoundRobin(PolicyContract):
    policy = "round_robin"

    def test_nginx_smooth_sequence(self):
        pool = make("round_robin")
        names = "".join(pool.pick().url[7] for _ in range(30))
        assert names == "abcaabacba" * 3

    def test_every_window_exact_and_smooth(self):
        weights = [7, 4, 2, 1]
        pool = make("round_robin", [lb.Backend(f"http://h{i}:1", w) for i, w in enumerate(weights)])
        total = sum(weights)
        picks = [pool.pick().url for _ in range(total * 20)]
        for start in range(0, len(picks) - total):
            window = Counter(picks[start:start + total])
            for i, weight in enumerate(weights):
                assert abs(window[f"http://h{i}:1"] - weight) <= 1
        for start in range(0, len(picks), total):
            window = Counter(picks[start:start + total])
            assert [window[f"http://h{i}:1"] for i in range(4)] == weights

    def test_equal_weights_go_in_listed_order(self):
        pool = make("round_robin", [f"http://h{i}:1" for i in range(5)])
        assert [pool.pick().url[8] for _ in range(10)] == list("0123401234")

    def test_alias_weighted(self):
        assert make("weighted").policy == "round_robin"

    def test_same_sequence_as_reference_nginx_algorithm(self):
        weights = [3, 1, 4, 1, 5, 9, 2, 6]
        pool = make("round_robin", [lb.Backend(f"http://h{i}:1", w) for i, w in enumerate(weights)])
        current = [0] * len(weights)
        for _ in range(200):
            for i, weight in enumerate(weights):
                current[i] += weight
            best = max(range(len(weights)), key=lambda i: (current[i], -i))
            current[best] -= sum(weights)
            assert pool.pick().url == f"http://h{best}:1"

    def test_retry_pick_skips_tried(self):
        pool = make("round_robin", [lb.Backend(A, 100), lb.Backend(B, 1)])
        assert pool.pick(exclude=[lb.Backend(A)]).url == B


class TestRandom(PolicyContract):
    policy = "random"

    def test_weighted_shares_without_load(self):
        pool = make("random")
        seen = Counter()
        for _ in range(20000):
            with pool.attempt() as backend:
                seen[backend.url] += 1
        assert seen[A] / 20000 == pytest.approx(0.5, abs=0.02)
        assert seen[C] / 20000 == pytest.approx(0.2, abs=0.02)


class TestIPHash(PolicyContract):
    policy = "ip_hash"

    def test_same_key_same_backend(self):
        pool = make("ip_hash")
        for i in range(50):
            key = f"203.0.113.{i}"
            first = pool.pick(key=key)
            pool.report(first)
            for _ in range(5):
                again = pool.pick(key=key)
                pool.report(again)
                assert again == first

    def test_keyless_requests_go_round_robin(self):
        pool = make("ip_hash")
        assert "".join(pool.pick().url[7] for _ in range(10)) == "abcaabacba"


class TestLatency(PolicyContract):
    policy = "latency"

    def test_prefers_the_fast_backend(self, clock):
        pool = make("latency", [A, B, C], timer=clock)
        latency = {A: 0.010, B: 0.200, C: 0.050}
        seen = Counter()
        for _ in range(3000):
            backend = pool.pick()
            seen[backend.url] += 1
            clock.advance(0.001)
            pool.report(backend, ok=True, latency=latency[backend.url])
        assert seen[A] > seen[C] > seen[B]
        assert seen[A] > 0.6 * 3000

    def test_failure_counts_as_slow(self, clock):
        pool = make("latency", [A, B], timer=clock, max_fails=0)
        # A fails fast, B answers in 50 ms: the fast failures must not attract traffic.
        seen = Counter()
        for _ in range(1000):
            backend = pool.pick()
            seen[backend.url] += 1
            clock.advance(0.001)
            if backend.url == A:
                pool.report(backend, ok=False, latency=0.001)
            else:
                pool.report(backend, ok=True, latency=0.05)
        assert seen[A] < 0.05 * 1000

    def test_in_flight_raises_cost(self, clock):
        pool = make("latency", [A, B], timer=clock)
        for url in (A, B):
            backend = pool.pick(exclude=[lb.Backend(u) for u in (A, B) if u != url])
            pool.report(backend, ok=True, latency=0.010)
        held = Counter(pool.pick().url for _ in range(100))
        assert abs(held[A] - held[B]) <= 2

    def test_peak_is_taken_at_once_and_decays(self, clock):
        pool = make("latency", [A], timer=clock)
        with pool.attempt():
            pass
        backend = pool.pick()
        pool.report(backend, latency=0.1)
        assert pool.stats()[0]["latency_estimate"] == pytest.approx(0.1)
        backend = pool.pick()
        pool.report(backend, latency=2.0)
        assert pool.stats()[0]["latency_estimate"] == pytest.approx(2.0)      # peak at once
        clock.advance(10.0)                                                     # one tau
        assert pool.stats()[0]["latency_estimate"] == pytest.approx(2.0 / 2.718281828,
                                                                    rel=1e-6)


class TestLeastConn(PolicyContract):
    policy = "least_conn"

    def test_picks_fewest_in_flight(self):
        pool = make("least_conn", [A, B, C])
        held = [pool.pick() for _ in range(3)]
        assert sorted(b.url for b in held) == [A, B, C]
        pool.report(held[1])             # one of them frees a slot
        assert pool.pick() == held[1]

    def test_per_unit_of_weight(self):
        pool = make("least_conn")
        held = Counter(pool.pick().url for _ in range(100))
        assert (held[A], held[B], held[C]) == (50, 30, 20)

    def test_ties_rotate_by_weight(self):
        pool = make("least_conn")
        seen = Counter()
        for _ in range(1000):
            with pool.attempt() as backend:
                seen[backend.url] += 1
        assert (seen[A], seen[B], seen[C]) == (500, 300, 200)
