"""Balancer as a whole: membership changes, stats, attempt, release, concurrency."""

import asyncio
import collections
import random
import threading
from collections import Counter

import pytest

import lbmiddleware as lb

A, B, C, D = "http://a:1", "http://b:1", "http://c:1", "http://d:1"


def by_url(pool):
    return {s["url"]: s for s in pool.stats()}


class TestUpdate:
    def test_staying_backends_keep_live_state(self, clock):
        pool = lb.Balancer([A, B, C], policy="latency", timer=clock, rng=random.Random(0))
        for url in (A, B):
            backend = pool.pick(exclude=[lb.Backend(u) for u in (A, B, C) if u != url])
            pool.report(backend, ok=False)
        held = pool.pick(exclude=[lb.Backend(B), lb.Backend(C)])
        before = by_url(pool)[A]
        pool.update([lb.Backend(A, 4), C, D])
        after = by_url(pool)
        assert list(after) == [A, C, D]
        assert after[A]["weight"] == 4
        for field in ("in_flight", "requests", "failures", "consecutive_failures", "latency"):
            assert after[A][field] == before[field]
        assert after[D]["requests"] == 0
        pool.report(held)
        assert by_url(pool)[A]["in_flight"] == 0

    def test_removed_backend_finishes_in_flight_and_is_not_picked(self):
        pool = lb.Balancer([A, B], rng=random.Random(0))
        held = [pool.pick() for _ in range(4)]
        pool.update([B])
        assert {pool.pick().url for _ in range(10)} == {B}
        for backend in held:
            pool.report(backend, ok=False)      # late reports of the removed one: no error
        assert by_url(pool)[B]["in_flight"] == 10

    def test_removed_then_readded_while_in_flight_keeps_counts(self):
        pool = lb.Balancer([A, B])
        held = pool.pick()
        assert held.url == A
        pool.update([B])
        pool.update([A, B])
        assert by_url(pool)[A]["in_flight"] == 1
        pool.report(held)
        assert by_url(pool)[A]["in_flight"] == 0

    def test_empty_update_then_no_healthy_backend(self):
        pool = lb.Balancer([A])
        pool.update([])
        with pytest.raises(lb.NoHealthyBackend, match="no backends"):
            pool.pick()
        pool.update([B])
        assert pool.pick().url == B

    def test_update_rejects_bad_input(self):
        pool = lb.Balancer([A])
        with pytest.raises(lb.ConfigError, match="listed twice"):
            pool.update([A, "http://A:1/"])
        assert [b.url for b in pool.backends] == [A]

    def test_update_while_other_threads_pick(self):
        pool = lb.Balancer([A, B, C], policy="least_conn")
        stop = threading.Event()
        errors = []

        def worker():
            try:
                while not stop.is_set():
                    backend = pool.pick()
                    pool.report(backend)
            except Exception as exc:   # pragma: no cover - recorded for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for i in range(200):
            pool.update([A, B, C] if i % 2 else [B, D])
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        assert all(s["in_flight"] == 0 for s in pool.stats())


class TestAttemptAndStats:
    def test_stats_fields(self, clock):
        pool = lb.Balancer([A], timer=clock)
        backend = pool.pick()
        pool.report(backend, ok=True, latency=0.25)
        (row,) = pool.stats()
        buckets = [0] * 7 + [1] * 6                 # 0.25 s: in le=0.25 and every bound above
        assert row == {"url": A, "weight": 1, "priority": 0, "effective_weight": 1,
                       "source": None, "state": "healthy", "state_age": 0.0,
                       "ejected_until": None, "ejection_left": None, "drain_left": None,
                       "ramp": None, "in_flight": 0, "requests": 1, "failures": 0,
                       "consecutive_failures": 0, "ejections": 0, "bytes_sent": 0,
                       "bytes_received": 0, "latency": 0.25, "latency_estimate": 0.25,
                       "latency_sum": 0.25, "latency_count": 1, "latency_buckets": buckets,
                       "health_check": None}

    def test_attempt_reports_latency_from_the_timer(self, clock):
        pool = lb.Balancer([A], timer=clock)
        with pool.attempt() as backend:
            assert backend.url == A
            assert by_url(pool)[A]["in_flight"] == 1
            clock.advance(0.5)
        assert by_url(pool)[A]["latency"] == 0.5
        assert by_url(pool)[A]["requests"] == 1

    def test_cancelled_attempt_has_no_outcome(self):
        pool = lb.Balancer([A])
        with pytest.raises(KeyboardInterrupt):
            with pool.attempt():
                raise KeyboardInterrupt
        row = by_url(pool)[A]
        assert (row["in_flight"], row["requests"], row["failures"]) == (0, 0, 0)

    def test_an_exception_in_an_attempt_is_one_failure(self, clock):
        pool = lb.Balancer([A], timer=clock)
        with pytest.raises(OSError):
            with pool.attempt():
                clock.advance(0.5)
                raise OSError("connection refused")
        row = by_url(pool)[A]
        assert (row["in_flight"], row["requests"], row["failures"]) == (0, 1, 1)
        assert row["consecutive_failures"] == 1

    def test_release(self):
        pool = lb.Balancer([A])
        pool.release(pool.pick())
        assert by_url(pool)[A]["in_flight"] == 0 and by_url(pool)[A]["requests"] == 0

    def test_report_of_a_never_known_backend_is_ignored(self):
        pool = lb.Balancer([A])
        pool.report(lb.Backend("http://elsewhere:1"), ok=False)
        assert by_url(pool)[A]["failures"] == 0

    def test_repr(self):
        assert repr(lb.Balancer([A], policy="random")) == "<Balancer policy='random' backends=['http://a:1']>"


@pytest.mark.parametrize("policy", lb.POLICIES)
def test_many_threads_exact_totals(policy):
    """8 threads x 20,000 pick/report pairs: exact totals, nothing left in flight."""
    backends = [lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)]
    pool = lb.Balancer(backends, policy=policy, rng=random.Random(1))
    threads, per_thread = 8, 20000
    counts = [Counter() for _ in range(threads)]
    start = threading.Barrier(threads)

    def worker(n):
        start.wait()
        seen = counts[n]
        pick, report = pool.pick, pool.report
        for i in range(per_thread):
            backend = pick(key=f"k{n}.{i}")
            seen[backend.url] += 1
            report(backend, ok=True, latency=0.001)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    total = sum(counts, Counter())
    stats = by_url(pool)
    assert sum(total.values()) == threads * per_thread
    assert sum(s["requests"] for s in stats.values()) == threads * per_thread
    assert all(s["in_flight"] == 0 for s in stats.values())
    for url, seen in total.items():
        assert stats[url]["requests"] == seen
    if policy == "round_robin":
        # Smooth WRR keeps its exact proportions: every pick is one step of the sequence.
        n = threads * per_thread // 10
        assert (total[A], total[B], total[C]) == (5 * n, 3 * n, 2 * n)


def test_shared_by_asyncio_tasks():
    pool = lb.Balancer([A, B, C], policy="least_conn")

    async def call(i):
        with pool.attempt() as backend:
            await asyncio.sleep(0)
            return backend.url

    async def main():
        return await asyncio.gather(*(call(i) for i in range(300)))

    seen = Counter(asyncio.run(main()))
    assert seen == {A: 100, B: 100, C: 100}
    assert all(s["in_flight"] == 0 for s in pool.stats())


def test_late_reports_of_a_removed_backend_leave_its_health_alone(clock):
    pool = lb.Balancer([A, B], timer=clock)
    held = [pool.pick(exclude=[lb.Backend(B)]) for _ in range(3)]
    pool.update([B])
    for backend in held:
        pool.report(backend, ok=False)
    pool.update([A, B])
    assert by_url(pool)[A]["state"] == "healthy"
    assert by_url(pool)[A]["in_flight"] == 0


def test_report_later_never_waits_for_the_lock():
    pool = lb.Balancer([A])
    backend = pool.pick()
    with pool._lock:                          # as when a GC finalizer runs inside pick()
        pool.report_later(backend, ok=False)  # would deadlock if it took the lock
    row = by_url(pool)[A]                     # applied by the next call
    assert (row["in_flight"], row["failures"]) == (0, 1)
    pool.report_later(pool.pick(), ok=True, latency=0.1)   # lock free: applied at once
    assert pool._deferred == collections.deque() and by_url(pool)[A]["requests"] == 2


def test_exclude_by_url_string():
    pool = lb.Balancer([A])
    with pytest.raises(lb.NoHealthyBackend, match="every backend was tried: http://a:1"):
        pool.pick(exclude=[A])


def test_update_with_another_spelling_keeps_the_live_state():
    pool = lb.Balancer(["http://a"])
    held = pool.pick()
    pool.update(["HTTP://A:80/"])
    assert by_url(pool)["http://a"]["in_flight"] == 1
    pool.report(held)
    assert by_url(pool)["http://a"]["in_flight"] == 0


class TestLookup:
    """lookup(key): the backend a pick with that key would get now, without a pick."""

    KEYS = [f"198.51.100.{i}" for i in range(200)]

    def test_the_backend_a_pick_with_the_key_gets(self):
        pool = lb.Balancer([lb.Backend(A, 2), B, C, D], policy="ip_hash")
        owners = {key: pool.lookup(key) for key in self.KEYS}
        assert set(owners.values()) == set(pool.backends)
        for key in self.KEYS:
            backend = pool.pick(key=key)
            pool.report(backend)
            assert backend == owners[key]

    def test_changes_nothing(self, clock):
        pool = lb.Balancer([lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)],
                           policy="ip_hash", timer=clock)
        events = []
        pool.subscribe(events.append)
        keyless = []
        for i in range(10):                 # keyless picks go round-robin: lookups in between
            pool.lookup(self.KEYS[i])       # must not move the sequence
            keyless.append(pool.pick().url[7])
        assert "".join(keyless) == "abcaabacba"
        assert [s["in_flight"] for s in pool.stats()] == [5, 3, 2]
        assert sum(s["requests"] for s in pool.stats()) == 0
        assert events == []

    def test_follows_ejection_and_return(self, clock):
        pool = lb.Balancer([A, B, C, D], policy="ip_hash", timer=clock)
        events = []
        pool.subscribe(events.append)
        key = self.KEYS[0]
        home = pool.lookup(key)
        for _ in range(3):
            pool.report(pool.pick(exclude=[b for b in pool.backends if b != home]), ok=False)
        fallback = pool.lookup(key)
        assert fallback != home
        picked = pool.pick(key=key)
        pool.report(picked)
        assert picked == fallback
        clock.advance(10.0)                 # the ejection is over: the key is home again,
        assert pool.lookup(key) == home     # though no call has ended the ejection yet
        assert len(events) == 1             # the ejection only: lookup sends no event
        picked = pool.pick(key=key)
        assert picked == home

    def test_in_panic_it_is_the_pick_among_all(self, clock):
        pool = lb.Balancer([A, B, C], policy="ip_hash", timer=clock)
        for url in (A, B, C):
            for _ in range(3):
                pool.report(pool.pick(exclude=[u for u in (A, B, C) if u != url]), ok=False)
        for key in self.KEYS[:20]:
            owner = pool.lookup(key)
            backend = pool.pick(key=key)
            pool.release(backend)
            assert backend == owner

    @pytest.mark.parametrize("policy", [p for p in lb.POLICIES if p != "ip_hash"])
    def test_needs_a_keyed_policy(self, policy):
        pool = lb.Balancer([A, B], policy=policy)
        with pytest.raises(lb.ConfigError, match=rf"lookup\(\) needs a keyed policy \(ip_hash\); "
                                                 rf"this pool uses {policy}$"):
            pool.lookup("198.51.100.7")

    def test_empty_pool(self):
        pool = lb.Balancer([A], policy="ip_hash")
        pool.update([])
        with pytest.raises(lb.NoHealthyBackend, match="no backends"):
            pool.lookup("198.51.100.7")


class TestUpdateWithTheSameMembers:
    """update() with the same members and weights changes nothing (a DNS refresh, say)."""

    def test_round_robin_continues_its_sequence(self):
        backends = [lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)]
        pool = lb.Balancer(backends, policy="round_robin")
        names = [pool.pick().url[7] for _ in range(4)]
        pool.update(backends)
        pool.update([f"{A} weight=5", f"{B}/ weight=3", "HTTP://C:1 weight=2"])   # other spellings
        names += [pool.pick().url[7] for _ in range(16)]
        assert "".join(names) == "abcaabacba" * 2

    def test_another_order_is_the_same_members(self):
        backends = [lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)]
        pool = lb.Balancer(backends, policy="round_robin")
        names = [pool.pick().url[7] for _ in range(4)]
        pool.update(backends[::-1])
        names += [pool.pick().url[7] for _ in range(6)]
        assert "".join(names) == "abcaabacba"
        assert [b.url for b in pool.backends] == [A, B, C]

    def test_the_hash_table_is_not_rebuilt(self, monkeypatch):
        import lbmiddleware.core.policies.ip_hash as ip_hash

        builds = []
        real = ip_hash.maglev_table
        monkeypatch.setattr(ip_hash, "maglev_table",
                            lambda *args: builds.append(args) or real(*args))
        pool = lb.Balancer([A, B, C], policy="ip_hash")
        assert len(builds) == 1
        owner = pool.lookup("203.0.113.7")
        pool.update([A, B, C])
        pool.update([C, B, A])
        assert len(builds) == 1
        assert pool.lookup("203.0.113.7") == owner
        pool.update([A, B])
        assert len(builds) == 2

    def test_no_event_and_live_state_untouched(self, clock):
        pool = lb.Balancer([A, B, C], policy="least_conn", timer=clock)
        events = []
        pool.subscribe(events.append)
        held = [pool.pick() for _ in range(4)]
        before = pool.stats()
        pool.update([A, B, C])
        assert events == [] and pool.stats() == before
        assert pool.pick().url == held[1].url        # least_conn: B and C hold one, A two

    def test_a_new_weight_is_a_change(self):
        pool = lb.Balancer([A, B, C], policy="round_robin")
        assert [pool.pick().url for _ in range(2)] == [A, B]
        events = []
        pool.subscribe(events.append)
        pool.update([lb.Backend(A, 5), lb.Backend(B, 3), lb.Backend(C, 2)])
        assert "".join(pool.pick().url[7] for _ in range(10)) == "abcaabacba"   # restarted
        assert len(events) == 1 and events[0].reweighted == (lb.Backend(A, 5), lb.Backend(B, 3),
                                                               lb.Backend(C, 2))
