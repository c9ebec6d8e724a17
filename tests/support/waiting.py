"""Waiting for what a background thread or task does: ``wait_for`` polls a condition until
it holds or a timeout passes; ``until`` and ``until_async`` do the same and fail naming what
did not come true; ``running`` runs a runner's ``run()`` as a task for a block;
:class:`LoopTicks` counts the turns another task gets on a running event loop, which shows
the loop was not blocked meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every few milliseconds until it is true or ``timeout`` seconds
    pass; its last value (as a bool), so ``assert wait_for(...)`` fails on a timeout."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return bool(condition())


def until(condition: Callable[[], object], limit: float = 3.0,
          what: str = "the condition") -> None:
    """Poll ``condition`` until it is true; AssertionError naming ``what`` after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not come true in {limit} s"
        time.sleep(0.005)


async def until_async(condition: Callable[[], object], limit: float = 3.0,
                      what: str = "the condition") -> None:
    """:func:`until` on a running loop: the loop keeps turning while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, f"{what} did not come true in {limit} s"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(runner: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """``runner.run()`` (a Prober, say) as a task for the block; cancelled and awaited after."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])


class LoopTicks:
    """A task on the running loop counting its turns (``count``), one every ``interval``
    seconds (0: every turn of the loop), until :meth:`stop`. Make it inside the loop."""

    def __init__(self, interval: float = 0.005) -> None:
        self.count = 0
        self._task = asyncio.ensure_future(self._tick(interval))

    async def _tick(self, interval: float) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(interval)

    def stop(self) -> None:
        self._task.cancel()
