"""The demo's child processes: each backend in its own (so one can really be killed, and
started again on its port), and for ``--serve`` the gateway command itself.

Children start in their own session, so Ctrl-C reaches the demo only and the demo stops them
in order. When the demo dies without stopping them (SIGKILL, a crash), each child dies with
it: on Linux the kernel sends it SIGTERM (``PR_SET_PDEATHSIG``, asked for between fork and
exec, :func:`_spawn`), the one way for both kinds of child, since the gateway is the real
``python -m lbmiddleware serve`` and has no option to watch its parent. That signal follows
the *thread* that started the child (it is sent when that thread ends), so children are
started from the main thread only, which lasts as long as the process. A backend also exits
when its standard input closes, which covers it where there is no ``prctl``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .backends import PORT_IN_USE

__all__ = ["STARTUP_TIMEOUT", "BackendProcess", "GatewayProcess", "PortInUse", "child_environ"]

STARTUP_TIMEOUT = 15.0           # seconds: backends and gateway must be listening by then
STOP_TIMEOUT = 10.0              # seconds a child has to exit after SIGTERM before SIGKILL
# What a child gets when the demo dies: what the demo's own stop sends first, so the gateway
# finishes its requests in flight and closes its admin port as it does on Ctrl-C.
PARENT_DEATH_SIGNAL = signal.SIGTERM
_PR_SET_PDEATHSIG = 1            # <linux/prctl.h>


class PortInUse(RuntimeError):
    """A backend could not start because its port is taken (by another program, or by a
    connection the killed backend left behind)."""


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment for a child running ``-m lbmiddleware...``: the package importable
    from wherever it was imported, the caller's ``LB_*`` left out (the demo sets its own)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _spawn(command: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own session that dies with this process (on Linux); from the
    main thread only (a child of another thread would die when that thread ends)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"demo child {' '.join(command[1:])!r} started from thread "
                           f"{threading.current_thread().name!r}: start children from the main "
                           "thread, whose end is the process's (the death signal follows the "
                           "thread that started the child)")
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_dies_with_us(),
                            **options)


def _dies_with_us() -> Callable[[], None] | None:
    """The ``preexec_fn`` (run in the child, before exec) asking the kernel for
    PARENT_DEATH_SIGNAL when this process dies; None where there is no ``prctl``. The C
    function is looked up here, in the parent: the child, forked from a process with
    threads, only makes the call (no import, no lock). A child whose parent already died
    before the call (it would wait for a signal that never comes) does not start."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent, signum = os.getpid(), int(PARENT_DEATH_SIGNAL)

    def ask() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            raise ChildProcessError("the demo ended before its child started")
    return ask


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


def _read_line(stdout: IO[bytes], wanted: Callable[[str], str | None], deadline: float
               ) -> str | None:
    """The first non-None ``wanted(line)`` among the lines ``stdout`` prints before
    ``deadline``; None when it ends or the time is up first."""
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=max(deadline - time.monotonic(), 0)):
                line = stdout.readline().decode(errors="replace")
                if not line:
                    return None
                found = wanted(line)
                if found is not None:
                    return found
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; waits for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BackendProcess:
    """One demo backend (:mod:`lbmiddleware.demo.backends`) in a child process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, port: int = 0) -> BackendProcess:
        """Start it on ``port`` (0: one the OS chooses); ``start(backend.port)`` after a kill
        brings it back where the gateway expects it."""
        self.stop()
        command = [sys.executable, "-m", "lbmiddleware.demo.backends", self.name,
                   "--until-stdin-closes"]
        if port:
            command += ["--port", str(port)]
        self._process = _spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env=child_environ())
        if self._process.stdout is None:        # never: stdout=PIPE
            raise RuntimeError("no pipe from the demo backend")

        def url_of(line: str) -> str | None:
            name, _, url = line.strip().partition(" ")
            return url if name == self.name else None

        url = _read_line(self._process.stdout, url_of, time.monotonic() + STARTUP_TIMEOUT)
        if url is None:
            code = self._exit_code()
            self.stop()
            if code == PORT_IN_USE:
                raise PortInUse(f"demo backend {self.name!r} did not start: port {port} is in "
                                "use")
            raise RuntimeError(f"demo backend {self.name!r} did not start"
                               + (f" on port {port}" if port else ""))
        self.url = url
        return self

    def _exit_code(self) -> int | None:
        """The child's exit code once its output ended (it exits right after); None if it
        still runs a moment later (it hung: the startup's time ran out)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        """The running child's process id; None once it exited."""
        return self._process.pid if self.alive and self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the port closes and open connections are reset, like a crashed replica."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is None:
            return
        _stop(self._process)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        self._process = None


# The gateway's banner: "lbmiddleware gateway listening on http://127.0.0.1:8000 (...) ->
# BACKENDS; admin http://127.0.0.1:9901/status" (the admin part with LB_ADMIN_LISTEN only).
_LISTENING = re.compile(r"listening on (http://[^\s/]+)")
_ADMIN = re.compile(r"; admin (http://[^\s/]+)/status")


class GatewayProcess:
    """``python -m lbmiddleware serve`` in a child process, configured by ``LB_*``
    variables; its log (stderr) goes where this process's goes, its banner is read for the
    addresses it listens on, and later lines of its standard output are passed to ``echo``."""

    def __init__(self, environ: Mapping[str, str],
                 echo: Callable[[str], None] = lambda line: None) -> None:
        self.environ = dict(environ)
        self.url = ""                # the proxy
        self.admin_url = ""          # the admin listener (LB_ADMIN_LISTEN), "" if off
        self._echo = echo
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> GatewayProcess:
        self._process = _spawn([sys.executable, "-m", "lbmiddleware", "serve"],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               env=child_environ(self.environ))
        stdout = self._process.stdout
        if stdout is None:                       # never: stdout=PIPE
            raise RuntimeError("no pipe from the gateway")
        deadline = time.monotonic() + STARTUP_TIMEOUT

        def urls(line: str) -> str | None:
            if not self.url and (found := _LISTENING.search(line)):
                self.url = found.group(1)
            if not self.admin_url and (found := _ADMIN.search(line)):
                self.admin_url = found.group(1)
            wants_admin = bool(self.environ.get("LB_ADMIN_LISTEN"))
            return "" if self.url and (self.admin_url or not wants_admin) else None

        if _read_line(stdout, urls, deadline) is None:
            self.stop()
            raise RuntimeError("the gateway did not start (its log above says why)")
        self._reader = threading.Thread(target=self._pass_on, args=(stdout,),
                                        name="demo-gateway-stdout", daemon=True)
        self._reader.start()
        return self

    def _pass_on(self, stdout: IO[bytes]) -> None:
        for line in iter(stdout.readline, b""):
            self._echo(line.decode(errors="replace").rstrip("\n"))

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        """SIGTERM (the gateway finishes its requests in flight within LB_SHUTDOWN_TIMEOUT),
        then waits for it."""
        if self._process is None:
            return
        _stop(self._process)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None
        self._reader = None
