"""Running a piece of a test in a forked child, as a pre-forking server's worker runs: only
the forking thread lives on there, so whatever the parent ran on its other threads (the
fleet's loop, a pool's tasks) must start again in the child for the test to pass."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import NamedTuple


class Forked(NamedTuple):
    """How a child of :func:`in_forked_child` ended."""

    pid: int
    exit_code: int      # 0 once its function returned, 1 if it raised
    output: bytes       # what its function returned


def in_forked_child(child: Callable[[], bytes]) -> Forked:
    """Fork; the child calls ``child()``, hands the bytes it returns back through a pipe and
    exits. Waits for it."""
    read, write = os.pipe()
    with warnings.catch_warnings():                   # "multi-threaded, use of fork()..."
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                                      # the child: only this thread exists
        code = 1
        try:
            os.write(write, child())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    return Forked(pid, os.waitstatus_to_exitcode(status), said)
