"""Ending a child process a test started (a server, a gateway, a demo): one way for all of
them, so that none is left running and none makes a test wait for ever."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0,
                 sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM: let it clean up) to ``process`` if it still runs, then SIGKILL if it
    has not exited within ``timeout`` seconds; waits for it (``timeout`` again at most)."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
