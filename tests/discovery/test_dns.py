"""DNS sources against a real DNS server (dnsmasq on a loopback port, TTL 1 s, records changed
while the watchers run: tests/support/dnsmasq.py). Refresh bounds are lowered through the
settings so that each test takes a second or two at most."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from lbmiddleware.core.backend import Backend, Source
from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.events import SourceFailed, SourceRecovered
from lbmiddleware.core.settings import Settings
from lbmiddleware.discovery import watcher_for
from lbmiddleware.discovery.dns import DnsWatcher, SrvWatcher, parse_server
from lbmiddleware.discovery.watcher import SourceError
from lbmiddleware.errors import ConfigError

from ..support.dnsmasq import free_port

WEB = "web.lb.test"
SVC = "_http._tcp.svc.lb.test"


def settings(server, *, min_refresh=0.05, max_refresh=0.2, **more):
    return Settings(backends=[f"dns+http://{WEB}:8080"], dns_servers=server.address,
                    dns_min_refresh=min_refresh, dns_max_refresh=max_refresh, **more)


def urls(backends):
    return [backend.url for backend in backends]


class Following:
    """Runs a watcher as a task; collects what it publishes and emits."""

    def __init__(self, watcher):
        self.watcher = watcher
        self.sets: list[tuple[Backend, ...]] = []
        self.events: list[object] = []
        self.published_at: list[float] = []

    def publish(self, backends):
        self.sets.append(backends)
        self.published_at.append(time.monotonic())

    @property
    def latest(self):
        return self.sets[-1] if self.sets else None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.watcher.run(self.publish, self.events.append))
        return self

    async def __aexit__(self, *exc_info):
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def until(self, predicate, what, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: sets {self.sets}, "
                            f"events {self.events}, status {self.watcher.status}")
            await asyncio.sleep(0.01)

    async def until_urls(self, expected, timeout=5.0):
        await self.until(lambda: self.latest is not None and urls(self.latest) == expected,
                         f"the set {expected}", timeout)


def change(function, *args):
    """A change to the server, made off the loop (it waits until the server serves it)."""
    return asyncio.to_thread(function, *args)


# -- A and AAAA ---------------------------------------------------------------------------------

def test_a_records_are_followed_as_they_change(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2", "127.0.0.3"])
    watcher = DnsWatcher(Source(f"dns+http://{WEB}:8080/base weight=3 backup"),
                         settings(dnsmasq))

    async def scenario():
        async with Following(watcher) as run:
            await run.until_urls(["http://127.0.0.2:8080/base", "http://127.0.0.3:8080/base"])
            first = run.latest
            await change(dnsmasq.set_addresses, WEB, ["127.0.0.3"])
            await run.until_urls(["http://127.0.0.3:8080/base"])
            await change(dnsmasq.set_addresses, WEB, ["127.0.0.4", "127.0.0.2", "127.0.0.3"])
            await run.until_urls(["http://127.0.0.2:8080/base", "http://127.0.0.3:8080/base",
                                  "http://127.0.0.4:8080/base"])
            return first, run

    first, run = asyncio.run(scenario())
    assert len(run.sets) == 3                  # each set once, however many refreshes
    assert run.events == []
    for backend in first:
        assert backend.server_name == WEB
        assert backend.authority == f"{WEB}:8080"         # Host stays the name
        assert backend.tls_server_name == WEB
        assert backend.source == f"dns+http://{WEB}:8080/base"
        assert (backend.weight, backend.priority) == (3, 1)
    status = watcher.status
    assert status.source == f"dns+http://{WEB}:8080/base" and status.kind == "dns"
    assert status.backends == 3 and status.failing_since is None


def test_aaaa_addresses_are_backends_too_in_brackets_and_deduplicated(dnsmasq):
    dnsmasq.set_addresses(WEB, ["::1", "127.0.0.2", "0:0:0:0:0:0:0:1", "127.0.0.2"])
    watcher = DnsWatcher(f"dns+https://{WEB}/api", settings(dnsmasq))
    answer = asyncio.run(watcher.ask())
    assert urls(answer.backends) == ["https://127.0.0.2/api", "https://[::1]/api"]
    assert [b.authority for b in answer.backends] == [WEB, WEB]
    assert answer.ttl == 1.0


def test_only_aaaa_records(dnsmasq):
    dnsmasq.set_addresses(WEB, ["::1"])
    answer = asyncio.run(DnsWatcher(f"dns+http://{WEB}:8080", settings(dnsmasq)).ask())
    assert urls(answer.backends) == ["http://[::1]:8080"]


class _Middlebox(asyncio.DatagramProtocol):
    """Between the watcher and the real dnsmasq: passes questions on, except those of the
    types in ``drop`` (a middlebox that drops AAAA questions), which go unanswered."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.drop: set[str] = set()
        self.waiting = {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        import dns.message
        import dns.rdatatype
        if addr == self.upstream:
            peer = self.waiting.pop(data[:2], None)
            if peer is not None:
                self.transport.sendto(data, peer)
            return
        question = dns.message.from_wire(data).question[0]
        if dns.rdatatype.to_text(question.rdtype) not in self.drop:
            self.waiting[data[:2]] = addr
            self.transport.sendto(data, self.upstream)


def test_a_family_that_fails_keeps_its_last_addresses_while_the_other_answers(dnsmasq, caplog):
    """AAAA questions dropped: the A answer is used with the last known AAAA addresses, the
    source is not failing, the partial failure is logged once and shows in the status; both
    dropped: the source fails (last set kept); NXDOMAIN to A: the name is gone."""
    import logging
    caplog.set_level(logging.INFO, logger="lbmiddleware.discovery.dns")
    host, port = dnsmasq.address.rsplit(":", 1)
    dnsmasq.set_addresses(WEB, ["127.0.0.2", "::1"])

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, box = await loop.create_datagram_endpoint(
            lambda: _Middlebox((host, int(port))), local_addr=("127.0.0.1", 0))
        s = Settings(backends=[f"dns+http://{WEB}"], dns_min_refresh=0.05, dns_max_refresh=0.2,
                     dns_servers=f"127.0.0.1:{transport.get_extra_info('sockname')[1]}")
        watcher = DnsWatcher(f"dns+http://{WEB}:8080", s, timeout=0.1, lifetime=0.2)
        status = watcher.status
        try:
            async with Following(watcher) as run:
                await run.until_urls(["http://127.0.0.2:8080", "http://[::1]:8080"])
                box.drop = {"AAAA"}
                await change(dnsmasq.set_addresses, WEB, ["127.0.0.3", "::1"])
                await run.until_urls(["http://127.0.0.3:8080", "http://[::1]:8080"])
                await asyncio.sleep(0.6)                    # refreshes while AAAA fails
                assert "AAAA web.lb.test: timeout" in status.last_error
                # the time spelt as the settings spell it (format_duration): "200ms"
                assert re.search(r"timeout after \d+ms asking", status.last_error), (
                    status.last_error)
                assert "1 last known AAAA address" in status.last_error
                assert status.partial and status.failing_since is None
                assert run.events == []
                box.drop = set()
                await run.until(lambda: status.partial is None, "AAAA answered again")
                box.drop = {"A", "AAAA"}
                await run.until(lambda: run.events, "a failure")
                assert isinstance(run.events[0], SourceFailed)
                assert urls(run.latest) == ["http://127.0.0.3:8080", "http://[::1]:8080"]
                box.drop = {"AAAA"}
                await change(dnsmasq.set_addresses, WEB, [])          # NXDOMAIN to A
                await run.until_urls([])
                return run
        finally:
            transport.close()

    asyncio.run(scenario())
    # The way back at the level of the way out, WARNING both (the recovery was INFO: with
    # the gateway at LB_LOG_LEVEL=warning an operator saw the failure and never its end).
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "AAAA" in warnings[0] and WEB in warnings[0], warnings
    assert warnings[1] == f"DNS source dns+http://{WEB}:8080: AAAA {WEB} answered again"
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == []


def test_a_family_that_never_answered_gives_no_addresses_the_other_still_does(dnsmasq):
    host, port = dnsmasq.address.rsplit(":", 1)
    dnsmasq.set_addresses(WEB, ["127.0.0.2", "::1"])

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, box = await loop.create_datagram_endpoint(
            lambda: _Middlebox((host, int(port))), local_addr=("127.0.0.1", 0))
        box.drop = {"A"}
        s = Settings(backends=[f"dns+http://{WEB}"],
                     dns_servers=f"127.0.0.1:{transport.get_extra_info('sockname')[1]}")
        watcher = DnsWatcher(f"dns+http://{WEB}:8080", s, timeout=0.1, lifetime=0.2)
        try:
            return await watcher.ask(), watcher.status
        finally:
            transport.close()

    answer, status = asyncio.run(scenario())
    assert urls(answer.backends) == ["http://[::1]:8080"] and answer.ttl == 1.0
    # Says none are known, not "the 0 last known A addresses".
    assert status.last_error.endswith("the source keeps its fresh AAAA addresses; no A "
                                      "addresses known yet)"), status.last_error


def test_an_international_name_is_asked_and_sent_in_its_ascii_form(dnsmasq):
    dnsmasq.set_addresses("xn--bcher-kva.lb.test", ["127.0.0.2"])
    answer = asyncio.run(DnsWatcher("dns+https://bücher.lb.test:8443",
                                    settings(dnsmasq)).ask())
    assert [(b.url, b.authority, b.tls_server_name) for b in answer.backends] == [
        ("https://127.0.0.2:8443", "xn--bcher-kva.lb.test:8443", "xn--bcher-kva.lb.test")]


def test_a_successful_empty_answer_empties_the_set_until_records_return(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2"])
    watcher = DnsWatcher(f"dns+http://{WEB}:8080", settings(dnsmasq))

    async def scenario():
        async with Following(watcher) as run:
            await run.until_urls(["http://127.0.0.2:8080"])
            await change(dnsmasq.set_addresses, WEB, [])          # NXDOMAIN
            await run.until_urls([])
            await change(dnsmasq.set_addresses, WEB, ["127.0.0.3"])
            await run.until_urls(["http://127.0.0.3:8080"])
            return run

    run = asyncio.run(scenario())
    assert [urls(s) for s in run.sets] == [["http://127.0.0.2:8080"], [],
                                           ["http://127.0.0.3:8080"]]
    assert run.events == []                    # an empty answer is no failure


def test_a_name_without_address_records_is_an_empty_answer(dnsmasq):
    dnsmasq.set_srv(SVC, [(0, 0, 8080, WEB)])  # the name exists, with no A or AAAA: NODATA
    answer = asyncio.run(DnsWatcher(f"dns+http://{SVC}:8080", settings(dnsmasq)).ask())
    assert answer.backends == ()


def test_a_refused_question_is_a_failure_not_an_empty_set(dnsmasq):
    # dnsmasq has no upstream: a name outside its local domain is REFUSED.
    watcher = DnsWatcher("dns+http://web.elsewhere.test:8080", settings(dnsmasq))
    with pytest.raises(SourceError, match="REFUSED"):
        asyncio.run(watcher.ask())


def test_the_refresh_follows_the_ttl_clamped_and_jittered(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2"])
    for min_refresh, max_refresh, base in ((0.05, 5.0, 1.0),      # the TTL: 1 s
                                           (0.05, 0.2, 0.2),      # clamped down
                                           (2.0, 5.0, 2.0)):      # clamped up
        watcher = DnsWatcher(f"dns+http://{WEB}:8080",
                             settings(dnsmasq, min_refresh=min_refresh, max_refresh=max_refresh))

        async def scenario(watcher=watcher):
            async with Following(watcher) as run:
                await run.until(lambda: run.sets, "the first set")
                return watcher.status.next_refresh - watcher.status.last_success

        delay = asyncio.run(scenario())
        assert base * 0.9 - 0.05 <= delay <= base * 1.1, (min_refresh, max_refresh, delay)


# -- SRV ----------------------------------------------------------------------------------------

def test_srv_priorities_become_tiers_and_weights_follow_the_zero_weight_rules(dnsmasq):
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.2"])
    dnsmasq.set_addresses("t2.lb.test", ["127.0.0.3", "::1"])
    dnsmasq.set_srv(SVC, [(10, 5, 8080, "t1.lb.test"),     # tier 0
                          (10, 0, 8081, "t2.lb.test"),     # tier 0, weight 0 -> 1
                          (20, 3, 8082, "t1.lb.test"),     # tier 1
                          (30, 0, 8083, "t2.lb.test"),     # tier 2, all zero -> equal
                          (30, 0, 8084, "t1.lb.test")])
    watcher = SrvWatcher(f"srv+https://{SVC}/base", settings(dnsmasq))
    answer = asyncio.run(watcher.ask())
    assert [(b.url, b.weight, b.priority) for b in answer.backends] == [
        ("https://127.0.0.2:8080/base", 5, 0),
        ("https://127.0.0.3:8081/base", 1, 0),
        ("https://[::1]:8081/base", 1, 0),
        ("https://127.0.0.2:8082/base", 3, 1),
        ("https://127.0.0.2:8084/base", 1, 2),
        ("https://127.0.0.3:8083/base", 1, 2),
        ("https://[::1]:8083/base", 1, 2),
    ]
    for backend in answer.backends:
        assert backend.server_name == "svc.lb.test"          # the service's domain
        assert backend.source == f"srv+https://{SVC}/base"
    assert answer.ttl == 1.0


def test_srv_targets_resolved_through_the_resolver_when_not_in_the_additional_section(dnsmasq):
    # dnsmasq adds the address records only for names it holds; a target it does not hold
    # (outside its domain here: REFUSED) is asked, and its failure is the source's.
    dnsmasq.set_srv(SVC, [(0, 1, 8080, "t.elsewhere.test")])
    with pytest.raises(SourceError, match="t.elsewhere.test"):
        asyncio.run(SrvWatcher(f"srv+http://{SVC}", settings(dnsmasq)).ask())
    # A target without addresses gives no backend, and is no failure.
    dnsmasq.set_srv(SVC, [(0, 1, 8080, "nothing.lb.test"), (0, 1, 8081, "t1.lb.test")])
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.2"])
    answer = asyncio.run(SrvWatcher(f"srv+http://{SVC}", settings(dnsmasq)).ask())
    assert urls(answer.backends) == ["http://127.0.0.2:8081"]


def test_srv_target_dot_means_unavailable(dnsmasq):
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.2"])
    dnsmasq.set_srv(SVC, [(0, 0, 0, ".")])
    answer = asyncio.run(SrvWatcher(f"srv+http://{SVC}", settings(dnsmasq)).ask())
    assert answer.backends == ()
    dnsmasq.set_srv("_http._tcp.none.lb.test", [])
    assert asyncio.run(SrvWatcher("srv+http://_http._tcp.none.lb.test",
                                  settings(dnsmasq)).ask()).backends == ()      # NXDOMAIN


def test_srv_records_are_followed_as_they_change(dnsmasq):
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.2"])
    dnsmasq.set_addresses("t2.lb.test", ["127.0.0.3"])
    dnsmasq.set_srv(SVC, [(1, 1, 8080, "t1.lb.test")])
    # A question asked while the server restarts goes unanswered: retried after 0.2 s.
    watcher = SrvWatcher(f"srv+http://{SVC}", settings(dnsmasq), timeout=0.2)

    async def scenario():
        async with Following(watcher) as run:
            await run.until_urls(["http://127.0.0.2:8080"])
            await change(dnsmasq.set_srv, SVC, [(1, 1, 8080, "t1.lb.test"),
                                                (1, 2, 8080, "t2.lb.test")])
            await run.until_urls(["http://127.0.0.2:8080", "http://127.0.0.3:8080"])
            await change(dnsmasq.set_srv, SVC, [(0, 0, 0, ".")])
            await run.until_urls([])
            await change(dnsmasq.set_srv, SVC, [(1, 1, 8081, "t2.lb.test")])
            await run.until_urls(["http://127.0.0.3:8081"])
            return run

    run = asyncio.run(scenario())
    assert [b.weight for b in run.sets[1]] == [1, 2]


def test_a_1000_record_srv_answer_arrives_whole_over_tcp(dnsmasq):
    for i in range(10):
        dnsmasq.set_addresses(f"b{i}.lb.test", [f"127.0.1.{i}"])
    dnsmasq.set_srv(SVC, [(0, 1 + i % 3, 20000 + i, f"b{i % 10}.lb.test")
                          for i in range(1000)])
    assert dnsmasq.query(SVC, "SRV").flags & 0x0200        # TC: the UDP answer is truncated
    watcher = SrvWatcher(f"srv+http://{SVC}", settings(dnsmasq))
    started = time.perf_counter()
    answer = asyncio.run(watcher.ask())
    elapsed = time.perf_counter() - started
    assert len(answer.backends) == 1000
    assert len({b.url for b in answer.backends}) == 1000
    assert {b.weight for b in answer.backends} == {1, 2, 3}
    assert elapsed < 5.0


# -- outages ------------------------------------------------------------------------------------

def test_a_server_outage_keeps_the_last_set_backs_off_and_follows_again(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2", "127.0.0.3"])
    watcher = DnsWatcher(f"dns+http://{WEB}:8080", settings(dnsmasq), timeout=0.2,
                         lifetime=0.3)

    async def scenario():
        async with Following(watcher) as run:
            await run.until_urls(["http://127.0.0.2:8080", "http://127.0.0.3:8080"])
            await change(dnsmasq.stop)
            await run.until(lambda: run.events, "SourceFailed")
            failed_at = time.monotonic()
            await change(dnsmasq.set_addresses, WEB, ["127.0.0.3"])     # read at start
            await change(dnsmasq.start)
            await run.until_urls(["http://127.0.0.3:8080"])
            return run, failed_at, time.monotonic()

    run, failed_at, recovered_at = asyncio.run(scenario())
    assert [urls(s) for s in run.sets] == [["http://127.0.0.2:8080", "http://127.0.0.3:8080"],
                                           ["http://127.0.0.3:8080"]]   # nothing in between
    failed, recovered = run.events
    assert isinstance(failed, SourceFailed) and isinstance(recovered, SourceRecovered)
    assert failed.source == recovered.source == f"dns+http://{WEB}:8080"
    assert "timeout" in failed.error
    assert 0.8 <= failed.retry_in <= 1.2                    # the first back-off: 1 s +-20%
    assert recovered.outage >= failed.retry_in - 0.01        # no retry before the back-off
    assert recovered_at - failed_at < 5.0
    assert watcher.status.failing_since is None and watcher.status.last_error is not None


def test_an_outage_before_the_first_answer_publishes_nothing(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2"])
    dnsmasq.stop()
    watcher = DnsWatcher(f"dns+http://{WEB}:8080", settings(dnsmasq), timeout=0.1,
                         lifetime=0.15)

    async def scenario():
        async with Following(watcher) as run:
            await run.until(lambda: run.events, "SourceFailed")
            await change(dnsmasq.start)
            await run.until_urls(["http://127.0.0.2:8080"])
            return run

    run = asyncio.run(scenario())
    assert len(run.sets) == 1
    assert [type(e) for e in run.events] == [SourceFailed, SourceRecovered]


def test_a_server_down_at_start_is_known_before_the_pool_stops_waiting(dnsmasq, caplog):
    # The default question lifetime: the first failure arrives within the constructor's
    # wait, so it is logged, shown in source_stats() and named by a pick's error.
    from lbmiddleware.discovery.dns import DEFAULT_LIFETIME
    from lbmiddleware.fleet.pool import FIRST_ANSWER_TIMEOUT
    assert DEFAULT_LIFETIME < FIRST_ANSWER_TIMEOUT
    import lbmiddleware as lb
    dnsmasq.stop()
    source = f"dns+http://{WEB}:8080"
    started = time.monotonic()
    with lb.Balancer([source], dns_servers=dnsmasq.address) as pool:
        waited = time.monotonic() - started
        [row] = pool.source_stats()
        with pytest.raises(lb.NoHealthyBackend) as caught:
            pool.pick()
    assert waited < FIRST_ANSWER_TIMEOUT
    assert row["last_error"] is not None and "timeout" in row["last_error"]
    assert row["failing_since"] is not None
    assert str(caught.value) == (f"the pool has no backends: source {source} is failing "
                                 f"({row['last_error']})")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"source {source} failed: {row['last_error']} (no backends yet; retry in "
        f"{row['next_refresh'] - row['last_error_at']:.3g}s)"]


# -- wiring -------------------------------------------------------------------------------------

def test_watcher_for_picks_the_watcher_by_kind(dnsmasq):
    s = settings(dnsmasq)
    assert isinstance(watcher_for(Source(f"dns+http://{WEB}"), s), DnsWatcher)
    assert isinstance(watcher_for(Source(f"srv+http://{SVC}"), s), SrvWatcher)
    from lbmiddleware.discovery.etcd import EtcdWatcher
    assert isinstance(watcher_for(Source("etcd://127.0.0.1:2379/services/x"), s), EtcdWatcher)
    with pytest.raises(ConfigError, match="srv"):
        SrvWatcher(f"dns+http://{WEB}", s)


def test_dns_servers_are_split_into_address_and_port():
    assert parse_server("127.0.0.1:8600") == ("127.0.0.1", 8600)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    assert parse_server("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_server("::1") == ("::1", 53)
    with pytest.raises(ConfigError):
        parse_server("dns.example:53")
    with pytest.raises(ConfigError, match=r"ambiguous: write \[::1\]:8600"):
        parse_server("::1:8600")             # the settings' rule: port or address?


# -- many sources in one pool -------------------------------------------------------------------

def test_many_sources_and_static_backends_combine_in_one_core_balancer(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2", "127.0.0.3"])
    dnsmasq.set_addresses("api.lb.test", ["127.0.0.5"])
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.4"])
    dnsmasq.set_srv(SVC, [(1, 2, 8081, "t1.lb.test")])
    web = Source(f"dns+http://{WEB}:8080")
    svc = Source(f"srv+http://{SVC}")
    api = Source("dns+http://api.lb.test:9090 backup")
    s = Settings(backends=["http://127.0.0.9:8080", web, svc, api],
                 dns_servers=dnsmasq.address, dns_min_refresh=0.05, dns_max_refresh=0.2)
    pool = Balancer(settings=s)

    def members():
        return sorted((b.url, b.priority, b.source) for b in pool.backends)

    async def scenario():
        runs = []
        for source in s.sources:
            watcher = watcher_for(source, s)
            watcher.timeout = 0.2      # a question lost in a restart is asked again soon
            run = Following(watcher)
            run.publish = lambda b, source=source: pool.update(b, source=source)
            runs.append(run)
            await run.__aenter__()
        try:
            async def until(expected):
                await runs[0].until(lambda: members() == expected, f"members {expected}")

            await until([("http://127.0.0.2:8080", 0, web.url),
                         ("http://127.0.0.3:8080", 0, web.url),
                         ("http://127.0.0.4:8081", 0, svc.url),
                         ("http://127.0.0.5:9090", 1, api.url),
                         ("http://127.0.0.9:8080", 0, None)])
            picked = {pool.pick().url for _ in range(200)}
            await change(dnsmasq.set_addresses, WEB, [])        # one source empties
            await until([("http://127.0.0.4:8081", 0, svc.url),
                         ("http://127.0.0.5:9090", 1, api.url),
                         ("http://127.0.0.9:8080", 0, None)])
            await change(dnsmasq.set_srv, SVC, [(5, 1, 8081, "t1.lb.test"),
                                                (7, 1, 8082, "t1.lb.test")])
            await until([("http://127.0.0.4:8081", 0, svc.url),
                         ("http://127.0.0.4:8082", 1, svc.url),
                         ("http://127.0.0.5:9090", 1, api.url),
                         ("http://127.0.0.9:8080", 0, None)])
            return picked
        finally:
            for run in runs:
                await run.__aexit__(None, None, None)

    picked = asyncio.run(scenario())
    # Tier 0 (the static backend, web's two, svc's one) takes every pick; api is a backup.
    assert picked == {"http://127.0.0.2:8080", "http://127.0.0.3:8080",
                      "http://127.0.0.4:8081", "http://127.0.0.9:8080"}
    assert pool.pick().url in {"http://127.0.0.4:8081", "http://127.0.0.9:8080"}
    pool.update([])                        # the static list empties: the sources' stay
    assert {b.url for b in pool.backends} == {"http://127.0.0.4:8081", "http://127.0.0.4:8082",
                                              "http://127.0.0.5:9090"}


def test_an_address_instead_of_a_name_is_its_own_answer(dnsmasq):
    answer = asyncio.run(DnsWatcher("dns+http://127.0.0.2:8080", settings(dnsmasq)).ask())
    assert urls(answer.backends) == ["http://127.0.0.2:8080"]
    assert answer.backends[0].server_name is None
    assert answer.ttl is None                  # refreshed every min_refresh: nothing to ask
    answer = asyncio.run(DnsWatcher("dns+http://[::1]:8080", settings(dnsmasq)).ask())
    assert urls(answer.backends) == ["http://[::1]:8080"]


def test_every_configured_server_is_tried_in_turn(dnsmasq):
    dnsmasq.set_addresses(WEB, ["127.0.0.2"])
    s = Settings(backends=[f"dns+http://{WEB}"], dns_servers=f"127.0.0.1:{free_port()},"
                 f"{dnsmasq.address}")                     # the first answers nothing
    watcher = DnsWatcher(f"dns+http://{WEB}", s, timeout=0.2, lifetime=2.0)
    assert watcher.describe_servers().endswith(dnsmasq.address)
    answer = asyncio.run(watcher.ask())
    assert urls(answer.backends) == ["http://127.0.0.2"]


def test_an_srv_name_without_service_labels_is_its_own_server_name(dnsmasq):
    # Consul answers SRV for orders.service.consul as well as for its RFC 2782 form.
    dnsmasq.set_addresses("t1.lb.test", ["127.0.0.2"])
    dnsmasq.set_srv("orders.lb.test", [(1, 1, 8080, "t1.lb.test")])
    answer = asyncio.run(SrvWatcher("srv+http://orders.lb.test", settings(dnsmasq)).ask())
    assert [(b.url, b.server_name, b.authority) for b in answer.backends] == [
        ("http://127.0.0.2:8080", "orders.lb.test", "orders.lb.test:8080")]


class _Servfail(asyncio.DatagramProtocol):
    """A broken resolver: answers every question SERVFAIL."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        import dns.message
        import dns.rcode
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode(dns.rcode.SERVFAIL)
        self.transport.sendto(response.to_wire(), addr)


def test_servfail_is_a_failure_not_an_empty_set():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_Servfail,
                                                           local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        s = Settings(backends=[f"dns+http://{WEB}"], dns_servers=f"127.0.0.1:{port}")
        try:
            with pytest.raises(SourceError, match=f"SERVFAIL from Do53:127.0.0.1@{port}"):
                await DnsWatcher(f"dns+http://{WEB}", s).ask()
            with pytest.raises(SourceError, match="SERVFAIL"):
                await SrvWatcher(f"srv+http://{SVC}", s).ask()
        finally:
            transport.close()

    asyncio.run(scenario())


def test_dnspython_is_imported_by_the_first_question_not_before():
    import subprocess
    import sys
    code = ("import sys; from lbmiddleware.core.backend import Source; "
            "from lbmiddleware.core.settings import Settings; "
            "from lbmiddleware.discovery import watcher_for; "
            "watcher_for(Source('srv+http://_h._tcp.a.test'), Settings(backends=['http://a'])); "
            "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_without_dnspython_a_dns_source_fails_naming_the_extra():
    import subprocess
    import sys
    code = ("import asyncio, sys; sys.modules['dns'] = None; "
            "from lbmiddleware.core.settings import Settings; "
            "from lbmiddleware.discovery.dns import DnsWatcher; "
            "w = DnsWatcher('dns+http://a.test', Settings(backends=['http://a'])); "
            "asyncio.run(w.ask())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "pip install 'lbmiddleware[dns]'" in result.stderr
