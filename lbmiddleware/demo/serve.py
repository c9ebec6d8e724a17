"""``python -m lbmiddleware demo --serve``: the demo's three backends and the real gateway
(``python -m lbmiddleware serve`` with its admin port) kept running until Ctrl-C, instead of
the timed runs, so a person can watch the status page while crashing and restarting a backend.

The simplest way to do that for a newcomer is the terminal they are in: typing ``kill flaky``
sends the backend SIGKILL (as ``kill -9 PID`` would, a crashed replica), ``start flaky``
starts it again on its port. A steady trickle of GETs (``--rate``) goes through the gateway
so the page's rates and latencies move and a dead backend is noticed by requests as well as
by the health checks; the gateway's warnings (ejected, down, up) print on the same terminal.

Bounded: Ctrl-C or SIGTERM stops the load, then the gateway (which closes its admin port),
then the backends, and the command exits 0; nothing it started outlives it, even when it is
killed (:mod:`.processes`: its children die with it). Typed commands run on the main thread,
as every start of a child must.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TextIO

from .backends import PERSONALITIES
from .client import LoadCounts, steady_load
from .glossary import terminal_lines
from .processes import BackendProcess, GatewayProcess, PortInUse

__all__ = ["LiveDemo", "serve", "gateway_environ", "DEFAULT_RATE"]

DEFAULT_RATE = 20.0              # GETs a second through the gateway while serving
CHECK_PATH = "/health"           # the demo's backends answer any path
CHECK_INTERVAL = "1s"            # so a kill shows on the page within seconds
COMMAND_POLL = 0.1               # seconds: how soon the main thread runs a typed command


def gateway_environ(urls: Sequence[str], policy: str,
                    settings: Mapping[str, object]) -> dict[str, str]:
    """The gateway's ``LB_*`` settings: the demo's pool, health checks, its admin port."""
    return {
        "LB_BACKENDS": ",".join(urls),
        "LB_POLICY": policy,
        "LB_MAX_FAILS": str(settings["max_fails"]),
        "LB_FAIL_TIMEOUT": f"{settings['fail_timeout']:g}s",
        "LB_RETRIES": str(settings["retries"]),
        "LB_CONNECT_TIMEOUT": f"{settings['connect_timeout']:g}s",
        "LB_READ_TIMEOUT": f"{settings['read_timeout']:g}s",
        "LB_HEALTH_CHECK": CHECK_PATH,
        "LB_HEALTH_CHECK_INTERVAL": CHECK_INTERVAL,
        "LB_LISTEN": "127.0.0.1:0",
        "LB_ADMIN_LISTEN": "127.0.0.1:0",
        # uvicorn binds port 0 itself (granian's worker is handed a port found free a moment
        # before, which another program can take in between)
        "LB_SERVER": "uvicorn",
        "LB_SHUTDOWN_TIMEOUT": "2s",
        "LB_LOG_LEVEL": "warning",     # ejections, returns, down and up; not every retry
    }


class LiveDemo:
    """The backends, the gateway and the steady load of ``--serve``; ``command()`` runs
    what the person types, on the main thread (``start NAME`` starts a child: see
    :mod:`.processes`)."""

    def __init__(self, policy: str, rate: float, settings: Mapping[str, object],
                 say: Callable[[str], None]) -> None:
        self.policy = policy
        self.rate = rate
        self.settings = settings
        self.say = say
        self.backends = {name: BackendProcess(name) for name in PERSONALITIES}
        self.gateway: GatewayProcess | None = None
        self.environ: dict[str, str] = {}          # the gateway's LB_* settings, once started
        self.counts = LoadCounts()
        self._lock = threading.Lock()
        self._closed = False
        self._load: threading.Thread | None = None
        self._load_loop: asyncio.AbstractEventLoop | None = None
        self._load_stop: asyncio.Event | None = None

    def start(self) -> LiveDemo:
        for backend in self.backends.values():
            backend.start()
        self.environ = gateway_environ([b.url for b in self.backends.values()], self.policy,
                                       self.settings)
        self.gateway = GatewayProcess(self.environ, echo=self.say).start()
        if self.rate > 0:
            ready = threading.Event()
            self._load = threading.Thread(target=self._run_load, args=(ready,),
                                          name="demo-steady-load", daemon=True)
            self._load.start()
            ready.wait()
        return self

    def _run_load(self, ready: threading.Event) -> None:
        async def run() -> None:
            self._load_loop = asyncio.get_running_loop()
            self._load_stop = asyncio.Event()
            ready.set()
            if self.gateway is not None:
                await steady_load(int(self.gateway.url.rsplit(":", 1)[1]), self.rate,
                                  self._load_stop, self.counts)
        try:
            asyncio.run(run())
        finally:
            ready.set()

    @property
    def status_url(self) -> str:
        return self.gateway.admin_url.rstrip("/") + "/status" if self.gateway else ""

    def command(self, line: str) -> str:
        """Run one typed command (``kill NAME``, ``start NAME``, ``help``); returns what to
        print."""
        words = line.split()
        if not words:
            return ""
        verb, names = words[0].lower(), [w.lower() for w in words[1:]]
        if verb in ("help", "?"):
            return self.instructions()
        if verb not in ("kill", "start") or len(names) != 1 or names[0] not in self.backends:
            return (f"unknown command {line.strip()!r}: type kill NAME or start NAME "
                    f"(NAME: {', '.join(self.backends)}), or Ctrl-C to stop everything")
        backend = self.backends[names[0]]
        with self._lock:
            if self._closed:
                return ""
            if verb == "kill":
                if not backend.alive:
                    return f"{backend.name} is not running; start {backend.name} starts it"
                pid = backend.pid
                backend.kill()
                return (f"killed {backend.name} (pid {pid}, SIGKILL). Watch {backend.url} on "
                        f"{self.status_url}: ejected once {self.settings['max_fails']} "
                        "requests in a row failed on it, DOWN once its health checks fail")
            if backend.alive:
                return f"{backend.name} is running already (pid {backend.pid})"
            try:
                backend.start(backend.port)
            except PortInUse as exc:
                return f"{exc} (is another program on {backend.url}?)"
            except RuntimeError as exc:     # the hint would mislead: the port was free
                return str(exc)
            return (f"started {backend.name} again on {backend.url} (pid {backend.pid}): it is "
                    "UP again once its health checks pass")

    def instructions(self) -> str:
        width = max(len(name) for name in self.backends)
        rows = [f"{'  backends' if index == 0 else '':<14}{name:<{width}}  {b.url}  pid {b.pid}"
                for index, (name, b) in enumerate(self.backends.items())]
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environ.items()
                           if k not in ("LB_SERVER", "LB_SHUTDOWN_TIMEOUT"))
        gateway = self.gateway.url if self.gateway else ""
        return "\n".join([
            f"  status page {self.status_url}   <- open it in a browser (it refreshes itself)",
            f"  gateway     {gateway}   (try: curl -i {gateway}/hello)",
            *rows,
            f"  traffic     about {self.rate:g} GET requests a second through the gateway "
            f"(policy {self.policy})" if self.rate > 0 else
            "  traffic     none sent by the demo (--rate 0): send your own to the gateway",
            f"  the gateway runs as: {command} python -m lbmiddleware serve",
            "",
            *terminal_lines(self.settings),
            "",
            "To watch the page change, type a command here and press Enter:",
            "  kill flaky     crash it (SIGKILL, as kill -9 PID would): it is ejected after "
            f"{self.settings['max_fails']} failed",
            "                 requests and DOWN once its health checks fail",
            "  start flaky    start it again on its port: UP again once its health checks pass",
            "  (also fast and slow; the gateway's warnings print here as it sees the changes)",
            "Ctrl-C stops everything.",
        ])

    def stop(self) -> None:
        """Stop the load, then the gateway (and its admin port), then the backends."""
        with self._lock:
            self._closed = True
        if self._load is not None:
            if self._load_loop is not None and self._load_stop is not None:
                try:
                    self._load_loop.call_soon_threadsafe(self._load_stop.set)
                except RuntimeError:        # its loop ended already
                    pass
            self._load.join(timeout=15)
            self._load = None
        if self.gateway is not None:
            self.gateway.stop()
        for backend in self.backends.values():
            backend.stop()


def _read_commands(fd: int, typed: queue.SimpleQueue[str]) -> None:
    """Queue each line typed on ``fd`` until it closes, for the main thread to run
    (os.read: a daemon thread blocked in a buffered read would hold the buffer's lock at
    interpreter shutdown)."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            typed.put(line.decode(errors="replace"))


def _run_typed(typed: queue.SimpleQueue[str], live: LiveDemo,
               say: Callable[[str], None]) -> None:
    """Run the commands typed so far (on the calling thread: the main one)."""
    while True:
        try:
            line = typed.get_nowait()
        except queue.Empty:
            return
        answer = live.command(line)
        if answer:
            say(answer)


def serve(policy: str, rate: float, settings: Mapping[str, object],
          out: TextIO | None = None, commands_fd: int | None = 0) -> int:
    """Run until SIGINT or SIGTERM (0), or until the gateway exits on its own (1)."""
    stream = out if out is not None else sys.stdout
    printing = threading.Lock()

    def say(text: str) -> None:
        with printing:
            print(text, file=stream, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    live = LiveDemo(policy, rate, settings, say)
    try:
        say("lbmiddleware demo --serve: three backends and the gateway, running until Ctrl-C")
        live.start()
        say(live.instructions())
        typed: queue.SimpleQueue[str] = queue.SimpleQueue()
        if commands_fd is not None:
            threading.Thread(target=_read_commands, args=(commands_fd, typed),
                             name="demo-commands", daemon=True).start()
        while not stop.wait(COMMAND_POLL):
            _run_typed(typed, live, say)
            if live.gateway is not None and not live.gateway.alive:
                say(f"the gateway exited (code {live.gateway.returncode}); stopping")
                return 1
        return 0
    finally:
        live.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        say("stopped: the gateway, its admin port and the backends")
