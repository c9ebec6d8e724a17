"""etcd as a source and as a registry, against a real etcd (tests/support/etcd.py).

The watcher runs on an asyncio loop of its own thread, as the fleet runs it; the test changes
the keys with etcd's JSON gateway (the support module's urllib calls) and waits, with a short
deadline, for the sets the watcher publishes. Leases use etcd's minimum TTL here (1 s: the
test server's election timeout is 100 ms), so the expiry tests wait about 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest

from lbmiddleware.core.backend import Backend, Source
from lbmiddleware.core.events import Event, SourceFailed, SourceRecovered
from lbmiddleware.discovery import watcher_for
from lbmiddleware.discovery.etcd import EtcdClient, EtcdError, EtcdWatcher, parse_value
from lbmiddleware.discovery.registration import Registration
from lbmiddleware.errors import ConfigError

from ..support.etcd import EtcdServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 5.0          # seconds a test waits for what etcd and the watcher should do


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the tests that neither stop nor compact it (each uses its own prefix)."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path: pathlib.Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own, to kill, restart or compact."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.kill()


class Following:
    """An :class:`EtcdWatcher` running on a loop in a thread: the sets it published and the
    events it emitted."""

    def __init__(self, watcher: EtcdWatcher) -> None:
        self.watcher = watcher
        self.sets: list[tuple[Backend, ...]] = []
        self.events: list[Event] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            self.watcher.run(self.sets.append, self.events.append))

    @property
    def urls(self) -> list[str] | None:
        """The last set's URLs (None before the first)."""
        return [b.url for b in self.sets[-1]] if self.sets else None

    def wait_urls(self, urls: list[str], timeout: float = DEADLINE) -> None:
        wait_until(lambda: self.urls == urls, f"the set is {urls} (last: {self.urls})", timeout)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        except TimeoutError:            # where it is stuck, for the report
            out = io.StringIO()
            self.task.print_stack(file=out)
            raise AssertionError(f"the watcher did not stop:\n{out.getvalue()}") from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        assert self.task.cancelled()        # it ran until cancelled, never ended by itself


@pytest.fixture
def follow() -> Iterator[Callable[..., Following]]:
    made: list[Following] = []

    def start(source: str, client: EtcdClient | None = None) -> Following:
        made.append(Following(EtcdWatcher(Source(source), client=client)))
        return made[-1]

    yield start
    for following in made:
        following.stop()


# -- values -------------------------------------------------------------------------------

SOURCE = Source("etcd://127.0.0.1:2379/services/orders")


@pytest.mark.parametrize(("value", "url", "weight", "priority"), [
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080", 1, 0),
    ("  https://orders-1.internal/api/  ", "https://orders-1.internal/api", 1, 0),
    ("10.0.0.5:8080", "http://10.0.0.5:8080", 1, 0),
    ("[fd00::5]:8080", "http://[fd00::5]:8080", 1, 0),
    ('{"Addr": "10.0.0.5:8080", "Metadata": {"weight": 2, "priority": 1}}',
     "http://10.0.0.5:8080", 2, 1),
    ('{"Op": 0, "Addr": "10.0.0.6:9000", "Metadata": null}', "http://10.0.0.6:9000", 1, 0),
    ('{"Addr": "https://10.0.0.7:8443/v2", "Metadata": {"weight": 3}}',
     "https://10.0.0.7:8443/v2", 3, 0),
])
def test_a_value_is_a_url_a_host_port_or_the_naming_packages_json(value, url, weight, priority):
    backend = parse_value(value.encode(), SOURCE)
    assert (backend.url, backend.weight, backend.priority) == (url, weight, priority)
    assert backend.source == SOURCE.url


@pytest.mark.parametrize(("value", "reason"), [
    ("", "empty"),
    ("garbage", "not a URL, a host:port or a JSON object"),
    ("ftp://10.0.0.5", "scheme 'ftp'"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a URL"),
    ('{"Address": "10.0.0.5:80"}', '"Addr"'),
    ('{"Addr": "10.0.0.5:80", "Metadata": 3}', '"Metadata"'),
    ('{"Addr": "10.0.0.5:80", "Metadata": {"weight": 0}}', "weight 0"),
    ('{"Addr": "10.0.0.5:80", "Metadata": {"weight": true}}', "weight True"),
    ('{"Addr": "10.0.0.5:80", "Metadata": {"priority": -1}}', "priority -1"),
])
def test_a_value_that_names_no_backend_says_why(value, reason):
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[")):
        parse_value(value, SOURCE)


# -- the watcher --------------------------------------------------------------------------

def test_the_watcher_for_an_etcd_source_is_an_etcd_watcher():
    assert isinstance(watcher_for(SOURCE, None), EtcdWatcher)     # type: ignore[arg-type]


def test_it_reads_the_keys_under_the_prefix_and_only_those(etcd, follow):
    etcd.put("read/orders/b", "http://127.0.0.2:8002")
    etcd.put("read/orders/a", "http://127.0.0.2:8001")
    etcd.put("read/orders2/x", "http://127.0.0.9:1")        # another prefix that begins alike
    etcd.put("read/orders", "http://127.0.0.9:2")           # the prefix itself, without the /
    following = follow(etcd.source("read/orders"))
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8002"])
    assert len(following.sets) == 1
    assert following.sets[0][0].source == etcd.source("read/orders")
    status = following.watcher.status
    assert (status.kind, status.backends, status.failing) == ("etcd", 2, False)
    assert status.last_success is not None and status.next_refresh is None
    assert following.events == []


def test_an_empty_prefix_publishes_an_empty_set(etcd, follow):
    following = follow(etcd.source("empty/orders"))
    wait_until(lambda: following.sets == [()], "an empty set published")


def test_puts_and_deletes_are_followed_as_they_happen(etcd, follow):
    following = follow(etcd.source("live/orders"))
    wait_until(lambda: following.sets == [()], "the first (empty) set")
    etcd.put("live/orders/a", "http://127.0.0.2:8001")
    following.wait_urls(["http://127.0.0.2:8001"])
    etcd.put("live/orders/b", '{"Addr": "127.0.0.2:8002", "Metadata": {"weight": 3}}')
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8002"])
    assert following.sets[-1][1].weight == 3
    etcd.put("live/orders/b", '{"Addr": "127.0.0.2:8002", "Metadata": {"priority": 1}}')
    wait_until(lambda: following.sets[-1][1].priority == 1, "b moved to tier 1")
    assert following.sets[-1][1].weight == 1
    etcd.delete("live/orders/a")
    following.wait_urls(["http://127.0.0.2:8002"])
    etcd.put("live/orders/c", "http://127.0.0.2:8003")
    etcd.delete("live/orders/b")
    etcd.delete("live/orders/c")
    wait_until(lambda: following.sets[-1] == (), "every key deleted: an empty set")
    assert following.watcher.reads == 1 and following.watcher.watches == 1


def test_json_values_carry_weight_and_priority(etcd, follow):
    etcd.put("json/orders/a", '{"Addr": "127.0.0.2:8001", "Metadata": {"weight": 2, '
                              '"priority": 0}}')
    etcd.put("json/orders/b", '{"Addr": "127.0.0.3:8001", "Metadata": {"weight": 5, '
                              '"priority": 1}}')
    following = follow(etcd.source("json/orders"))
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.3:8001"])
    assert [(b.weight, b.priority) for b in following.sets[-1]] == [(2, 0), (5, 1)]


def test_a_bad_value_is_skipped_with_one_warning(etcd, follow, caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    etcd.put("bad/orders/a", "http://127.0.0.2:8001")
    etcd.put("bad/orders/b", "not a backend")
    following = follow(etcd.source("bad/orders"))
    following.wait_urls(["http://127.0.0.2:8001"])
    etcd.put("bad/orders/c", "http://127.0.0.2:8003")        # b is parsed once, not again
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8003"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'bad/orders/b'" in warnings[0] and "not a backend" in warnings[0]
    etcd.put("bad/orders/b", '{"Addr": 7}')                  # changed, still bad: warned again
    etcd.put("bad/orders/d", "http://127.0.0.2:8004")
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8003",
                         "http://127.0.0.2:8004"])
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2
    etcd.put("bad/orders/b", "127.0.0.2:8002")               # fixed: counted
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8002",
                         "http://127.0.0.2:8003", "http://127.0.0.2:8004"])


def test_a_url_under_two_keys_counts_once(etcd, follow, caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    etcd.put("twice/orders/a", "http://127.0.0.2:8001")
    etcd.put("twice/orders/b", "127.0.0.2:8001")
    following = follow(etcd.source("twice/orders"))
    following.wait_urls(["http://127.0.0.2:8001"])
    assert ["registers http://127.0.0.2:8001 again" in r.getMessage()
            for r in caplog.records] == [True]


def test_etcd_killed_keeps_the_last_set_and_restarted_is_followed_again(own_etcd, follow):
    etcd = own_etcd
    etcd.put("down/orders/a", "http://127.0.0.2:8001")
    following = follow(etcd.source("down/orders"))
    following.wait_urls(["http://127.0.0.2:8001"])
    etcd.kill()
    wait_until(lambda: following.events, "SourceFailed")
    status = following.watcher.status
    time.sleep(1.5)                     # a retry or two while it is down (back-off 1 s, 1.6 s)
    assert following.urls == ["http://127.0.0.2:8001"]      # the last set stays
    assert len(following.sets) == 1
    [failed] = following.events
    assert isinstance(failed, SourceFailed) and failed.source == etcd.source("down/orders")
    assert "cannot connect to etcd" in failed.error and "Connection refused" in failed.error
    assert 0.8 <= failed.retry_in <= 1.2
    assert status.failing and status.failures >= 1 and status.backends == 1
    assert status.last_error == failed.error and status.next_refresh is not None
    etcd.start()
    wait_until(lambda: len(following.events) == 2, "SourceRecovered")
    recovered = following.events[1]
    assert isinstance(recovered, SourceRecovered) and recovered.outage >= 1.5
    assert not status.failing and status.failures == 0
    assert len(following.sets) == 1     # the same set: not published again
    etcd.put("down/orders/b", "http://127.0.0.2:8002")
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8002"])
    etcd.delete("down/orders/a")
    following.wait_urls(["http://127.0.0.2:8002"])
    assert len(following.events) == 2


def test_etcd_down_from_the_start_publishes_nothing_until_it_answers(tmp_path, follow):
    etcd = EtcdServer(tmp_path / "etcd")
    following = follow(etcd.source("late/orders"))
    try:
        wait_until(lambda: following.events, "SourceFailed")
        assert following.sets == [] and following.watcher.status.backends == 0
        etcd.start()
        etcd.put("late/orders/a", "http://127.0.0.2:8001")
        following.wait_urls(["http://127.0.0.2:8001"])
        assert [type(e) for e in following.events] == [SourceFailed, SourceRecovered]
    finally:
        etcd.kill()


class GatedClient(EtcdClient):
    """A real client whose next watch waits until the test opens the gate: what etcd does
    between a read and its watch (writes, a compaction) is then up to the test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.reached = threading.Event()

    async def watch(self, prefix: str, start_revision: int
                    ) -> AsyncGenerator[dict[str, Any], None]:
        self.reached.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        self.gate.clear()
        async for result in super().watch(prefix, start_revision):
            yield result


def test_a_compacted_watch_reads_the_prefix_again(own_etcd, follow, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    etcd = own_etcd
    etcd.put("compact/orders/a", "http://127.0.0.2:8001")
    client = GatedClient("127.0.0.1", etcd.client_port)
    following = follow(etcd.source("compact/orders"), client=client)
    following.wait_urls(["http://127.0.0.2:8001"])
    assert client.reached.wait(DEADLINE)
    # Between the read and the watch: changes, then their history compacted away.
    etcd.put("compact/orders/b", "http://127.0.0.2:8002")
    etcd.delete("compact/orders/a")
    compacted = etcd.compact()
    client.reached.clear()
    client.gate.set()                   # the watch starts at a compacted revision ...
    following.wait_urls(["http://127.0.0.2:8002"])           # ... and the re-read catches up
    assert following.watcher.reads == 2
    assert any(f"was compacted (now {compacted})" in r.getMessage() for r in caplog.records)
    assert following.events == []       # not an outage
    assert client.reached.wait(DEADLINE)
    client.gate.set()                   # the second watch follows changes again
    etcd.put("compact/orders/c", "http://127.0.0.2:8003")
    following.wait_urls(["http://127.0.0.2:8002", "http://127.0.0.2:8003"])
    assert following.watcher.reads == 2


class ManglingClient(EtcdClient):
    """A real client that slips one malformed event (a key that is not base64) into its first
    watch's stream, right after etcd's own first message: what a broken proxy in front of
    etcd might send."""

    mangled = False

    async def watch(self, prefix: str, start_revision: int
                    ) -> AsyncGenerator[dict[str, Any], None]:
        async for result in super().watch(prefix, start_revision):
            yield result
            if not self.mangled:
                self.mangled = True
                yield {"events": [{"kv": {"key": "not base64!", "value": "eA=="}}]}


def test_a_malformed_watch_event_is_a_lost_watch_not_the_end_of_the_watcher(etcd, follow,
                                                                            caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    etcd.put("mangled/orders/a", "http://127.0.0.2:8001")
    client = ManglingClient("127.0.0.1", etcd.client_port)
    following = follow(etcd.source("mangled/orders"), client=client)
    following.wait_urls(["http://127.0.0.2:8001"])
    wait_until(lambda: following.watcher.reads == 2, "the prefix read again")
    assert any("something unexpected" in r.getMessage() for r in caplog.records)
    etcd.put("mangled/orders/b", "http://127.0.0.2:8002")
    following.wait_urls(["http://127.0.0.2:8001", "http://127.0.0.2:8002"])
    assert following.events == []


# -- registration -------------------------------------------------------------------------

def test_registration_puts_the_key_under_a_lease_kept_alive_and_deletes_it_on_exit(etcd):
    source = etcd.source("reg/orders")
    with Registration(source, "http://127.0.0.2:8001", ttl=1) as registration:
        assert registration.key == "reg/orders/http://127.0.0.2:8001"
        assert etcd.get("reg/orders/") == {
            "reg/orders/http://127.0.0.2:8001": "http://127.0.0.2:8001"}
        lease = etcd.lease_of(registration.key)
        assert lease == registration.lease != 0
        time.sleep(2.5)                 # 2.5 times the TTL: only the keep-alives keep it
        assert etcd.get("reg/orders/") == {
            "reg/orders/http://127.0.0.2:8001": "http://127.0.0.2:8001"}
        assert registration.renewals >= 4 and registration.registrations == 1
    assert etcd.get("reg/orders/") == {}
    assert etcd.lease_ttl(lease) == -1  # revoked
    assert registration.close() is False        # closing again does nothing


def test_an_exit_deletes_the_key_only_while_it_is_still_its_own(etcd):
    """A replacement registered the same URL before the old registration exited (a restart
    that started the new process first): the old one's exit must not unregister the new."""
    source = etcd.source("handover/orders")
    old = Registration(source, "http://127.0.0.2:8001", ttl=2)
    new = Registration(source, "http://127.0.0.2:8001", ttl=2)
    with old, new:
        assert etcd.lease_of(new.key) == new.lease
        old_lease = old.lease
        assert old.close() is False     # not its key any more: left alone
        assert etcd.lease_of(new.key) == new.lease
        assert etcd.lease_ttl(old_lease) == -1          # its lease revoked all the same
    assert etcd.get("handover/orders/") == {}


def test_registration_writes_weight_and_priority_as_the_naming_packages_json(etcd):
    source = etcd.source("meta/orders")
    with Registration(source, "http://127.0.0.2:8001", weight=3, priority=1, ttl="2s"):
        value = etcd.get("meta/orders/")["meta/orders/http://127.0.0.2:8001"]
        assert json.loads(value) == {"Addr": "127.0.0.2:8001",
                                     "Metadata": {"weight": 3, "priority": 1}}
        backend = parse_value(value, Source(source))
        assert (backend.url, backend.weight, backend.priority) == ("http://127.0.0.2:8001", 3, 1)
    with Registration(Source(source), "https://127.0.0.2:8443/api", weight=2, ttl=2):
        [(key, value)] = etcd.get("meta/orders/").items()
        assert key == "meta/orders/https://127.0.0.2:8443/api"
        assert json.loads(value)["Addr"] == "https://127.0.0.2:8443/api"


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:80", "http://10.0.0.5", "http://10.0.0.5:8080", "http://[::1]:80",
    "http://[fd00::5]:8080/base", "https://10.0.0.5", "https://10.0.0.5:443/api",
    "https://orders-1.internal:8443", "http://orders-1.internal/v1/"])
@pytest.mark.parametrize(("weight", "priority"), [(None, None), (2, None), (None, 1), (3, 0)])
def test_what_a_registration_writes_the_watcher_reads_as_the_same_backend(url, weight, priority):
    """Every URL, with or without metadata: the value names the registered backend (a URL on
    its scheme's default port once lost its port in "Addr", which no reader takes)."""
    registration = Registration(SOURCE, url, weight=weight, priority=priority)
    backend = parse_value(registration.value, SOURCE)
    assert backend == registration.backend
    assert (backend.weight, backend.priority) == (weight or 1, priority or 0)
    if weight is not None or priority is not None:
        address = json.loads(registration.value)["Addr"]
        assert address == backend.url or address.rsplit(":", 1)[1].isdigit(), address


def test_registration_keys_tell_every_backend_apart_and_read_as_its_url():
    urls = ["http://10.0.0.5", "https://10.0.0.5", "http://10.0.0.5:8080",
            "https://10.0.0.5:8080", "http://10.0.0.5/a", "http://[::1]:8080"]
    keys = [Registration(SOURCE, url).key for url in urls]
    assert keys == [f"services/orders/{url}" for url in urls]
    assert Registration(SOURCE, "HTTP://10.0.0.5:80/").key == keys[0]     # one backend, one key


def test_registrations_on_default_ports_and_both_schemes_are_all_followed(etcd, follow):
    """Through a real etcd and an EtcdWatcher: http and https on the same host, default ports,
    metadata; none overwrites another and the watcher reads each as registered."""
    source = etcd.source("roundtrip/orders")
    following = follow(source)
    wait_until(lambda: following.sets == [()], "the first (empty) set")
    with (Registration(source, "http://127.0.0.2:80", weight=2, ttl=2),
          Registration(source, "https://127.0.0.2", priority=1, ttl=2),
          Registration(source, "http://127.0.0.2:8001/base", ttl=2)):
        assert len(etcd.get("roundtrip/orders/")) == 3
        wait_until(lambda: following.sets and len(following.sets[-1]) == 3, "three backends")
        assert sorted((b.url, b.weight, b.priority) for b in following.sets[-1]) == [
            ("http://127.0.0.2", 2, 0), ("http://127.0.0.2:8001/base", 1, 0),
            ("https://127.0.0.2", 1, 1)]
    following.wait_urls([])


def test_a_registration_is_followed_by_a_watcher_and_the_async_form_works(etcd, follow):
    source = etcd.source("async/orders")
    following = follow(source)
    wait_until(lambda: following.sets == [()], "the first (empty) set")

    async def serve() -> None:
        async with Registration(source, "http://127.0.0.2:8001", ttl=1) as registration:
            await asyncio.to_thread(following.wait_urls, ["http://127.0.0.2:8001"])
            await asyncio.sleep(1.5)
            assert registration.renewals >= 2
            assert following.urls == ["http://127.0.0.2:8001"]

    asyncio.run(serve())
    following.wait_urls([])


def test_a_lost_lease_is_granted_again_and_the_key_put_again(etcd):
    with Registration(etcd.source("lost/orders"), "http://127.0.0.2:8001", ttl=1) as registration:
        first = registration.lease
        etcd.call("/v3/lease/revoke", {"ID": str(first)})   # as if etcd had lost it
        # The key went with the lease, unless a renewal (every 0.33 s) already put it again.
        assert etcd.lease_of(registration.key) != first
        # The key lands in etcd a moment before the registration's own loop counts it.
        wait_until(lambda: etcd.get("lost/orders/") and registration.registrations == 2,
                   "the key put again and counted", timeout=3)
        assert registration.registrations == 2 and registration.lease != first
        assert etcd.lease_of(registration.key) == registration.lease


class OnceBrokenClient(EtcdClient):
    """A real client whose second keep-alive fails with an error no etcd call should raise
    (a bug's stand-in): the renewals must go on."""

    calls = 0

    async def keepalive(self, lease: int) -> int:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("a bug")
        return await super().keepalive(lease)


def test_an_unexpected_error_in_a_renewal_does_not_stop_the_renewals(etcd, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    registration = Registration(etcd.source("bug/orders"), "http://127.0.0.2:8001", ttl=1)
    registration.client = OnceBrokenClient("127.0.0.1", etcd.client_port)
    with registration:
        time.sleep(2.5)
        assert etcd.get("bug/orders/") and registration.registrations == 1
        assert registration.renewals >= 4
    assert any("RuntimeError: a bug" in r.getMessage() for r in caplog.records)


def test_registration_keeps_renewing_across_an_etcd_restart(own_etcd, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    etcd = own_etcd
    with Registration(etcd.source("restart/orders"), "http://127.0.0.2:8001", ttl=2) as reg:
        etcd.kill()
        wait_until(lambda: any("cannot renew" in r.getMessage() for r in caplog.records),
                   "a failed renewal")
        etcd.start()
        wait_until(lambda: any("renewed again" in r.getMessage() for r in caplog.records)
                   or reg.registrations > 1, "renewing again")
        wait_until(lambda: etcd.get("restart/orders/"), "the key is there")
    assert etcd.get("restart/orders/") == {}
    assert sum("cannot renew" in r.getMessage() for r in caplog.records) == 1


def test_an_exit_with_etcd_down_says_once_when_the_key_goes_and_retry_for_waits_for_etcd(
        own_etcd, caplog):
    """The context manager's exit tries the delete once and logs one line with what follows;
    ``close(retry_for=...)`` keeps trying, so an etcd back in time still deletes the key."""
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    etcd = own_etcd
    registration = Registration(etcd.source("exit/orders"), "http://127.0.0.2:8001", ttl=2)
    with registration:
        etcd.kill()
    assert registration.unregister_error and "Connection refused" in registration.unregister_error
    [line] = [r for r in caplog.records if "could not delete" in r.getMessage()]
    assert line.levelname == "ERROR"
    assert "up to about 2s after etcd is reachable again" in line.getMessage()
    etcd.start()
    caplog.clear()
    registration.__enter__()
    etcd.kill()
    restart = threading.Timer(0.5, etcd.start)
    restart.start()
    try:
        assert registration.close(retry_for=5.0) is True
    finally:
        restart.join()
    assert registration.unregister_error is None and etcd.get("exit/orders/") == {}
    assert [r.levelname for r in caplog.records if "exit/orders" in r.getMessage()] == [
        "INFO", "WARNING", "INFO"], caplog.text     # registered, retrying, deleted


def test_registration_at_an_etcd_that_is_down_raises_etcd_error():
    registration = Registration("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001")
    with pytest.raises(EtcdError, match="cannot connect to etcd at 127.0.0.1:1"):
        registration.__enter__()
    assert registration.close() is False


@pytest.mark.parametrize(("source", "url", "options", "message"), [
    ("dns+http://orders:8080", "http://127.0.0.2:8001", {}, "not an etcd:// source"),
    ("etcd://127.0.0.1:2379", "http://127.0.0.2:8001", {}, "no key prefix"),
    (42, "http://127.0.0.2:8001", {}, "42"),
    ("etcd://127.0.0.1:2379/x", "ftp://127.0.0.2", {}, "'ftp'"),
    ("etcd://127.0.0.1:2379/x", "127.0.0.2:8001", {}, "no scheme"),
    ("etcd://127.0.0.1:2379/x", None, {}, "None"),
    ("etcd://127.0.0.1:2379/x", "http://127.0.0.2", {"ttl": 0.5}, "ttl 0.5"),
    ("etcd://127.0.0.1:2379/x", "http://127.0.0.2", {"ttl": "soon"}, "ttl 'soon'"),
    ("etcd://127.0.0.1:2379/x", "http://127.0.0.2", {"weight": 0}, "weight 0"),
    ("etcd://127.0.0.1:2379/x", "http://127.0.0.2", {"priority": -1}, "priority -1"),
])
def test_registration_refuses_bad_input_naming_the_value(source, url, options, message):
    with pytest.raises(ConfigError, match=message):
        Registration(source, url, **options)


@pytest.mark.parametrize(("ttl", "suggestion"), [
    ("2.5s", "use 2s or 3s"), (2.5, "use 2s or 3s"), ("1500ms", "use 1s or 2s"),
    ("500ms", "use 1s"), (0, "use 1s"), ("10.2s", "use 10s or 11s")])
def test_a_ttl_that_is_not_whole_seconds_is_refused_naming_the_nearest(ttl, suggestion):
    """etcd leases are whole seconds: a TTL between two is refused, not rounded (2.5 s once
    became 3 s silently while 500 ms was refused), and the error names the value and the
    whole seconds around it."""
    with pytest.raises(ConfigError, match=f"ttl {ttl!r}: etcd leases are whole seconds") as caught:
        Registration(SOURCE, "http://127.0.0.2:8001", ttl=ttl)
    assert str(caught.value).endswith(suggestion), caught.value


@pytest.mark.parametrize(("ttl", "seconds"), [("3s", 3), (3, 3), (3.0, 3), ("2000ms", 2),
                                              ("0.1m", 6), ("1m", 60)])
def test_a_whole_ttl_is_taken_as_it_is(ttl, seconds):
    assert Registration(SOURCE, "http://127.0.0.2:8001", ttl=ttl).ttl == seconds


@pytest.mark.parametrize("source", [
    "http://127.0.0.1:2379/services/x", "https://etcd.internal/services/x",
    "dns+http://orders:8080", "srv+http://_http._tcp.orders.service.consul", "services/x"])
def test_a_source_that_is_not_etcd_is_refused_saying_register_takes_etcd_only(source):
    """register writes to etcd only: the error names the value and etcd://, never the
    sources a pool reads (dns+http://, srv+https://, ...) as if they were choices."""
    with pytest.raises(ConfigError) as caught:
        Registration(source, "http://127.0.0.2:8001")
    message = str(caught.value)
    assert f"{source!r} is not an etcd:// source" in message, message
    assert "etcd://host:port/prefix" in message, message
    assert "dns+https" not in message and "srv+" not in message.replace(source, ""), message


# -- python -m lbmiddleware register ----------------------------------------------------------

def register(source: str, url: str, *options: str, log: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "lbmiddleware", "register", source, url, *options],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for process in made:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_register_deletes_the_key_on_sigterm_waits_its_drain_and_exits_0(
        etcd, processes, tmp_path, follow):
    source = etcd.source("cli/orders")
    following = follow(source)
    log = tmp_path / "register.log"
    process = register(source, "http://127.0.0.2:8001", "--ttl", "1s", "--weight", "2",
                       "--drain", "1s", log=log)
    processes.append(process)
    following.wait_urls(["http://127.0.0.2:8001"], timeout=10)
    assert following.sets[-1][0].weight == 2
    time.sleep(1.5)                     # beyond the TTL: the lease is kept alive
    assert etcd.get("cli/orders/")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    following.wait_urls([])             # the key goes first ...
    deleted = time.monotonic() - began
    assert process.poll() is None       # ... while the process still runs (draining)
    assert process.wait(10) == 0
    exited = time.monotonic() - began
    assert deleted < 1.0 and 1.0 <= exited < 3.0, (deleted, exited)
    text = log.read_text()
    assert "registered http://127.0.0.2:8001" in text and "SIGTERM" in text
    assert "draining for 1s" in text and "exiting" in text


def test_register_on_sigint_without_drain_exits_at_once(etcd, processes, tmp_path):
    source = etcd.source("sigint/orders")
    process = register(source, "http://127.0.0.2:8001", log=tmp_path / "register.log")
    processes.append(process)
    wait_until(lambda: etcd.get("sigint/orders/"), "registered", timeout=10)
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(5) == 0
    assert time.monotonic() - began < 1.5
    assert etcd.get("sigint/orders/") == {}


def test_a_killed_register_process_leaves_when_its_lease_expires(etcd, processes, tmp_path,
                                                                 follow):
    source = etcd.source("kill9/orders")
    following = follow(source)
    process = register(source, "http://127.0.0.2:8001", "--ttl", "1s",
                       log=tmp_path / "register.log")
    processes.append(process)
    following.wait_urls(["http://127.0.0.2:8001"], timeout=10)
    began = time.monotonic()
    process.kill()                      # SIGKILL: no cleanup
    process.wait(5)
    following.wait_urls([], timeout=5)  # the lease (1 s) expires, etcd drops the key
    gone = time.monotonic() - began
    assert 0.3 <= gone < 3.5, gone


def test_register_with_bad_arguments_exits_2_and_with_etcd_down_exits_1(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lbmiddleware", "register", *args],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)

    bad = run("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001", "--ttl", "never")
    assert bad.returncode == 2 and "ttl 'never'" in bad.stderr
    bad = run("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001", "--weight", "two")
    assert bad.returncode == 2 and "'two' is not an integer" in bad.stderr
    bad = run("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001", "--drain", "-1s")
    assert bad.returncode == 2 and "--drain" in bad.stderr
    bad = run("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001", "--ttl", "2.5s")
    assert bad.returncode == 2 and "ttl '2.5s'" in bad.stderr and "use 2s or 3s" in bad.stderr
    bad = run("http://127.0.0.1:2379/services/x", "http://127.0.0.2:8001")
    assert bad.returncode == 2, bad.stderr
    assert "'http://127.0.0.1:2379/services/x' is not an etcd:// source" in bad.stderr
    assert "dns+http" not in bad.stderr
    down = run("etcd://127.0.0.1:1/x", "http://127.0.0.2:8001")
    assert down.returncode == 1
    assert "cannot connect to etcd at 127.0.0.1:1: Connection refused" in down.stderr


def test_a_second_signal_while_deregistering_ends_the_wait_at_once_and_exits_1(
        own_etcd, processes, tmp_path):
    """etcd hangs (SIGSTOP) while the key is deleted: a second SIGINT stops waiting for it at
    once, says so and what becomes of the key (its lease), and exits 1: the key may remain."""
    etcd = own_etcd
    log = tmp_path / "register.log"
    process = register(etcd.source("stalled/orders"), "http://127.0.0.2:8001", "--ttl", "3s",
                       "--drain", "30s", log=log)
    processes.append(process)
    wait_until(lambda: etcd.get("stalled/orders/"), "registered", timeout=10)
    etcd.process.send_signal(signal.SIGSTOP)
    try:
        process.send_signal(signal.SIGINT)
        wait_until(lambda: "deregistering" in log.read_text(), "deregistering")
        time.sleep(0.3)
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 1
        assert time.monotonic() - began < 1.5
    finally:
        etcd.process.send_signal(signal.SIGCONT)
    text = log.read_text()
    assert "SIGINT again: stopped waiting for etcd" in text, text
    assert "stalled/orders/http://127.0.0.2:8001" in text
    [stays] = lines_with(text, "until its lease expires")
    assert "up to about 3s after etcd is reachable again" in stays, text
    assert "within" not in text, text
    assert "draining" not in text


def lines_with(text: str, words: str) -> list[str]:
    return [line for line in text.splitlines() if words in line]


def test_a_delete_that_fails_is_tried_again_and_done_when_etcd_returns(own_etcd, processes,
                                                                      tmp_path):
    """etcd down at SIGTERM and back a moment later: the command keeps trying the delete, so a
    short outage does not leave a stopped replica registered (a restarted etcd renews every
    lease: the key would stay a whole TTL more), then drains and exits 0."""
    etcd = own_etcd
    key = "back/orders/http://127.0.0.2:8001"
    log = tmp_path / "register.log"
    process = register(etcd.source("back/orders"), "http://127.0.0.2:8001", "--ttl", "3s",
                       "--drain", "500ms", log=log)
    processes.append(process)
    wait_until(lambda: etcd.get("back/orders/"), "registered", timeout=10)
    etcd.kill()
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: "could not delete" in log.read_text(), "the first delete failed")
    etcd.start()                        # well within the 3.5 s (ttl and drain) it keeps trying
    assert process.wait(10) == 0, log.read_text()
    assert etcd.get("back/orders/") == {}, log.read_text()   # deleted, not renewed by etcd
    text = log.read_text()
    [failed] = lines_with(text, "could not delete")
    assert f"could not delete {key!r}" in failed and "Connection refused" in failed, text
    assert "trying again until etcd answers, for up to 3.5s" in failed, text
    [deleted] = lines_with(text, "deregistered")
    assert f"deleted {key!r} once etcd answered again" in deleted, text
    assert "draining for 500ms" in text and "until its lease expires" not in text, text
    assert "status 1" not in text, text


def test_a_delete_that_fails_until_the_end_says_when_the_key_goes_and_exits_1(
        own_etcd, processes, tmp_path, follow):
    """etcd down from SIGTERM on: the command tries the delete for the lease's TTL and the
    drain, then says once what becomes of the key, truly: a restarted etcd renews every lease,
    so the key stays up to a TTL after etcd is back (checked below), and exits 1."""
    etcd = own_etcd
    source = etcd.source("down/orders")
    key = "down/orders/http://127.0.0.2:8001"
    log = tmp_path / "register.log"
    process = register(source, "http://127.0.0.2:8001", "--ttl", "2s", "--drain", "500ms",
                       log=log)
    processes.append(process)
    wait_until(lambda: etcd.get("down/orders/"), "registered", timeout=10)
    etcd.kill()
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 1
    took = time.monotonic() - began
    assert 2.4 <= took < 4.0, took      # tried for the ttl and the drain (2.5 s), then gave up
    text = log.read_text()
    [failed] = lines_with(text, "could not delete")
    assert f"could not delete {key!r}" in failed and "Connection refused" in failed, text
    [stays] = lines_with(text, "until its lease expires")     # one line per fact
    assert "ERROR" in stays and f"gave up deleting {key!r} after trying for 2.5s" in stays, text
    assert ("up to about 2s after etcd is reachable again, since etcd renews leases when it "
            "restarts") in stays, text
    assert f"pools following {source} keep picking http://127.0.0.2:8001 until then" in stays
    assert "within" not in text and text.rstrip().endswith("exiting with status 1"), text
    # What the line says: etcd back, the key is still there, and goes about a TTL later.
    etcd.start()
    back = time.monotonic()
    assert etcd.get("down/orders/") == {key: "http://127.0.0.2:8001"}
    wait_until(lambda: not etcd.get("down/orders/"), "the lease expired", timeout=5)
    assert 1.5 <= time.monotonic() - back < 3.5


def test_a_second_signal_ends_the_drain_early_and_says_so(etcd, processes, tmp_path):
    log = tmp_path / "register.log"
    process = register(etcd.source("early/orders"), "http://127.0.0.2:8001", "--drain", "30s",
                       log=log)
    processes.append(process)
    wait_until(lambda: etcd.get("early/orders/"), "registered", timeout=10)
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining for 30s" in log.read_text(), "draining")
    assert etcd.get("early/orders/") == {}
    process.send_signal(signal.SIGTERM)
    assert process.wait(5) == 0
    assert "SIGTERM again: ending the drain early" in log.read_text()


def test_an_etcd_that_does_not_answer_is_named_with_the_limit_as_settings_spell_it(servers):
    """A server that reads the request and never answers: the call and the watch each fail
    naming the limit as the settings spell it (core.casts.format_duration: "200ms", not
    "0.2s")."""
    silent = servers("etcd")
    silent.behaviour = "hang"
    host, port = silent.url.removeprefix("http://").rsplit(":", 1)
    client = EtcdClient(host, int(port), timeout=0.2)

    async def failures() -> list[str]:
        texts = []
        with pytest.raises(EtcdError) as call:
            await client.call("/v3/kv/range", {"key": "eA=="})
        texts.append(str(call.value))
        with pytest.raises(EtcdError) as watch:
            async for _ in client.watch("orders/", 1):
                pass
        texts.append(str(watch.value))
        return texts

    assert asyncio.run(failures()) == [
        f"etcd at {host}:{port} did not answer /v3/kv/range within 200ms",
        f"etcd at {host}:{port} did not answer /v3/watch within 200ms",
    ]
