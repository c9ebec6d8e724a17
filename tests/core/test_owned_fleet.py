"""An owned public pool (``lb.Balancer``): its source's sets come from the fleet's thread
through the hand-off to the owner's loop, and ``close()`` on the owner thread does not wait
for a source's task that waits for that loop. The source is a test watcher driven by a queue
(nothing sleeps: each side waits for the other's event, with a deadline)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

import pytest

import lbmiddleware as lb
from lbmiddleware.core.events import Event, MembershipChanged
from lbmiddleware.discovery.status import SourceStatus
from lbmiddleware.fleet.pool import CLOSE_TIMEOUT

SOURCE = "dns+http://orders.test:8080"
A, B, C = "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"
DONE = object()


class QueueWatcher:
    """Publishes each set put in its queue, from the fleet's loop (waiting for the next one
    on an executor thread, not by polling); says when it is about to publish."""

    def __init__(self) -> None:
        self.source = lb.Source(SOURCE)
        self.status = SourceStatus(self.source.url, self.source.kind)
        self.sets: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.publishing = threading.Event()
        self.cancelled = threading.Event()

    def put(self, *urls: str) -> None:
        self.sets.put(tuple(lb.Backend(url, source=SOURCE) for url in urls))

    async def run(self, publish: Any, emit: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await loop.run_in_executor(None, self.sets.get)
                if item is DONE:
                    return
                self.publishing.set()
                publish(item)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def test_an_owned_pool_follows_its_source_and_closes_without_waiting(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    watcher = QueueWatcher()
    watcher.put(A, B)

    class Pool(lb.Balancer):
        def watcher(self, source: lb.Source) -> Any:
            return watcher

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = Pool([SOURCE])                   # in a running loop: returns at once
        try:
            assert await pool.ready(10.0)
            lane = pool.own(loop)
            changed = asyncio.Event()
            delivered: list[int] = []

            def listener(event: Event) -> None:
                if isinstance(event, MembershipChanged):
                    delivered.append(threading.get_ident())
                    changed.set()               # (on the owner's thread: this loop's)

            pool.subscribe(listener)
            watcher.put(A, B, C)                # the fleet's update, handed to this loop
            await asyncio.wait_for(changed.wait(), 10.0)
            assert delivered == [threading.get_ident()]
            assert [b.url for b in pool.backends] == [A, B, C]
            assert {lane.pick().url for _ in range(3)} == {A, B, C}

            watcher.publishing.clear()
            watcher.put(C)
            assert watcher.publishing.wait(10.0)    # the fleet's thread is in update() now,
            started = time.monotonic()              # waiting for this loop, which is busy:
            pool.close()                            # close() must not wait for that task
            assert time.monotonic() - started < CLOSE_TIMEOUT / 2
            cancelled = await loop.run_in_executor(None, watcher.cancelled.wait, 10.0)
            assert cancelled                        # (once this loop ran the update)
            assert [b.url for b in pool.backends] == [C]
        finally:
            pool.close()
            watcher.sets.put(DONE)

    asyncio.run(main())
    assert not [r for r in caplog.records if "still running" in r.getMessage()]
