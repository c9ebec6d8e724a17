"""The prober's schedule and membership, against a recording fake of the pool (the probe
itself replaced through the ``check`` hook: what is under test here is when and how often it
runs, not the I/O, which test_check.py and test_active_health.py test on real servers).

The waits are recorded rather than slept (``sleep=``), so the first delays and the jitter are
checked exactly, without a clock; the tests that need real time keep it to a fraction of a
second.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import threading
import types

import pytest

import lbmiddleware as lb
from lbmiddleware.core.events import MembershipChanged
from lbmiddleware.errors import ConfigError
from lbmiddleware.probes import JITTER, Prober


def settings(**overrides):
    values = {"health_check": "/healthz", "health_check_interval": 1.0,
              "health_check_timeout": 0.5, "health_check_statuses": ((200, 399),)}
    values.update(overrides)
    return types.SimpleNamespace(**values)


def membership_changed(added, removed, members):
    fields = {"added": tuple(added), "removed": tuple(removed), "reweighted": (),
              "members": tuple(members)}
    if "source" in {field.name for field in dataclasses.fields(MembershipChanged)}:
        fields["source"] = None
    return MembershipChanged(**fields)


class FakePool:
    """The three calls the prober makes, recorded; ``update`` tells the listeners as the
    Balancer does (synchronously, on the caller's thread)."""

    def __init__(self, urls):
        self._backends = tuple(lb.Backend(url) for url in urls)
        self.listeners = []
        self.reports = []           # (url, ok, reason)
        self.reported = asyncio.Event()
        self.fail_reports = False

    @property
    def backends(self):
        return self._backends

    def subscribe(self, listener):
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def report_probe(self, backend, ok, reason=""):
        self.reports.append((backend.url, ok, reason))
        self.reported.set()
        if self.fail_reports:
            raise RuntimeError("the pool broke")

    def update(self, urls):
        new = tuple(lb.Backend(url) if isinstance(url, str) else url for url in urls)
        old = {backend.url for backend in self._backends}
        added = [b for b in new if b.url not in old]
        removed = [b for b in self._backends if b.url not in {n.url for n in new}]
        self._backends = new
        for listener in list(self.listeners):
            listener(membership_changed(added, removed, new))

    def count(self, url):
        return sum(1 for report in self.reports if report[0] == url)


class RecordedSleeps:
    """``sleep=``: records each wait under the waiting task's name and only yields."""

    def __init__(self):
        self.delays = collections.defaultdict(list)

    async def __call__(self, delay):
        self.delays[asyncio.current_task().get_name()].append(delay)
        await asyncio.sleep(0)


class Instant(Prober):
    """A prober whose probe answers at once (``results`` maps a URL to its answer)."""

    results: dict = {}
    started: list

    async def check(self, backend):
        self.__dict__.setdefault("started", []).append(backend.url)
        await asyncio.sleep(0)
        return self.results.get(backend.url, (True, "status 200"))


URLS = [f"http://127.0.0.1:{9000 + k}" for k in range(4)]


async def until(condition, limit=5.0):
    """Wait until ``condition()`` holds; AssertionError after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.001)


async def run_until(prober, condition, limit=5.0):
    """Run ``prober`` until ``condition()`` holds (bounded), then cancel it."""
    task = asyncio.create_task(prober.run())
    try:
        await until(condition, limit)
    finally:
        task.cancel()
        await asyncio.wait([task])
    return task


def test_first_probes_are_spread_over_one_interval_and_later_ones_jittered():
    async def scenario():
        pool = FakePool(URLS)
        sleeps = RecordedSleeps()
        prober = Instant(pool, settings(health_check_interval=2.0), rng=random.Random(7),
                         sleep=sleeps)
        await run_until(prober, lambda: all(pool.count(url) >= 20 for url in URLS))
        return sleeps.delays

    delays = asyncio.run(scenario())
    for k, url in enumerate(URLS):
        waits = delays[f"probe {url}"]
        assert waits[0] == pytest.approx(k * 2.0 / len(URLS))         # k * interval / N
        later = waits[1:]
        assert len(later) >= 19
        assert all(2.0 * (1 - JITTER) <= wait <= 2.0 * (1 + JITTER) for wait in later)
        assert len(set(later)) == len(later)            # drawn, not one fixed value
    every = [wait for waits in delays.values() for wait in waits[1:]]
    assert min(every) < 1.9 and max(every) > 2.1        # the whole +-10% is used


def test_the_same_seed_gives_the_same_schedule():
    async def scenario(seed):
        pool = FakePool(URLS[:1])
        sleeps = RecordedSleeps()
        prober = Instant(pool, settings(), rng=random.Random(seed), sleep=sleeps)
        await run_until(prober, lambda: pool.count(URLS[0]) >= 10)
        return sleeps.delays[f"probe {URLS[0]}"][:10]

    assert asyncio.run(scenario(3)) == asyncio.run(scenario(3))
    assert asyncio.run(scenario(3)) != asyncio.run(scenario(4))


def test_every_result_is_reported_with_its_reason():
    async def scenario():
        pool = FakePool(URLS[:2])
        prober = Instant(pool, settings(), rng=random.Random(1), sleep=RecordedSleeps())
        prober.results = {URLS[1]: (False, "status 503")}
        await run_until(prober, lambda: all(pool.count(url) >= 3 for url in URLS[:2]))
        return pool.reports

    reports = asyncio.run(scenario())
    assert {(url, ok, reason) for url, ok, reason in reports} == {
        (URLS[0], True, "status 200"), (URLS[1], False, "status 503")}


def test_a_joining_backend_is_probed_within_a_tenth_of_an_interval_and_a_removed_one_stops():
    async def scenario():
        pool = FakePool(URLS[:2])
        sleeps = RecordedSleeps()
        prober = Instant(pool, settings(health_check_interval=5.0), rng=random.Random(2),
                         sleep=sleeps)
        task = asyncio.create_task(prober.run())
        await until(lambda: pool.count(URLS[0]) >= 3)
        pool.update([URLS[1], URLS[2], URLS[3]])        # 0 leaves; 2 and 3 join
        await until(lambda: pool.count(URLS[2]) >= 3 and pool.count(URLS[3]) >= 3)
        left_at = pool.count(URLS[0])
        watched = prober.watched
        # Probing goes on for the others while 0 stays quiet.
        target = pool.count(URLS[1]) + 5
        await until(lambda: pool.count(URLS[1]) >= target)
        task.cancel()
        await asyncio.wait([task])
        return sleeps.delays, left_at, pool.count(URLS[0]), watched, pool.listeners

    delays, left_at, final, watched, listeners = asyncio.run(scenario())
    assert final == left_at                                 # no probe after it left
    assert [b.url for b in watched] == URLS[1:]
    # The two joiners are spread over jitter * interval = 0.5 s: at 0 and 0.25 s.
    assert delays[f"probe {URLS[2]}"][0] == pytest.approx(0.0)
    assert delays[f"probe {URLS[3]}"][0] == pytest.approx(5.0 * JITTER / 2)
    assert listeners == []                                  # unsubscribed when cancelled


def test_a_backend_that_stays_keeps_its_task_and_takes_its_new_value():
    async def scenario():
        pool = FakePool(URLS[:1])
        prober = Instant(pool, settings(), rng=random.Random(2), sleep=RecordedSleeps())
        task = asyncio.create_task(prober.run())
        await until(lambda: pool.count(URLS[0]) >= 2)
        tasks_before = {id(t.task) for t in prober._targets.values()}
        pool.update([lb.Backend(URLS[0], weight=3, server_name="orders.internal")])
        await asyncio.sleep(0.01)
        tasks_after = {id(t.task) for t in prober._targets.values()}
        prober.started.clear()
        await until(lambda: prober.started)
        watched = prober.watched
        task.cancel()
        await asyncio.wait([task])
        return tasks_before, tasks_after, watched

    before, after, watched = asyncio.run(scenario())
    assert before == after
    assert watched[0].server_name == "orders.internal" and watched[0].weight == 3


def test_probes_of_one_backend_never_overlap():
    class Slow(Prober):
        running: collections.Counter
        most = 0
        done = 0

        async def check(self, backend):
            self.running[backend.url] += 1
            self.most = max(self.most, self.running[backend.url])
            await asyncio.sleep(0.03)       # longer than the interval
            self.running[backend.url] -= 1
            self.done += 1
            return True, "status 200"

    async def scenario():
        pool = FakePool(URLS)
        prober = Slow(pool, settings(health_check_interval=0.01), rng=random.Random(5))
        prober.running = collections.Counter()
        await run_until(prober, lambda: prober.done >= 20)
        return prober.most, prober.running

    most, running = asyncio.run(scenario())
    assert most == 1
    assert sum(running.values()) <= len(URLS)           # the cancelled ones were cut short


def test_a_probe_in_progress_when_its_backend_leaves_is_cancelled_and_not_reported():
    class Hanging(Prober):
        cancelled = 0

        async def check(self, backend):
            if backend.url == URLS[1]:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return True, "status 200"

    async def scenario():
        pool = FakePool(URLS[:2])
        prober = Hanging(pool, settings(health_check_interval=0.01), rng=random.Random(1))
        task = asyncio.create_task(prober.run())
        await until(lambda: pool.count(URLS[0]) >= 1)
        await asyncio.sleep(0.02)           # URLS[1] is in its probe by now
        pool.update(URLS[:1])
        await until(lambda: prober.cancelled)
        task.cancel()
        await asyncio.wait([task])
        return prober.cancelled, pool.count(URLS[1])

    assert asyncio.run(scenario()) == (1, 0)


def test_a_membership_change_on_another_thread_is_followed():
    async def scenario():
        pool = FakePool(URLS[:1])
        prober = Instant(pool, settings(health_check_interval=0.02), rng=random.Random(1))
        task = asyncio.create_task(prober.run())
        await until(lambda: pool.count(URLS[0]) >= 1)
        thread = threading.Thread(target=pool.update, args=(URLS[:3],))
        thread.start()
        await asyncio.to_thread(thread.join, 5)
        await until(lambda: pool.count(URLS[1]) >= 1 and pool.count(URLS[2]) >= 1)
        watched = prober.watched
        task.cancel()
        await asyncio.wait([task])
        return watched

    assert [b.url for b in asyncio.run(scenario())] == URLS[:3]


def test_cancelling_run_stops_every_probe_and_unsubscribes():
    async def scenario():
        pool = FakePool(URLS)
        prober = Instant(pool, settings(health_check_interval=0.01), rng=random.Random(1))
        task = await run_until(prober, lambda: len(pool.reports) >= 10)
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("probe ")]
        count = len(pool.reports)
        await asyncio.sleep(0.05)
        return task.cancelled(), tasks, count, len(pool.reports), pool.listeners, prober.watched

    cancelled, left, before, after, listeners, watched = asyncio.run(scenario())
    assert cancelled and left == [] and before == after and listeners == [] and watched == ()


def test_a_failing_report_or_check_is_logged_and_probing_goes_on(caplog):
    class Broken(Prober):
        calls = 0

        async def check(self, backend):
            self.calls += 1
            if self.calls % 2:
                raise ValueError("a bug in the check")
            return True, "status 200"

    async def scenario():
        pool = FakePool(URLS[:1])
        pool.fail_reports = True
        prober = Broken(pool, settings(), rng=random.Random(1), sleep=RecordedSleeps())
        await run_until(prober, lambda: prober.calls >= 6)
        return pool.reports

    with caplog.at_level(logging.ERROR, logger="lbmiddleware"):
        reports = asyncio.run(scenario())
    assert len(reports) >= 2 and all(ok for _, ok, _ in reports)     # the bug is not a fail
    messages = [record.getMessage() for record in caplog.records]
    assert any("failed to run" in m for m in messages)
    assert any("reporting the health check" in m for m in messages)


def test_an_empty_path_or_a_bad_interval_is_refused():
    pool = FakePool(URLS[:1])
    with pytest.raises(ConfigError, match="health_check is empty"):
        Prober(pool, settings(health_check=""))
    with pytest.raises(ConfigError, match="health_check_interval"):
        Prober(pool, settings(health_check_interval=0.0))


def test_run_twice_at_once_is_refused():
    async def scenario():
        prober = Instant(FakePool(URLS[:1]), settings(), sleep=RecordedSleeps())
        first = asyncio.create_task(prober.run())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await prober.run()
        first.cancel()
        await asyncio.wait([first])

    asyncio.run(scenario())
