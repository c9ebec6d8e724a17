"""The fleet's loop: one daemon thread per process, started on first use, and a child of a
fork starts its own."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from lbmiddleware.fleet import loop

from ..support.forking import in_forked_child


async def _where() -> tuple[int, str, bool]:
    asyncio.get_running_loop()
    thread = threading.current_thread()
    return os.getpid(), thread.name, thread.daemon


def test_submit_runs_a_coroutine_on_one_daemon_thread_and_returns_a_future():
    first = loop.submit(_where()).result(5)
    second = loop.submit(_where()).result(5)
    assert first == second == (os.getpid(), loop.THREAD_NAME, True)
    names = [t.name for t in threading.enumerate()]
    assert names.count(loop.THREAD_NAME) == 1


def test_the_loop_thread_knows_itself_and_may_submit_without_waiting():
    async def nested() -> tuple[bool, int]:
        inner = loop.submit(asyncio.sleep(0, 7))    # from the loop's own thread
        assert not inner.done()                     # (it runs after this task yields)
        while not inner.done():
            await asyncio.sleep(0.001)
        return loop.in_loop_thread(), inner.result()

    assert loop.submit(nested()).result(5) == (True, 7)
    assert not loop.in_loop_thread()


def test_an_exception_comes_back_in_the_future():
    async def fails() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        loop.submit(fails()).result(5)


def test_a_forked_child_starts_its_own_loop():
    parent = loop.submit(_where()).result(5)          # the parent's loop runs
    child = in_forked_child(lambda: repr(loop.submit(_where()).result(5)).encode())
    assert child.exit_code == 0
    assert child.output.decode() == repr((child.pid, loop.THREAD_NAME, True))
    assert loop.submit(_where()).result(5) == parent  # the parent's own goes on
