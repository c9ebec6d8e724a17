"""The public Balancer: the core's pool plus its sources' watchers and its health checks on
the fleet's loop. Here a source is followed by a test watcher with the discovery watchers'
interface (``status``, ``run(publish, emit)``), plugged in through the pool's ``watcher``
step; the real DNS and etcd watchers and the prober have their own tests, and the front-ends'
tests run them against real servers."""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import subprocess
import sys
import threading
import time

import lbmiddleware as lb
from lbmiddleware.core import balancer as core_balancer
from lbmiddleware.core.events import Event, MembershipChanged, SourceFailed
from lbmiddleware.discovery.status import SourceStatus
from lbmiddleware.fleet import loop
from lbmiddleware.fleet import pool as fleet_pool

from ..support.forking import in_forked_child
from ..support.waiting import LoopTicks, wait_for

SOURCE = "dns+http://orders.test:8080"
OTHER = "dns+http://billing.test:8080"


class SetsWatcher:
    """Publishes the sets (or emits the events) a test puts in, in order; records its runs
    and its cancellation."""

    def __init__(self, source: str, *first: str) -> None:
        self.source = lb.Source(source)
        self.status = SourceStatus(self.source.url, self.source.kind)
        self.queue: queue.SimpleQueue[tuple[lb.Backend, ...] | Event | Exception] = (
            queue.SimpleQueue())
        self.runs = 0
        self.published: list[tuple[lb.Backend, ...]] = []
        self.cancelled = threading.Event()
        if first:
            self.put(*first)

    def put(self, *urls: str) -> None:
        self.queue.put(tuple(lb.Backend(url, source=self.source.url) for url in urls))

    async def run(self, publish, emit) -> None:
        self.runs += 1
        try:
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.002)
                    continue
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, tuple):
                    publish(item)
                    self.published.append(item)
                    self.status.backends = len(item)
                    self.status.last_success = time.monotonic()
                else:
                    emit(item)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def pool_of(watchers: list[SetsWatcher], *static: str, **options) -> lb.Balancer:
    by_url = {w.source.url: w for w in watchers}

    class Pool(lb.Balancer):
        def watcher(self, source):
            return by_url[source.url]

    return Pool([*static, *(w.source.text for w in watchers)], **options)


def test_the_public_balancer_is_the_fleets_and_extends_the_core():
    assert lb.Balancer is fleet_pool.Balancer
    assert issubclass(lb.Balancer, core_balancer.Balancer)
    assert isinstance(lb.Balancer.from_env({"LB_BACKENDS": "http://a:1"}), lb.Balancer)


def test_a_static_pool_starts_nothing_and_imports_neither_discovery_nor_probes():
    script = (
        "import sys, threading\n"
        "import lbmiddleware as lb\n"
        "with lb.Balancer(['http://a:1', 'http://b:1 backup']) as pool:\n"
        "    pool.pick(); assert pool.source_stats() == []\n"
        "loaded = [m for m in sys.modules if m.startswith(('lbmiddleware.discovery',"
        " 'lbmiddleware.probes', 'lbmiddleware.fleet.loop'))]\n"
        "assert loaded == [] and threading.active_count() == 1, (loaded, threading.enumerate())\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)


def test_a_source_publishes_through_update_and_the_pool_waited_for_its_first_answer():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:8080", "http://127.0.0.3:8080")
    with pool_of([watcher], "http://static:1") as pool:
        # the constructor returned after the source's first answer: its members are there
        assert [b.url for b in pool.backends] == [
            "http://static:1", "http://127.0.0.2:8080", "http://127.0.0.3:8080"]
        assert {b.source for b in pool.backends} == {None, SOURCE}
        changes: list[MembershipChanged] = []
        pool.subscribe(lambda e: changes.append(e) if isinstance(e, MembershipChanged) else None)
        watcher.put("http://127.0.0.3:8080")
        assert wait_for(lambda: len(changes) == 1)
        assert wait_for(lambda: "http://127.0.0.2:8080" not in
                          {b.url for b in pool.backends})   # (after its drain)
        assert changes[0].source == SOURCE
        [row] = pool.source_stats()
        assert row["url"] == SOURCE and row["kind"] == "dns" and row["backends"] == 1
        assert set(row) >= {"url", "kind", "backends", "last_success", "last_error",
                            "last_error_at", "next_refresh", "failing_since", "partial"}
        assert row["partial"] is None


def test_source_stats_show_a_partial_failure():
    """A source answering with one part failing (a DNS name whose AAAA question fails: see
    discovery/dns.py) is not failing, and its row says what fails, until it answers again."""
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:8080")
    with pool_of([watcher]) as pool:
        watcher.status.partial = watcher.status.last_error = "AAAA orders.internal: timed out"
        [row] = pool.source_stats()
        assert row["partial"] == "AAAA orders.internal: timed out"
        assert row["failing_since"] is None and row["backends"] == 1
        watcher.status.partial = None
        [row] = pool.source_stats()
        assert row["partial"] is None


def test_several_sources_each_follow_their_own_set():
    first, second = SetsWatcher(SOURCE, "http://127.0.0.2:1"), SetsWatcher(OTHER, "http://127.0.0.4:1")
    with pool_of([first, second]) as pool:
        assert [b.url for b in pool.backends] == ["http://127.0.0.2:1", "http://127.0.0.4:1"]
        second.put("http://127.0.0.4:1", "http://127.0.0.5:1")
        assert wait_for(lambda: len(pool.backends) == 3)
        assert [row["url"] for row in pool.source_stats()] == [SOURCE, OTHER]


def test_a_source_event_reaches_the_pools_listeners(caplog):
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    with pool_of([watcher]) as pool:
        seen: list[Event] = []
        pool.subscribe(seen.append)
        failed = SourceFailed(SOURCE, "SERVFAIL", 1.0)
        watcher.queue.put(failed)
        assert wait_for(lambda: failed in seen)


def test_close_stops_the_sources_once_and_the_members_stay():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    pool = pool_of([watcher])
    pool.close()
    assert watcher.cancelled.is_set()           # close() waited for the task to end
    watcher.put("http://127.0.0.9:1")
    time.sleep(0.05)
    assert [b.url for b in pool.backends] == ["http://127.0.0.2:1"]
    assert pool.pick().url == "http://127.0.0.2:1"
    pool.close()                                # idempotent
    assert watcher.runs == 1


def test_leaving_a_with_block_closes_the_pool():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    with pool_of([watcher]) as pool:
        assert not watcher.cancelled.is_set()
    assert watcher.cancelled.is_set()
    assert pool.pick()


def test_close_from_the_fleets_own_thread_does_not_wait_for_itself():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    pool = pool_of([watcher])

    async def close_here() -> None:
        pool.close()                # on the loop: it cannot wait for the task, and does not

    started = time.monotonic()
    loop.submit(close_here()).result(5)
    assert time.monotonic() - started < 1.0
    assert watcher.cancelled.wait(5)


def test_aclose_waits_without_blocking_the_callers_loop():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    pool = pool_of([watcher])

    async def main() -> None:
        ticks = LoopTicks(0)
        await pool.aclose()
        ticks.stop()
        assert ticks.count > 0
        assert watcher.cancelled.is_set()

    asyncio.run(main())
    pool.close()                    # and close() after it is a no-op


def test_a_pool_dropped_without_close_stops_its_sources():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    pool = pool_of([watcher])
    del pool
    gc.collect()
    assert watcher.cancelled.wait(5)


def test_the_constructor_waits_for_a_silent_source_only_so_long(monkeypatch):
    monkeypatch.setattr(fleet_pool, "FIRST_ANSWER_TIMEOUT", 0.2)
    watcher = SetsWatcher(SOURCE)                   # never answers
    started = time.monotonic()
    with pool_of([watcher], "http://static:1") as pool:
        assert 0.15 < time.monotonic() - started < 2
        assert [b.url for b in pool.backends] == ["http://static:1"]


def test_in_a_running_loop_the_constructor_returns_at_once_and_ready_waits_without_blocking():
    watcher = SetsWatcher(SOURCE)                   # answers when the test puts a set

    async def main() -> None:
        ticks = LoopTicks()
        started = time.monotonic()
        pool = pool_of([watcher], "http://static:1")        # as in an async function
        assert time.monotonic() - started < 1.0             # not FIRST_ANSWER_TIMEOUT (5 s)
        assert [b.url for b in pool.backends] == ["http://static:1"]
        asyncio.get_running_loop().call_later(0.2, watcher.put, "http://127.0.0.2:1")
        before = ticks.count
        assert await pool.ready() is True
        assert 0.15 < time.monotonic() - started < 4
        assert ticks.count - before >= 10         # the loop served the other task meanwhile
        assert [b.url for b in pool.backends] == ["http://static:1", "http://127.0.0.2:1"]
        started = time.monotonic()
        assert await pool.ready() is True   # once ready: at once (not the 5 s wait)
        assert time.monotonic() - started < 1.0
        ticks.stop()
        await pool.aclose()

    asyncio.run(main())


def test_ready_waits_for_a_silent_source_only_so_long(monkeypatch):
    monkeypatch.setattr(fleet_pool, "FIRST_ANSWER_TIMEOUT", 0.2)
    watcher = SetsWatcher(SOURCE)                   # never answers

    async def main() -> None:
        pool = pool_of([watcher], "http://static:1")
        started = time.monotonic()
        assert await pool.ready() is False          # until 0.2 s after the construction
        assert 0.1 < time.monotonic() - started < 2
        started = time.monotonic()
        assert await pool.ready() is False          # past that: at once
        assert time.monotonic() - started < 0.15    # (less than a whole 0.2 s wait)
        assert await pool.ready(timeout=0.05) is False     # or as long as asked
        assert 0.04 < time.monotonic() - started < 1
        assert pool.pick().url == "http://static:1"
        await pool.aclose()

    asyncio.run(main())


def test_ready_is_at_once_for_a_pool_built_outside_a_loop_or_without_sources():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    with pool_of([watcher]) as pool, lb.Balancer(["http://a:1"]) as static:
        assert asyncio.run(pool.ready(timeout=0)) is True   # the constructor waited
        assert asyncio.run(static.ready(timeout=0)) is True


def test_a_crashed_watcher_is_logged_and_started_again(monkeypatch, caplog):
    monkeypatch.setattr(fleet_pool, "RESTART_DELAY", 0.01)
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    with pool_of([watcher]) as pool, caplog.at_level(logging.ERROR, "lbmiddleware"):
        watcher.queue.put(RuntimeError("a bug"))
        watcher.put("http://127.0.0.3:1")
        assert wait_for(lambda: watcher.runs == 2)
        assert wait_for(lambda: [b.url for b in pool.backends][-1] == "http://127.0.0.3:1")
    assert "crashed" in caplog.text and "a bug" in caplog.text


def test_a_forked_child_follows_its_sources_on_its_own_loop():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:1")
    with pool_of([watcher]) as pool:
        def child() -> bytes:   # the parent's task does not run here: the child's own does
            watcher.put("http://127.0.0.7:1")
            if not wait_for(lambda: "http://127.0.0.7:1" in {b.url for b in pool.backends}):
                raise RuntimeError("the child's pool never took the new set")
            return str(watcher.runs).encode()

        forked = in_forked_child(child)
        runs = forked.output.decode()
        assert forked.exit_code == 0
        assert runs == "2"
        assert watcher.runs == 1


def test_a_dns_source_without_dnspython_names_the_extra():
    script = (
        "import sys\n"
        "sys.modules['dns'] = None\n"          # as if dnspython were not installed
        "import lbmiddleware as lb\n"
        "try:\n"
        "    lb.Balancer(['dns+http://orders.test:8080'])\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, timeout=30,
                         capture_output=True, text=True).stdout
    assert "pip install 'lbmiddleware[dns]'" in out
    assert "dns+http://orders.test:8080" in out
