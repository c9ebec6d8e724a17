"""The core Balancer following a fleet: sources' sets in the union, drain, tiers, slow start,
active health (a fake clock and a seeded rng; nothing sleeps). The core's Balancer itself: the
public one (lbmiddleware.fleet) also runs the sources and probes these tests play."""

import logging
import random
from collections import Counter

import pytest

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import (
    BackendDown,
    BackendReturned,
    BackendUp,
    DrainEnded,
    DrainStarted,
    MembershipChanged,
    PanicStarted,
    ReturnCause,
    SourceFailed,
)

A, B, C, D, E = "http://a:1", "http://b:1", "http://c:1", "http://d:1", "http://e:1"
DNS = "dns+http://orders:8080"
ETCD = "etcd://127.0.0.1:2379/services/orders"


def urls(backends):
    return [b.url for b in backends]


def by_url(pool):
    return {row["url"]: row for row in pool.stats()}


def listen(pool):
    events = []
    pool.subscribe(events.append)
    return events


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def share(pool, picks=4000, key=None):
    counts = Counter()
    for i in range(picks):
        backend = pool.pick(key=None if key is None else f"{key}{i}")
        counts[backend.url] += 1
        pool.report(backend, True, 0.01)
    return counts


class TestSources:
    def test_the_union_is_static_first_then_each_source_in_settings_order(self):
        pool = Balancer(f"{A}, {ETCD}, {DNS}")
        assert urls(pool.backends) == [A]
        pool.update([C, D], source=DNS)
        pool.update([B], source=lb.Source(ETCD))
        assert urls(pool.backends) == [A, B, C, D]
        pool.update([E])
        assert urls(pool.backends) == [E, B, C, D]

    def test_a_source_not_in_the_settings_comes_after_them(self):
        pool = Balancer(f"{A}, {DNS}")
        pool.update([C], source="dns+http://other")
        pool.update([B], source=DNS)
        assert urls(pool.backends) == [A, B, C]

    def test_a_url_listed_twice_is_the_first_entrys_and_warned_once(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        pool = Balancer(f"{A} weight=2, {DNS}")
        pool.update([lb.Backend(A, 5), B], source=DNS)
        pool.update([lb.Backend(A, 5), B, C], source=DNS)
        assert [(r["url"], r["weight"], r["source"]) for r in pool.stats()] == [
            (A, 2, None), (B, 1, DNS), (C, 1, DNS)]
        warnings = [r.getMessage() for r in caplog.records if "listed by" in r.getMessage()]
        assert len(warnings) == 1 and A in warnings[0]
        pool.update([], source=None)         # the static entry goes: the source's A takes over
        assert [(r["url"], r["weight"]) for r in pool.stats()][-3:] == [(A, 5), (B, 1), (C, 1)]

    def test_the_source_of_each_backend_is_in_its_row_and_the_event(self):
        pool = Balancer(f"{A}, {DNS}")
        events = listen(pool)
        pool.update([lb.Backend("http://10.0.0.5:8080", server_name="orders")], source=DNS)
        (change,) = of(events, MembershipChanged)
        assert change.source == DNS and urls(change.added) == ["http://10.0.0.5:8080"]
        assert change.added[0].source == DNS
        assert by_url(pool)["http://10.0.0.5:8080"]["source"] == DNS

    def test_the_no_op_update_stays_a_no_op(self):
        pool = Balancer(f"{A}, {DNS}", rng=random.Random(1))
        pool.update([B, C], source=DNS)
        events = listen(pool)
        sequence = [pool.pick().url for _ in range(3)]
        pool.update(["http://C:1/", B], source=DNS)       # same set, other order and spelling
        pool.update([A])
        sequence += [pool.pick().url for _ in range(3)]
        assert events == []
        assert sequence == [A, B, C, A, B, C]             # the rotation went on
        assert urls(pool.backends) == [A, B, C]

    def test_a_successful_empty_answer_empties_the_sources_set(self):
        pool = Balancer(DNS)
        pool.update([A], source=DNS)
        assert pool.pick().url == A
        pool.update([], source=DNS)
        with pytest.raises(lb.NoHealthyBackend):
            pool.pick()

    def test_a_static_update_with_a_source_in_it_is_refused(self):
        pool = Balancer([A])
        with pytest.raises(lb.ConfigError, match="a source needs lb.Balancer"):
            pool.update([A, DNS])

    def test_publish_delivers_through_the_listeners_in_order(self):
        pool = Balancer([A])
        events = listen(pool)
        failed = SourceFailed(DNS, "timeout", 1.0)
        pool.publish(failed)
        pool.drain(A)
        assert events[0] is failed and isinstance(events[1], MembershipChanged)

    def test_close_and_the_context_manager(self):
        with Balancer([A]) as pool:
            assert pool.pick().url == A
        pool.close()
        pool.close()


class TestEmptyBecauseOfSources:
    """A pick from a pool left empty by its sources says which have not answered and which
    fail, with what error."""

    ETCD = "etcd://127.0.0.1:2379/services/orders"

    def test_the_error_names_the_sources_waited_for_and_the_failing(self):
        pool = Balancer([DNS, self.ETCD])
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.pick()
        assert str(caught.value) == (
            f"the pool has no backends: source {DNS} has not answered yet; source "
            f"{self.ETCD} has not answered yet")
        pool.publish(SourceFailed(DNS, "A orders: timeout after 2s asking 127.0.0.1:53", 1.0))
        pool.update([], source=self.ETCD)            # answered: no backends registered
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.pick()
        assert str(caught.value) == (
            f"the pool has no backends: source {DNS} is failing (A orders: timeout after 2s "
            f"asking 127.0.0.1:53)")
        pool.publish(lb.core.events.SourceRecovered(DNS, 3.0))
        pool.update([], source=DNS)
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.pick()
        assert str(caught.value) == "the pool has no backends"

    def test_lookup_says_so_too(self):
        pool = Balancer([DNS], policy="ip_hash")
        pool.publish(SourceFailed(DNS, "SERVFAIL", 1.0))
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.lookup("10.0.0.1")
        assert str(caught.value) == f"the pool has no backends: source {DNS} is failing (SERVFAIL)"

    def test_a_static_pool_emptied_says_only_that(self):
        pool = Balancer(["http://a:1"])
        pool.update([])
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.pick()
        assert str(caught.value) == "the pool has no backends"


class TestDrain:
    def test_a_removed_backend_drains_its_in_flight_and_leaves_at_zero(self, clock):
        pool = Balancer(f"{A}, {DNS}", timer=clock)
        pool.update([B], source=DNS)
        events = listen(pool)
        held = [pool.pick(exclude=[A]) for _ in range(2)]
        pool.update([], source=DNS)
        assert urls(pool.backends) == [A]
        assert [pool.pick().url for _ in range(3)] == [A, A, A]
        assert of(events, DrainStarted) == [DrainStarted(lb.Backend(B), 2, "removed")]
        assert by_url(pool)[B]["state"] == "draining"
        assert by_url(pool)[B]["in_flight"] == 2
        pool.report(held[0], ok=False)          # a failure of a draining backend: no ejection
        assert by_url(pool)[B]["ejections"] == 0 and not of(events, DrainEnded)
        pool.report(held[1], ok=True, latency=0.1)
        assert of(events, DrainEnded) == [DrainEnded(lb.Backend(B), False, 0)]
        assert B not in by_url(pool)

    def test_a_drain_ends_at_its_timeout(self, clock):
        pool = Balancer([A, B], timer=clock, drain_timeout="10s")
        events = listen(pool)
        held = pool.pick(exclude=[A])
        pool.update([A])
        clock.advance(9.9)
        pool.pick()
        assert not of(events, DrainEnded)
        clock.advance(0.2)
        pool.pick()
        assert of(events, DrainEnded) == [DrainEnded(lb.Backend(B), True, 1)]
        assert B not in by_url(pool)
        pool.report(held, ok=True)                # its late end is ignored
        assert B not in by_url(pool)

    def test_drain_by_url_keeps_it_out_until_undrain(self, clock):
        pool = Balancer(f"{A}, {DNS}", timer=clock)
        pool.update([B, C], source=DNS)
        events = listen(pool)
        held = pool.pick(exclude=[A, C])
        pool.drain("HTTP://B:1/")
        assert of(events, DrainStarted) == [DrainStarted(lb.Backend(B), 1, "drain()")]
        assert B not in urls(pool.backends)
        pool.update([B, C, D], source=DNS)        # the source still lists it
        assert urls(pool.backends) == [A, C, D]
        pool.report(held)
        assert of(events, DrainEnded) == [DrainEnded(lb.Backend(B), False, 0)]
        pool.drain(B)                             # twice: nothing more
        pool.undrain(B)
        assert urls(pool.backends) == [A, B, C, D]
        pool.undrain(B)                           # a member: nothing
        assert urls(pool.backends) == [A, B, C, D]

    def test_draining_an_idle_backend_ends_at_once(self):
        pool = Balancer([A, B])
        events = listen(pool)
        pool.drain(B)
        assert of(events, DrainStarted) == [DrainStarted(lb.Backend(B), 0, "drain()")]
        assert of(events, DrainEnded) == [DrainEnded(lb.Backend(B), False, 0)]
        assert urls(pool.backends) == [A]

    def test_a_drain_cancelled_by_a_readd_ends_with_an_event(self):
        pool = Balancer([A, B])
        events = listen(pool)
        held = pool.pick(exclude=[B])
        pool.update([B])                          # A drains with one request in flight
        pool.update([A, B])                       # and is back before it ended
        assert of(events, DrainEnded) == [DrainEnded(lb.Backend(A), False, 1, cancelled=True)]
        pool.report(held)
        assert len(of(events, DrainEnded)) == len(of(events, DrainStarted)) == 1
        held = pool.pick(exclude=[B])
        pool.drain(A)
        pool.undrain(A)                           # undrain() cancels it too
        assert of(events, DrainEnded)[-1] == DrainEnded(lb.Backend(A), False, 1, cancelled=True)
        pool.report(held)
        assert len(of(events, DrainEnded)) == len(of(events, DrainStarted)) == 2

    def test_an_unknown_url_is_a_config_error_naming_it(self):
        pool = Balancer([A])
        with pytest.raises(lb.ConfigError, match="http://zz:1"):
            pool.drain("http://zz:1")
        with pytest.raises(lb.ConfigError, match="http://zz:1"):
            pool.undrain("http://zz:1")

    def test_a_removal_without_requests_in_flight_sends_no_drain_event(self):
        pool = Balancer([A, B])
        events = listen(pool)
        pool.update([A])
        assert [type(e) for e in events] == [MembershipChanged]

    def test_a_removed_backends_sticky_keys_move_as_if_ejected(self, clock):
        keys = [f"10.0.{i // 250}.{i % 250}" for i in range(2000)]
        pool = Balancer([A, B, C, D], policy="ip_hash", timer=clock, max_fails=1)
        before = {k: pool.lookup(k).url for k in keys}
        ejected = Balancer([A, B, C, D], policy="ip_hash", timer=clock, max_fails=1)
        ejected.report(ejected.pick(exclude=[A, B, D]), ok=False)
        as_if_ejected = {k: ejected.lookup(k).url for k in keys}
        assert by_url(ejected)[C]["state"] == "ejected"
        held = pool.pick(exclude=[A, B, D])
        pool.update([A, B, D])                   # C drains with one request in flight
        after = {k: pool.lookup(k).url for k in keys}
        assert after == as_if_ejected
        assert all(after[k] == before[k] for k in keys if before[k] != C)
        assert all(pool.pick(key=k).url == after[k] for k in keys[:50])
        pool.report(held)


class TestTiers:
    def test_a_backup_takes_nothing_while_the_primaries_are_fine(self):
        pool = Balancer(f"{A}, {B}, {C} backup", policy="random", rng=random.Random(3))
        assert set(share(pool, 1000)) == {A, B}

    @pytest.mark.parametrize("policy", ["random", "round_robin", "least_conn", "latency"])
    def test_envoys_70_30_split_at_half_health(self, clock, policy):
        primaries = [f"http://p{i}:1" for i in range(4)]
        backups = [f"http://b{i}:1 backup" for i in range(2)]
        pool = Balancer(primaries + backups, policy=policy, timer=clock,
                           rng=random.Random(7), max_fails=1, fail_timeout="1h",
                           max_ejection_time="1h")
        for url in primaries[:2]:
            pool.report(pool.pick(exclude=[u for u in primaries + ["http://b0:1", "http://b1:1"]
                                           if u != url]), ok=False)
        counts = share(pool, 10000)
        tier0 = sum(counts[u] for u in primaries)
        assert set(counts) == {primaries[2], primaries[3], "http://b0:1", "http://b1:1"}
        assert 0.67 < tier0 / 10000 < 0.73

    def test_overprovisioning_1_spills_at_the_first_loss(self, clock):
        pool = Balancer(f"{A}, {B}, {C}, {D}, {E} backup", policy="random", timer=clock,
                           rng=random.Random(5), max_fails=1, overprovisioning=1.0)
        pool.report(pool.pick(exclude=[B, C, D, E]), ok=False)
        counts = share(pool, 10000)
        assert 0.72 < sum(counts[u] for u in (B, C, D)) / 10000 < 0.78    # 75 / 25

    def test_ip_hash_keys_keep_their_tier_and_backend(self, clock):
        primaries = [f"http://p{i}:1" for i in range(4)]
        pool = Balancer(primaries + ["http://b0:1 backup", "http://b1:1 backup"],
                           policy="ip_hash", timer=clock, max_fails=1, fail_timeout="1h",
                           max_ejection_time="1h")
        for url in primaries[:2]:
            pool.report(pool.pick(exclude=[u for u in primaries if u != url]), ok=False)
        keys = [f"k{i}" for i in range(3000)]
        first = {k: pool.pick(key=k).url for k in keys}
        for url in first.values():
            pool.report(lb.Backend(url))
        assert all(pool.pick(key=k).url == first[k] for k in keys)
        assert all(pool.lookup(k).url == first[k] for k in keys)
        backups = sum(1 for url in first.values() if "//b" in url)
        assert 0.26 < backups / len(keys) < 0.34

    def test_lookup_counts_an_ejection_that_is_over_as_over(self, clock):
        primaries = [f"http://p{i}:1" for i in range(4)]
        pool = Balancer(primaries + ["http://b0:1 backup"], policy="ip_hash", timer=clock,
                        max_fails=1, fail_timeout="10s")
        keys = [f"k{i}" for i in range(500)]
        before = {k: pool.lookup(k).url for k in keys}
        for url in primaries[:2]:
            pool.report(pool.pick(exclude=[u for u in primaries if u != url]), ok=False)
        assert any(pool.lookup(k).url == "http://b0:1" for k in keys)
        clock.advance(10)
        assert {k: pool.lookup(k).url for k in keys} == before
        assert {k: pool.pick(key=k).url for k in keys} == before

    def test_panic_over_every_member_when_no_tier_is_usable(self, clock):
        pool = Balancer(f"{A}, {B} backup", policy="round_robin", timer=clock, max_fails=1)
        events = listen(pool)
        pool.report(pool.pick(exclude=[B]), ok=False)
        assert {pool.pick().url for _ in range(10)} == {B}
        pool.report(pool.pick(), ok=False)
        assert of(events, PanicStarted)
        assert {pool.pick().url for _ in range(10)} == {A, B}

    def test_a_retry_goes_to_the_backup_once_the_primaries_are_tried(self):
        pool = Balancer(f"{A}, {B}, {C} backup", rng=random.Random(0))
        assert pool.pick(exclude=[A, B]).url == C

    def test_tiers_come_and_go_with_membership(self):
        pool = Balancer([A, B], rng=random.Random(0))
        pool.update([A, "http://b:1 backup"])
        assert {pool.pick().url for _ in range(20)} == {A}
        pool.update([A, B])
        assert {pool.pick().url for _ in range(20)} == {A, B}


class TestSlowStart:
    def test_a_joiners_weight_ramps_over_the_window(self, clock):
        pool = Balancer([A], timer=clock, slow_start="10s")
        pool.update([A, lb.Backend(B, 2)])
        weights = []
        for _ in range(12):
            weights.append(by_url(pool)[B]["effective_weight"])
            clock.advance(1.0)
        assert weights == [0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2, 2]
        assert by_url(pool)[A]["effective_weight"] == 1

    def test_the_share_follows_the_effective_weight(self, clock):
        pool = Balancer([A, B, C], policy="random", timer=clock, rng=random.Random(2),
                           slow_start="100s")
        pool.update([A, B, C, D])
        clock.advance(50)
        counts = share(pool, 7000)              # weights 1, 1, 1, 0.5
        assert 0.12 < counts[D] / 7000 < 0.16

    def test_initial_members_do_not_ramp_and_ip_hash_never_does(self, clock):
        pool = Balancer([A, B], timer=clock, slow_start="10s")
        assert [r["effective_weight"] for r in pool.stats()] == [1, 1]
        hashed = Balancer([A], policy="ip_hash", timer=clock, slow_start="10s")
        hashed.update([A, B])
        assert by_url(hashed)[B]["effective_weight"] == 1

    def test_a_return_from_ejection_ramps(self, clock):
        pool = Balancer([A, B], timer=clock, slow_start="10s", max_fails=1,
                           fail_timeout="5s")
        pool.report(pool.pick(exclude=[A]), ok=False)
        clock.advance(5)
        pool.pick()
        assert by_url(pool)[B]["effective_weight"] == 0.1
        clock.advance(10)
        assert by_url(pool)[B]["effective_weight"] == 1

    def test_a_return_while_down_by_its_checks_waits_for_them_to_ramp(self, clock):
        """Slow start begins when the backend becomes usable (Envoy: when the host becomes
        healthy): not when its ejection ends while its checks say down, nor when a pass ends
        the ejection short of rise; the pass that brings it up starts it."""
        pool = Balancer([A, B], timer=clock, slow_start="10s", max_fails=1, fail_timeout="5s",
                        health_check="/h", health_check_rise=2)
        pool.report(pool.pick(exclude=[A]), ok=False)
        pool.report_probe(B, False, "connection refused")
        clock.advance(5)
        assert {pool.pick().url for _ in range(10)} == {A}
        assert by_url(pool)[B]["ramp"] is None
        pool.report(pool.pick(exclude=[A]), ok=False)       # a retry's pick reaches it: out
        clock.advance(20)
        pool.report_probe(B, True, "status 200")            # ends the ejection, 1/2 up
        assert (by_url(pool)[B]["ejection_left"], by_url(pool)[B]["ramp"]) == (None, None)
        clock.advance(20)
        pool.report_probe(B, True, "status 200")            # up: usable, and ramping
        assert by_url(pool)[B]["effective_weight"] == 0.1
        clock.advance(5)
        assert by_url(pool)[B]["effective_weight"] == 0.5

    def test_an_answer_in_panic_ramps_only_the_backends_it_makes_usable(self, clock):
        pool = Balancer([A, B], timer=clock, slow_start="10s", max_fails=1,
                        fail_timeout="1h", max_ejection_time="1h", health_check="/h",
                        health_check_fall=1)
        pool.report(pool.pick(exclude=[B]), ok=False)
        pool.report(pool.pick(exclude=[A]), ok=False)       # both ejected: panic
        pool.report_probe(B, False, "connection refused")
        pool.report(pool.pick(exclude=[B]), latency=0.01)   # A answers: ejections over
        rows = by_url(pool)
        assert (rows[A]["state"], rows[A]["effective_weight"]) == ("slow_start", 0.1)
        assert (rows[B]["state"], rows[B]["ramp"]) == ("down", None)

    @pytest.mark.parametrize("policy", ["round_robin", "random", "least_conn", "latency"])
    def test_caches_are_rebuilt_at_most_once_a_second(self, clock, policy):
        pool = Balancer([A, B], policy=policy, timer=clock, slow_start="5s",
                           rng=random.Random(0))
        pool.update([A, B, C])
        generations = set()
        for _ in range(200):
            pool.report(pool.pick(), True, 0.01)
            generations.add(pool._healthy.generation)
            clock.advance(0.05)                 # 10 s of picks every 50 ms
        assert len(generations) <= 7            # one per second of the window, then full
        assert by_url(pool)[C]["effective_weight"] == 1

    def test_round_robin_goes_on_through_the_steps(self, clock):
        # A pool picked less often than its rotation is long still reaches every backend.
        many = [f"http://n{i}:1" for i in range(20)]
        pool = Balancer(many, timer=clock, slow_start="60s")
        pool.update([*many, A])
        seen = set()
        for _ in range(40):
            seen.add(pool.pick().url)
            clock.advance(1.0)
        assert set(many) <= seen


class TestActiveHealth:
    def test_members_at_start_are_up_and_a_joiner_waits_for_its_first_pass(self, clock):
        pool = Balancer([A], timer=clock, health_check="/healthz")
        assert by_url(pool)[A]["health_check"] == {     # h = rise: one failure from down
            "status": "up", "last": None, "rise": 0, "fall": 0, "fails_to_down": 1,
            "passes_to_up": 0, "checked_at": None, "checked_ago": None, "passes_total": 0,
            "fails_total": 0, "rise_needed": 2, "fall_needed": 3}
        pool.update([A, B])
        assert {pool.pick().url for _ in range(10)} == {A}
        assert by_url(pool)[B]["state"] == "down"
        assert by_url(pool)[B]["health_check"]["status"] == "pending"
        events = listen(pool)
        pool.report_probe(lb.Backend(B), True, "status 200")
        assert of(events, BackendUp) == [BackendUp(lb.Backend(B), "status 200")]
        assert {pool.pick().url for _ in range(10)} == {A, B}

    def test_a_joiner_gets_traffic_if_the_pool_would_otherwise_be_empty(self):
        pool = Balancer(DNS, health_check="/healthz", health_check_fall=1)
        events = listen(pool)
        pool.update([], source=DNS)               # the first answer: no records yet
        pool.update([A, B], source=DNS)           # so these two join
        assert {pool.pick().url for _ in range(10)} == {A, B}
        assert not of(events, PanicStarted)       # not a panic: nothing was seen to fail
        pool.report_probe(A, True, "status 200")  # now one is up: the other waits its pass
        assert {pool.pick().url for _ in range(10)} == {A}
        # A down, B pending: no longer a pool of joiners only, so a panic over both (the
        # fallback to joiners is for a pool with no other member)
        pool.report_probe(A, False, "status 503")
        assert {pool.pick().url for _ in range(30)} == {A, B}
        assert of(events, PanicStarted)[-1].down == (lb.Backend(A),)

    def test_fall_takes_it_down_and_rise_brings_it_back(self, clock):
        pool = Balancer([A, B], timer=clock, health_check="/healthz",
                           health_check_rise=2, health_check_fall=3)
        events = listen(pool)
        pool.report_probe(B, False, "status 503")     # h = rise: the first fail takes it down
        assert of(events, BackendDown) == [BackendDown(lb.Backend(B), "status 503")]
        assert {pool.pick().url for _ in range(10)} == {A}
        assert by_url(pool)[B]["state"] == "down"
        pool.report_probe(B, True, "status 200")
        assert {pool.pick().url for _ in range(10)} == {A}
        pool.report_probe(B, True, "status 200")
        assert of(events, BackendUp) == [BackendUp(lb.Backend(B), "status 200")]
        assert {pool.pick().url for _ in range(10)} == {A, B}
        for _ in range(2):
            pool.report_probe(B, False, "timeout after 2s")
        assert {pool.pick().url for _ in range(10)} == {A, B}
        assert by_url(pool)[B]["health_check"]["fall"] == 2
        pool.report_probe(B, False, "connection refused")
        assert {pool.pick().url for _ in range(10)} == {A}

    def test_a_pass_ends_a_passive_ejection(self, clock):
        pool = Balancer([A, B], timer=clock, health_check="/healthz", max_fails=1,
                           fail_timeout="1h", max_ejection_time="1h")
        pool.report(pool.pick(exclude=[A]), ok=False)
        assert by_url(pool)[B]["state"] == "ejected"
        events = listen(pool)
        clock.advance(4)
        pool.report_probe(B, True, "status 200")
        (returned,) = of(events, BackendReturned)
        assert returned.cause is ReturnCause.PROBE_PASSED and not returned.on_probation
        assert returned.ejected_for == 4
        assert by_url(pool)[B]["state"] == "healthy"
        assert {pool.pick().url for _ in range(10)} == {A, B}

    def test_a_failed_probe_never_ejects_by_itself(self):
        pool = Balancer([A, B], health_check="/healthz", health_check_fall=3)
        pool.report_probe(B, True)
        pool.report_probe(B, False, "status 500")
        assert by_url(pool)[B]["ejections"] == 0

    def test_probes_are_ignored_when_checks_are_off_or_for_strangers(self):
        pool = Balancer([A])
        pool.report_probe(A, False, "status 500")
        assert by_url(pool)[A]["health_check"] is None
        checked = Balancer([A], health_check="/h")
        checked.report_probe("http://zz:1", False)
        assert by_url(checked)[A]["state"] == "healthy"

    def test_a_return_from_active_down_ramps(self, clock):
        pool = Balancer([A, B], timer=clock, health_check="/h", health_check_rise=1,
                           slow_start="10s")
        pool.report_probe(B, False, "status 500")
        pool.report_probe(B, True, "status 200")
        assert by_url(pool)[B]["effective_weight"] == 0.1


class TestLogging:
    def test_each_new_event_is_logged_once_at_its_level(self, caplog, clock):
        caplog.set_level(logging.INFO, logger="lbmiddleware")
        pool = Balancer([A, B], timer=clock, health_check="/h", health_check_rise=1)
        held = pool.pick(exclude=[A])
        pool.report_probe(A, False, "status 503")
        pool.report_probe(A, True, "status 200")
        pool.drain(B)
        pool.report(held)
        pool.publish(SourceFailed(DNS, "SERVFAIL", 1.6))
        pool.publish(SourceFailed(DNS, "timeout", 1.0, kept=0))
        pool.publish(SourceFailed(DNS, "timeout", 1.0, kept=2))
        pool.publish(lb.core.events.SourceRecovered(DNS, 12.0))
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert lines == [
            (logging.WARNING, "backend http://a:1 is down: health check failed (status 503)"),
            (logging.WARNING, "backend http://a:1 is up: health check passed (status 200)"),
            (logging.INFO, "members changed by drain(): removed 1 (http://b:1); 1 now"),
            (logging.INFO, "backend http://b:1 is draining (drain()): 1 requests in flight"),
            (logging.INFO, "backend http://b:1 drained and left"),
            (logging.WARNING, "source dns+http://orders:8080 failed: SERVFAIL "
                              "(keeping its last backends; retry in 1.6s)"),
            (logging.WARNING, "source dns+http://orders:8080 failed: timeout "
                              "(no backends yet; retry in 1s)"),
            (logging.WARNING, "source dns+http://orders:8080 failed: timeout "
                              "(keeping its last 2 backends; retry in 1s)"),
            (logging.WARNING, "source dns+http://orders:8080 answers again after 12s"),
        ]


    def test_each_membership_change_is_one_info_line_with_its_source(self, caplog):
        caplog.set_level(logging.INFO, logger="lbmiddleware")
        pool = Balancer([A, B, DNS])                # the initial members: no line
        pool.update([A, B])                         # no change: no line
        pool.update([A])                            # B leaves with nothing in flight
        pool.update([lb.Backend(A, weight=3), C, D, E, "http://f:1", "http://g:1"])
        pool.update(["http://10.0.0.1:8080", "http://10.0.0.2:8080"], source=DNS)
        pool.update(["http://10.0.0.1:8080"], source=DNS)
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert lines == [
            (logging.INFO, "members changed by update(): removed 1 (http://b:1); 1 now"),
            (logging.INFO, "members changed by update(): added 5 (http://c:1, http://d:1, "
                           "http://e:1 +2 more), reweighted 1 (http://a:1); 6 now"),
            (logging.INFO, "members changed by source dns+http://orders:8080: added 2 "
                           "(http://10.0.0.1:8080, http://10.0.0.2:8080); 8 now"),
            (logging.INFO, "members changed by source dns+http://orders:8080: removed 1 "
                           "(http://10.0.0.2:8080); 7 now"),
        ]

    def test_undrain_is_one_line(self, caplog):
        pool = Balancer([A, B])
        pool.drain(B)
        caplog.set_level(logging.INFO, logger="lbmiddleware")
        pool.undrain(B)
        assert [r.getMessage() for r in caplog.records] == [
            "members changed by undrain(): added 1 (http://b:1); 2 now"]


class TestPanicLog:
    """The panic line says why no backend is usable: ejected, down by its health checks."""

    @staticmethod
    def lines(caplog):
        return [r.getMessage() for r in caplog.records if "panic" in r.getMessage()]

    def test_every_backend_down_by_health_checks(self, caplog):
        caplog.set_level(logging.INFO, logger="lbmiddleware")
        pool = Balancer([A, B], health_check="/h")
        events = listen(pool)
        for url in (A, B):
            pool.report_probe(url, False, "status 503")
        assert self.lines(caplog) == [
            "every backend is down by its health checks: panic mode, picking among all 2"]
        (panic,) = of(events, PanicStarted)
        assert (panic.ejected, panic.down) == ((), (lb.Backend(A), lb.Backend(B)))

    def test_some_ejected_some_down_some_not_checked_yet(self, caplog):
        caplog.set_level(logging.INFO, logger="lbmiddleware")
        pool = Balancer([A, B, C], health_check="/h", max_fails=1)
        pool.update([A, B, C, D])                     # D: not checked yet
        pool.report_probe(C, False, "status 503")
        for url in (A, B):
            pool.report(pool.pick(exclude=[u for u in (A, B, C) if u != url]), ok=False)
        assert self.lines(caplog) == [
            "no backend is usable (2 ejected, 1 down by its health checks, 1 not checked yet):"
            " panic mode, picking among all 4"]


def test_probes_picks_and_drains_from_many_threads_leave_nothing_in_flight():
    import threading

    pool = Balancer([A, B, C, D], health_check="/h", health_check_rise=1, health_check_fall=1,
                    rng=random.Random(0))
    stop = threading.Event()
    errors = []

    def traffic():
        try:
            while not stop.is_set():
                backend = pool.pick()
                pool.report(backend, True, 0.001)
        except Exception as exc:          # noqa: BLE001  (any error fails the test)
            errors.append(exc)

    def probes():
        flip = False
        for _ in range(300):
            flip = not flip
            pool.report_probe(B, flip, "status 200" if flip else "status 503")
            pool.update([A, B, C] if flip else [A, B, C, D])

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    probes()
    stop.set()
    for worker in workers:
        worker.join(10)
    assert not errors
    assert all(row["in_flight"] == 0 for row in pool.stats())


KEYS = [f"10.1.{i // 256}.{i % 256}" for i in range(3000)]
FLEET = [f"http://10.0.0.{i}:8080" for i in range(1, 7)]


def owners(pool):
    return {k: pool.lookup(k).url for k in KEYS}


class TestFirstAnswer:
    """A source's first successful answer is its initial list (SEMANTICS: slow start is "not
    at process start for the initial list"; active health: "a backend that exists when
    checking starts is up"); the members of its later answers join."""

    def test_the_first_answers_members_do_not_ramp_and_the_next_ones_do(self, clock):
        pool = Balancer([FLEET[5], DNS], timer=clock, slow_start="30s")
        pool.update(FLEET[:2], source=DNS)
        assert [r["effective_weight"] for r in pool.stats()] == [1, 1, 1]
        pool.update(FLEET[:3], source=DNS)
        assert by_url(pool)[FLEET[2]]["effective_weight"] == 0.1

    def test_the_first_answers_members_are_up_and_the_next_ones_pending(self):
        pool = Balancer([FLEET[5], DNS, "http://b0:1 backup"], health_check="/healthz")
        pool.update(FLEET[:2], source=DNS)
        assert {row["health_check"]["status"] for row in pool.stats()} == {"up"}
        assert {pool.pick().url for _ in range(30)} == {FLEET[5], *FLEET[:2]}
        pool.update(FLEET[:3], source=DNS)
        assert by_url(pool)[FLEET[2]]["health_check"]["status"] == "pending"

    def test_first_is_per_source(self, clock):
        pool = Balancer([DNS, ETCD], timer=clock, slow_start="30s")
        pool.update([A], source=DNS)
        pool.update([A, B], source=DNS)             # DNS's second answer: B joins
        pool.update([C, D], source=ETCD)            # ETCD's first: its initial list
        rows = by_url(pool)
        assert [rows[u]["effective_weight"] for u in (A, B, C, D)] == [1, 0.1, 1, 1]

    def test_a_successful_empty_first_answer_is_the_first(self, clock):
        pool = Balancer([A, DNS], timer=clock, slow_start="30s")
        pool.update([], source=DNS)                 # no records yet: an answer all the same
        pool.update([B], source=DNS)
        assert by_url(pool)[B]["effective_weight"] == 0.1

    def test_a_source_not_in_the_settings_joins(self, clock):
        pool = Balancer([A], timer=clock, slow_start="30s", health_check="/h")
        pool.update([B], source=DNS)                # not there when checking started
        assert by_url(pool)[B]["health_check"]["status"] == "pending"
        assert by_url(pool)[B]["ramp"] is None      # its slow start waits for its first pass
        pool.report_probe(B, True, "status 200")
        assert by_url(pool)[B]["effective_weight"] == 0.1


class TestIpHashJoiners:
    """With active health, a joiner is out of the hash table until its first pass: no key
    moves before it, and then only the joiner's own keys (and Maglev's own disruption, the
    same as between two fresh pools) move to it."""

    def test_no_key_moves_while_a_joiner_is_pending_or_failing(self):
        pool = Balancer(FLEET[:3], policy="ip_hash", health_check="/healthz")
        before = owners(pool)
        pool.update(FLEET[:4])
        assert owners(pool) == before
        for _ in range(5):
            pool.report_probe(FLEET[3], False, "status 503")
        assert owners(pool) == before
        assert {pool.pick(key=k).url for k in KEYS[:300]} <= set(FLEET[:3])

    def test_once_it_passes_its_keys_move_to_it_as_in_a_fresh_pool(self):
        pool = Balancer(FLEET[:3], policy="ip_hash", health_check="/healthz",
                        health_check_rise=2)
        before = owners(pool)
        pool.update(FLEET[:4])
        pool.report_probe(FLEET[3], False, "status 503")    # down: now it needs rise passes
        pool.report_probe(FLEET[3], True, "status 200")
        assert owners(pool) == before
        pool.report_probe(FLEET[3], True, "status 200")
        after = owners(pool)
        assert after == owners(Balancer(FLEET[:4], policy="ip_hash"))
        moved = [k for k in KEYS if after[k] != before[k]]
        assert 0.2 < len(moved) / len(KEYS) < 0.3
        assert sum(1 for k in moved if after[k] != FLEET[3]) <= 3     # Maglev's own: 1 here

    def test_the_table_is_built_outside_the_lock_when_a_joiner_passes(self, monkeypatch):
        import lbmiddleware.core.policies.ip_hash as ip_hash

        pool = Balancer(FLEET[:3], policy="ip_hash", health_check="/healthz")
        built = []
        real = ip_hash.maglev_table
        monkeypatch.setattr(ip_hash, "maglev_table",
                            lambda *args: built.append(pool._lock.locked()) or real(*args))
        pool.update(FLEET[:4])
        assert built == []                  # a pending joiner changes no table
        pool.report_probe(FLEET[3], True, "status 200")
        assert built == [False]
        pool.report_probe(FLEET[3], True, "status 200")     # up already: nothing to build
        assert built == [False]

    def test_membership_changes_build_their_tables_outside_the_lock(self, monkeypatch):
        import lbmiddleware.core.policies.ip_hash as ip_hash

        pool = Balancer([*FLEET[:3], DNS], policy="ip_hash", health_check="/healthz")
        built = []
        real = ip_hash.maglev_table
        monkeypatch.setattr(ip_hash, "maglev_table",
                            lambda *args: built.append(pool._lock.locked()) or real(*args))
        pool.update(FLEET[3:5], source=DNS)     # the first answer: in the table at once
        pool.drain(FLEET[0])                    # held: stays in the table
        pool.update(FLEET[3:6], source=DNS)     # a joiner: not in the table yet
        pool.update(FLEET[:2] + FLEET[3:4], source=None)     # FLEET[2] and FLEET[4] leave...
        pool.update(FLEET[3:4] + FLEET[5:6], source=DNS)
        pool.undrain(FLEET[0])                  # its own table entry all along
        assert built == [False, False, False]

    def test_a_joiner_alone_in_a_pool_still_hashes(self):
        pool = Balancer(DNS, policy="ip_hash", health_check="/healthz")
        pool.update([], source=DNS)
        pool.update(FLEET[:3], source=DNS)      # every member pending: picked all the same
        first = owners(pool)
        assert set(first.values()) == set(FLEET[:3])
        assert {k: pool.pick(key=k).url for k in KEYS[:200]} == {k: first[k] for k in KEYS[:200]}

    def test_a_drained_backend_stays_in_the_table_until_undrained(self):
        pool = Balancer(FLEET, policy="ip_hash")
        before = owners(pool)
        pool.drain(FLEET[0])                # nothing in flight: it leaves at once
        during = owners(pool)
        moved = [k for k in KEYS if during[k] != before[k]]
        assert moved and all(before[k] == FLEET[0] for k in moved)
        assert FLEET[0] not in during.values()
        pool.undrain(FLEET[0])
        assert owners(pool) == before

    def test_a_drained_backend_leaves_the_table_when_its_entry_drops_it(self):
        pool = Balancer(FLEET, policy="ip_hash")
        pool.drain(FLEET[0])
        pool.update(FLEET[1:])
        assert owners(pool) == owners(Balancer(FLEET[1:], policy="ip_hash"))
        pool.update(FLEET)                  # listed again: still held out by drain()
        assert FLEET[0] not in owners(pool).values()


class TestPendingFallback:
    def test_ejected_members_panic_rather_than_send_all_to_an_unprobed_joiner(self):
        pool = Balancer([A, B], health_check="/healthz", max_fails=1, rng=random.Random(1))
        events = listen(pool)
        pool.update([A, B, C])                      # C joins: no traffic before its pass
        for url in (A, B):
            pool.report(pool.pick(exclude=[u for u in (A, B, C) if u != url]), ok=False)
        assert of(events, PanicStarted)
        held = [pool.pick() for _ in range(30)]    # panic over every member: C one of three
        assert Counter(b.url for b in held) == {A: 10, B: 10, C: 10}


class TestLateEnds:
    """A drain that timed out is over: its requests' late ends are ignored, also when the
    same URL came back meanwhile (a new member, whose own requests they are not)."""

    @staticmethod
    def timed_out(clock, **options):
        pool = Balancer([A, B], timer=clock, drain_timeout=5, **options)
        old = [pool.pick(exclude=[B]) for _ in range(3)]
        pool.update([B])                    # A drains with three in flight
        clock.advance(6)
        pool.stats()                        # the drain times out: A leaves
        pool.update([A, B])                 # A is back: a new member
        return pool, old

    def test_a_late_end_does_not_lower_the_new_members_in_flight(self, clock):
        pool, old = self.timed_out(clock, policy="least_conn")
        new = pool.pick(exclude=[B])
        assert new.url == A and new is not old[0]
        pool.report(old[0], True, 0.01)
        pool.release(old[1])
        pool.report_later(old[2], False)
        pool.report(old[0], True, 0.01)         # ended twice: still not the new member's
        assert by_url(pool)[A]["in_flight"] == 1
        assert by_url(pool)[A]["requests"] == 0
        pool.report(new, True)
        assert by_url(pool)[A]["in_flight"] == 0

    def test_late_failures_do_not_eject_the_new_member(self, clock):
        pool, old = self.timed_out(clock, max_fails=3)
        for backend in old:
            pool.report(backend, False)
        assert by_url(pool)[A]["state"] == "healthy"
        assert by_url(pool)[A]["failures"] == 0

    def test_the_same_backend_object_listed_again_is_a_new_one(self, clock):
        a = lb.Backend(A)
        pool = Balancer([a, B], timer=clock, drain_timeout=5)
        old = pool.pick(exclude=[B])
        assert old is a
        pool.update([B])
        clock.advance(6)
        pool.pick()
        pool.update([a, B])                 # the very object the old request holds
        new = pool.pick(exclude=[B])
        assert new == a and new is not a
        pool.report(old, False)
        assert by_url(pool)[A]["in_flight"] == 1
        pool.report(new)
        assert by_url(pool)[A]["in_flight"] == 0

    def test_an_end_picked_before_a_reweight_still_counts_and_is_late_after(self, clock):
        pool = Balancer([A, B], timer=clock, drain_timeout=5)
        first = pool.pick(exclude=[B])
        pool.update([lb.Backend(A, 2), B])      # reweighted: picks return the new object
        second = pool.pick(exclude=[B])
        assert second.weight == 2
        pool.report(first)                      # the same member: it counts
        assert by_url(pool)[A]["in_flight"] == 1
        third = pool.pick(exclude=[B])
        pool.update([lb.Backend(A, 3), B])
        pool.update([B])
        clock.advance(6)
        pool.stats()                            # timed out with second and third in flight
        pool.update([A, B])
        new = pool.pick(exclude=[B])
        for backend in (second, third):
            pool.report(backend, False)
        assert by_url(pool)[A]["in_flight"] == 1 and by_url(pool)[A]["failures"] == 0
        pool.report(new)
        assert by_url(pool)[A]["in_flight"] == 0

    def test_an_equal_backend_built_by_the_caller_still_ends_a_pick(self):
        pool = Balancer([A, B])
        pool.pick(exclude=[B])
        pool.report(lb.Backend(A))
        assert by_url(pool)[A]["in_flight"] == 0

    def test_a_drain_cancelled_by_a_readd_keeps_its_requests(self, clock):
        pool = Balancer([A, B], timer=clock, drain_timeout=5)
        old = pool.pick(exclude=[B])
        pool.update([B])
        pool.update([A, B])                 # back before the drain ended: the same member
        assert by_url(pool)[A]["in_flight"] == 1
        pool.report(old)
        assert by_url(pool)[A]["in_flight"] == 0

    @pytest.mark.parametrize("order", [
        "".join(p) for p in __import__("itertools").permutations("ONRE")])
    def test_every_interleaving_of_old_and_new_ends(self, clock, order):
        """O: the old request ends; N: a new pick of A; R: A is re-added; E: the new pick
        ends (after N). The drain of the old request timed out before all of them."""
        if order.index("E") < order.index("N") or order.index("N") < order.index("R"):
            return                              # a new pick needs A back, an end its pick
        pool = Balancer([A, B], timer=clock, drain_timeout=5, max_fails=1)
        old = pool.pick(exclude=[B])
        pool.update([B])
        clock.advance(6)
        pool.stats()
        new = None
        expected = 0
        for step in order:
            if step == "O":
                pool.report(old, False)
            elif step == "R":
                pool.update([A, B])
            elif step == "N":
                new = pool.pick(exclude=[B])
                expected += 1
            else:
                pool.report(new)
                expected -= 1
            row = by_url(pool).get(A)
            if row is not None:
                assert row["in_flight"] == expected, order
                assert row["state"] == "healthy" and row["failures"] == 0, order

    def test_threads_ending_old_and_new_requests_in_any_order(self, clock):
        """Threads hold requests to A; A leaves, its drain times out, it comes back; each
        thread then picks new requests and ends its old ones (failures) and half its new
        ones (successes) in a shuffled order, all at once: the new member counts exactly
        its own requests, none of its failures, and is not ejected."""
        import threading

        pool = Balancer([A, B], timer=clock, drain_timeout=1, max_fails=1)
        threads, old_each, new_each = 4, 50, 50
        barrier = threading.Barrier(threads + 1, timeout=10)
        errors = []

        def worker(seed):
            try:
                rng = random.Random(seed)
                old = [pool.pick(exclude=[B]) for _ in range(old_each)]
                barrier.wait()                  # the main thread: A leaves and comes back
                barrier.wait()
                new = [pool.pick(exclude=[B]) for _ in range(new_each)]
                ends = [(b, False) for b in old] + [(b, True) for b in new[: new_each // 2]]
                rng.shuffle(ends)
                for backend, ok in ends:
                    pool.report(backend, ok)
                barrier.wait()                  # the main thread counts
                barrier.wait()
                for backend in new[new_each // 2:]:
                    pool.report(backend, True)
            except Exception as exc:          # noqa: BLE001  (any error fails the test)
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(threads)]
        for thread in workers:
            thread.start()
        try:
            barrier.wait()
            pool.update([B])
            clock.advance(2)
            pool.stats()                        # the drain timed out: A left
            pool.update([A, B])
            barrier.wait()
            barrier.wait()
            row = by_url(pool)[A]
            assert row["in_flight"] == threads * (new_each - new_each // 2)
            assert (row["state"], row["failures"]) == ("healthy", 0)
            barrier.wait()
        except BaseException:
            barrier.abort()                     # a failure above frees the workers
            raise
        for thread in workers:
            thread.join(10)
        assert not errors
        row = by_url(pool)[A]
        assert (row["in_flight"], row["requests"]) == (0, threads * new_each)
