"""The fleet's event loop: one daemon thread per process, shared by every pool's sources and
probes.

Discovery and probes are asyncio code, and a pool must follow its fleet in a threaded WSGI
server or a requests script as well as under an ASGI server, so they run on a loop of their
own, never the application's: a pick never waits for them, and their I/O never waits for the
application's. One loop serves every pool of the process (a thread per pool would be idle all
but a few milliseconds a second).

The thread (``lbmiddleware-fleet``) starts on the first :func:`submit` and is a daemon: it
never holds up the process's exit. After a ``fork`` the child has no such thread (only the
forking thread survives), so the child forgets the parent's loop (``os.register_at_fork``)
and starts its own on its first :func:`submit`; what ran tasks on the parent's loop (a
pool's sources and checks, a status history's sampling) asks to start them again there with
:func:`restart_after_fork`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

__all__ = ["submit", "call_soon", "in_loop_thread", "restart_after_fork", "THREAD_NAME"]

THREAD_NAME = "lbmiddleware-fleet"

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _running_loop() -> asyncio.AbstractEventLoop:
    """The fleet's loop, its thread started if this process has none yet."""
    global _loop, _thread
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_run, args=(loop, ready), name=THREAD_NAME,
                                      daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()          # until the process ends: the thread is a daemon


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on the fleet's loop; its result (or exception) comes in the returned
    future, whose ``cancel()`` cancels the task. Any thread may call it, the loop's too."""
    return asyncio.run_coroutine_threadsafe(coro, _running_loop())


def call_soon(callback: Callable[[], object]) -> None:
    """Call ``callback()`` on the fleet's loop, soon (from any thread)."""
    _running_loop().call_soon_threadsafe(callback)


def in_loop_thread() -> bool:
    """Whether the calling thread is the fleet's loop thread (which must never wait for a
    task of that loop: the task could not run)."""
    return _thread is not None and threading.current_thread() is _thread


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop thread does not exist here. Its loop object is
    dropped, not closed (its selector's descriptors are the parent's too); a new loop starts
    on the next :func:`submit`."""
    global _lock, _loop, _thread
    _lock = threading.Lock()        # it may have been held by another thread at the fork
    _loop = _thread = None


class _Restartable(Protocol):
    def _restart_after_fork(self) -> None: ...


_restartable: weakref.WeakSet[_Restartable] = weakref.WeakSet()


def restart_after_fork(owner: _Restartable) -> None:
    """Call ``owner._restart_after_fork()`` in every forked child while ``owner`` lives (it is
    held weakly), after the child has forgotten the parent's loop: its tasks ran there and
    must start again on the child's own."""
    _restartable.add(owner)


def _restart_in_child() -> None:
    for owner in list(_restartable):
        owner._restart_after_fork()


# In this order: the child's loop is a new one by the time the owners start their tasks.
os.register_at_fork(after_in_child=_forget_after_fork)
os.register_at_fork(after_in_child=_restart_in_child)
