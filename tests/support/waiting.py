"""Waiting for what a background thread or task does: ``wait_for`` polls a condition until
it holds or a timeout passes; :class:`LoopTicks` counts the turns another task gets on a
running event loop, which shows the loop was not blocked meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every few milliseconds until it is true or ``timeout`` seconds
    pass; its last value (as a bool), so ``assert wait_for(...)`` fails on a timeout."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return bool(condition())


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
