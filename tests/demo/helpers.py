"""What the demo's tests share: where the checkout is, whether a URL still listens, which
child processes a process still has, and killing what a test's demo left running."""

from __future__ import annotations

import os
import signal
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def refused(url: str) -> bool:
    """Whether nothing listens at ``http://host:port`` any more."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect((host, int(port)))
        except ConnectionRefusedError:
            return True
    return False


def children(parent: int, marker: bytes) -> list[int]:
    """Running processes whose parent is ``parent`` and whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and marker in command:
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_leftovers(pids: list[int], marker: bytes) -> list[int]:
    """SIGKILL those of ``pids`` still running a command line holding ``marker`` (what a
    test started that outlived it, so that a failing test leaves nothing behind); the pids
    it had to kill."""
    killed = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if marker in command and running(pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
