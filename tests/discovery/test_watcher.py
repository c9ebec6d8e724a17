"""The rules every watcher follows (discovery/watcher.py): new sets published once, the last
good set kept through failures with back-off, one SourceFailed per outage and one
SourceRecovered, an empty answer published as (). A fake clock and a fake sleep: no waiting."""

from __future__ import annotations

import asyncio
import random

import pytest

from lbmiddleware.core.backend import Backend
from lbmiddleware.core.events import SourceFailed, SourceRecovered
from lbmiddleware.discovery.status import SourceStatus
from lbmiddleware.discovery.watcher import (
    Answer,
    Follower,
    PollingWatcher,
    SourceError,
    describe_error,
)

from .test_backoff import FixedRandom

SOURCE = "dns+http://orders.internal:8080"
A = Backend("http://127.0.0.2:8080")
B = Backend("http://127.0.0.3:8080")


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[Backend, ...]] = []
        self.events: list[object] = []

    def publish(self, backends):
        self.published.append(backends)

    def emit(self, event):
        self.events.append(event)


def follower(clock, rng=None):
    rec = Recorder()
    status = SourceStatus(SOURCE, "dns")
    return Follower(status, rec.publish, rec.emit, rng=rng or FixedRandom(0.5), timer=clock), rec


def test_a_new_set_is_published_once_and_an_unchanged_one_not_again(clock):
    f, rec = follower(clock)
    f.succeeded((A, B))
    f.succeeded((A, B))
    f.succeeded((A,))
    assert rec.published == [(A, B), (A,)]
    assert f.status.backends == 1 and f.status.last_success == clock.now
    assert rec.events == []


def test_a_successful_empty_answer_publishes_an_empty_set(clock):
    f, rec = follower(clock)
    f.succeeded((A,))
    f.succeeded(())
    assert rec.published == [(A,), ()]
    assert f.status.backends == 0


def test_the_first_answer_is_published_even_when_empty(clock):
    f, rec = follower(clock)
    f.succeeded(())
    assert rec.published == [()]


def test_failures_keep_the_last_set_back_off_and_emit_once_per_outage(clock):
    f, rec = follower(clock)
    f.succeeded((A, B))
    start = clock.now
    delays = []
    for _ in range(4):
        delays.append(f.failed("timeout"))
        clock.advance(delays[-1])
    assert delays == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert rec.published == [(A, B)]                          # the last good set stays
    assert rec.events == [SourceFailed(SOURCE, "timeout", 1.0)]
    status = f.status
    assert status.failing_since == start and status.failures == 4
    assert status.last_error == "timeout" and status.backends == 2
    assert status.next_refresh == pytest.approx(clock.now)


def test_recovery_emits_once_with_the_outage_and_resets_the_back_off(clock):
    f, rec = follower(clock)
    f.succeeded((A,))
    f.failed("SERVFAIL")
    clock.advance(1.0)
    f.failed("SERVFAIL")
    clock.advance(1.6)
    f.succeeded((A,))                       # same set: nothing to publish, but recovered
    f.succeeded((A,))
    assert rec.published == [(A,)]
    assert rec.events == [SourceFailed(SOURCE, "SERVFAIL", 1.0),
                          SourceRecovered(SOURCE, pytest.approx(2.6))]
    assert f.status.failing_since is None and f.status.failures == 0
    assert f.status.last_error == "SERVFAIL"                 # kept for the status page
    f.failed("refused")                                      # a new outage starts over
    assert rec.events[-1] == SourceFailed(SOURCE, "refused", 1.0)


def test_lifetime_counters_count_every_answer_and_failure_and_never_reset(clock):
    f, _ = follower(clock)
    f.succeeded((A,))
    f.succeeded((A,))                       # the same set: an answer all the same
    f.failed("SERVFAIL")
    f.failed("SERVFAIL")
    f.succeeded((A, B))                     # the outage ends: failures resets, the total not
    f.failed("refused")
    status = f.status
    assert (status.updates_total, status.failures_total, status.failures) == (3, 3, 1)
    assert status.as_dict()["updates_total"] == 3


def test_ages_read_the_status_times_from_now(clock):
    f, _ = follower(clock)
    assert f.status.ages(clock.now) == {"last_success_ago": None, "last_error_ago": None,
                                        "next_refresh_in": None, "failing_for": None}
    f.succeeded((A,))
    clock.advance(5.0)
    delay = f.failed("timeout")             # 1 s back-off
    clock.advance(0.25)
    assert f.status.ages(clock.now) == {
        "last_success_ago": 5.25, "last_error_ago": 0.25,
        "next_refresh_in": pytest.approx(delay - 0.25), "failing_for": 0.25}
    clock.advance(3.0)                      # overdue: due now, not negative
    f.succeeded((A,))
    assert f.status.ages(clock.now) == {"last_success_ago": 0.0, "last_error_ago": 3.25,
                                        "next_refresh_in": 0.0, "failing_for": None}


def test_a_failure_before_any_answer_publishes_nothing(clock):
    f, rec = follower(clock)
    f.failed("timeout")
    assert rec.published == [] and len(rec.events) == 1


def test_a_failure_says_how_many_backends_the_source_keeps(clock):
    f, rec = follower(clock)
    f.failed("timeout")                     # before any answer: nothing kept
    f.succeeded((A, B))
    f.failed("SERVFAIL")
    assert [event.kept for event in rec.events if isinstance(event, SourceFailed)] == [0, 2]


class StopLoop(Exception):
    pass


class Scripted(PollingWatcher):
    """Answers (or raises) what the script says, one entry per ask; the fake sleep moves the
    clock and stops the loop when the script is done."""

    def __init__(self, script, clock, rng=None):
        self.script = list(script)
        self.clock = clock
        self.slept: list[float] = []
        super().__init__(SourceStatus(SOURCE, "dns"), min_refresh=0.5, max_refresh=10.0,
                         rng=rng or FixedRandom(0.5), timer=clock, sleep=self.fake_sleep)

    async def ask(self):
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def fake_sleep(self, delay):
        self.slept.append(delay)
        self.clock.advance(delay)
        if not self.script:
            raise StopLoop


def run(watcher):
    rec = Recorder()
    with pytest.raises(StopLoop):
        asyncio.run(watcher.run(rec.publish, rec.emit))
    return rec


def test_polling_sleeps_the_clamped_ttl_or_the_back_off(clock):
    watcher = Scripted([Answer((A, B), ttl=1.0), Answer((A, B), ttl=3.0),
                        TimeoutError(), SourceError("SERVFAIL"), OSError("refused"),
                        Answer((B,), ttl=60.0), Answer((B,), ttl=None), Answer((), ttl=0)],
                       clock)
    rec = run(watcher)
    assert watcher.slept == pytest.approx([1.0, 3.0, 1.0, 1.6, 2.56, 10.0, 0.5, 0.5])
    assert rec.published == [(A, B), (B,), ()]
    assert rec.events == [SourceFailed(SOURCE, "TimeoutError", 1.0),
                          SourceRecovered(SOURCE, pytest.approx(1.0 + 1.6 + 2.56))]
    assert watcher.status.next_refresh == pytest.approx(clock.now)


def test_polling_jitters_each_refresh(clock):
    watcher = Scripted([Answer((A,), ttl=5.0)] * 200, clock, rng=random.Random(5))
    run(watcher)
    assert min(watcher.slept) >= 4.5 and max(watcher.slept) <= 5.5
    assert len(set(watcher.slept)) == 200


def test_cancellation_is_not_a_failure(clock):
    watcher = Scripted([asyncio.CancelledError()], clock)
    rec = Recorder()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(watcher.run(rec.publish, rec.emit))
    assert rec.events == [] and watcher.status.failures == 0


def test_describe_error_names_the_class_when_the_message_is_empty():
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(SourceError("SERVFAIL from 127.0.0.1:53")) == "SERVFAIL from 127.0.0.1:53"
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused")
