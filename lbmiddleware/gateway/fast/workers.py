"""``serve --workers N`` (``LB_WORKERS``): N processes serving one address, under a parent that
supervises them (:func:`serve_workers`).

Each worker has its own listening socket, bound with ``SO_REUSEPORT`` on the same address
(:func:`bind_shared`), so the kernel spreads new connections across the workers (Linux hashes
each connection to one socket: no thundering herd, no lock around ``accept``, as nginx's
``reuseport``). The admin address is shared the same way: any worker may answer ``/status``,
and the page says which one did. Each worker runs the fast server with pools of its own:
health, latency and counters are per worker, never summed (the README says so).

The parent binds every socket before the first fork (port 0 is resolved once, and an address
in use is an error before anything starts), forks each worker before any thread exists in it
(the fleet's loop thread starts in the workers), prints the banner once every worker listens,
forwards SIGHUP (a config file re-read) to every worker, stops them all on SIGTERM or SIGINT
(each in its ``LB_SHUTDOWN_TIMEOUT``; SIGKILL for any left some seconds after that) and starts
again a worker that dies (a WARNING with its exit status; after a delay that grows while it
keeps dying young: :class:`Backoff`). It keeps every worker's sockets open, so the connections
the kernel gave a dead worker's socket wait in its backlog for the new worker instead of being
reset. Workers run in process groups of their own: a terminal's Ctrl-C reaches the parent
alone, which stops each worker once; and a worker whose parent is gone (SIGKILL) stops itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ...core.settings import FrontEndSettings
from ...errors import ConfigError
from ...gateway_settings import GatewaySettings
from ...observe.peers import serve_peers
from ...observe.worker import set_worker
from ..listen import CannotListen, bind

__all__ = ["serve_workers", "bind_shared", "Backoff", "WorkerFailed", "KILL_GRACE"]

logger = logging.getLogger("lbmiddleware.gateway")

#: Seconds a stopping worker has beyond its ``LB_SHUTDOWN_TIMEOUT`` before SIGKILL.
KILL_GRACE = 5.0

# What a worker tells the parent on its pipe: listening (the banner's moment), or why it
# could not start (the message follows), as the one-process gateway would raise it.
_READY, _CONFIG_ERROR, _OS_ERROR = b"R", b"C", b"O"
# Exit statuses of a worker that could not start: as the command line's (2 a bad setting, 1
# an address or file it could not use), and for anything else (its traceback logged).
_STATUS = {_CONFIG_ERROR: 2, _OS_ERROR: 1}
_FAILED = 3


class WorkerFailed(RuntimeError):
    """A worker ended before the gateway started serving (its own error was logged)."""


class Backoff:
    """How long to wait before starting again a worker that died.

    A worker that had served for ``steady`` seconds is started again at once: one crash is
    not a crash loop. One that dies sooner (or before it ever served) waits ``first``
    seconds, then twice as long each time it dies young again, up to ``most``: a worker that
    cannot start does not spin the machine forking, and starts soon once the cause is gone.
    """

    def __init__(self, *, first: float = 0.5, most: float = 30.0, steady: float = 10.0) -> None:
        self.first = first
        self.most = most
        self.steady = steady
        self.failures = 0       # deaths in a row of a worker that had not served ``steady``

    def delay(self, served: float | None) -> float:
        """Seconds before the next start, for a worker that served ``served`` seconds
        before it died (None: it never served)."""
        if served is not None and served >= self.steady:
            self.failures = 0
            return 0.0
        self.failures += 1
        return float(min(self.most, self.first * 2 ** (self.failures - 1)))


def bind_shared(address: tuple[str, int], count: int, variable: str) -> list[socket.socket]:
    """``count`` listening sockets on ``address`` with ``SO_REUSEPORT``; :class:`CannotListen`
    naming ``variable`` when the address cannot be bound.

    The address is first bound once without ``SO_REUSEPORT`` (and let go): that finds port 0's
    port, and is refused when anything listens there already -- another gateway's workers
    too, which would else share the port with these without a word.
    """
    try:
        probe = bind(address)
    except OSError as exc:
        raise CannotListen(address, variable, exc) from exc
    shared = (address[0], probe.getsockname()[1])
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(bind(shared, reuse_port=True))
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise CannotListen(shared, variable, exc) from exc
    return socks


@dataclasses.dataclass(eq=False)
class _Worker:
    """One worker's place: its sockets (kept by the parent across restarts), and the
    process running in it now, if any."""

    index: int                          # 1 to N
    sock: socket.socket
    admin: socket.socket | None
    peer: socket.socket | None          # its metrics for its siblings (observe.peers)
    backoff: Backoff
    pid: int = 0                        # 0: none running
    pipe: int = -1                      # the read end of its pipe to the parent
    started: float = 0.0
    served_since: float | None = None   # when it said it listens
    restart_at: float | None = None
    report: bytes = b""                 # what it said on its pipe
    starts: int = 0
    stopping: bool = False              # SIGTERM sent


def serve_workers(settings: FrontEndSettings, socks: Sequence[socket.socket],
                  admins: Sequence[socket.socket] | None, banner: Callable[[], None], *,
                  config: str | None = None,
                  serve: Callable[..., None] | None = None) -> None:
    """Run one worker per socket of ``socks`` (with the admin socket of ``admins`` of the
    same place) until SIGTERM or SIGINT; ``banner()`` once they all listen. ``config``: the
    config file a SIGHUP re-reads (in every worker), None for none. ``serve``: what each
    worker runs, ``serve(settings, sock, admin, banner)`` (the fast server's
    :func:`~lbmiddleware.gateway.fast.serve_fast` by default). Raises :class:`ConfigError`,
    ``OSError`` or :class:`WorkerFailed` when a worker cannot start."""
    if admins is not None and len(admins) != len(socks):
        raise ValueError(f"{len(socks)} sockets but {len(admins)} admin sockets")
    Supervisor(settings, socks, admins, banner, config=config, serve=serve).run()


class Supervisor:
    """The parent of the workers (see the module's docstring and :func:`serve_workers`)."""

    def __init__(self, settings: FrontEndSettings, socks: Sequence[socket.socket],
                 admins: Sequence[socket.socket] | None, banner: Callable[[], None], *,
                 config: str | None = None, serve: Callable[..., None] | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.config = config
        self.banner = banner
        self._serve = serve
        self._timer = timer
        self.shutdown_timeout = settings[GatewaySettings].shutdown_timeout
        # With an admin listener, each worker's metrics on a loopback address of its own:
        # the worker answering /metrics reads its siblings' there (observe/peers.py).
        peers = _peer_sockets(len(socks)) if admins is not None else None
        self._peers = [] if peers is None else [peer.getsockname()[:2] for peer in peers]
        self.workers = [_Worker(index, sock, None if admins is None else admins[index - 1],
                                None if peers is None else peers[index - 1], Backoff())
                        for index, sock in enumerate(socks, 1)]
        self.serving = False            # every worker said it listens, once
        self.stopping = False
        self._kill_at: float | None = None
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._life_r, self._life_w = os.pipe()     # EOF in the workers: the parent is gone
        self._previous: dict[int, Any] = {}
        self._failure: BaseException | None = None

    # -- the parent's loop ---------------------------------------------------------------

    def run(self) -> None:
        if threading.active_count() > 1:
            # a thread's locks (logging's, an import's) would be held for ever in a worker
            logger.warning("workers forked with other threads running: %s", ", ".join(
                t.name for t in threading.enumerate() if t is not threading.current_thread()))
        self._take_signals()
        try:
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            for worker in self.workers:
                self._start(worker)
            while not (self.stopping and not self._running()):
                self._step()
        finally:
            self._stop_all()
            self._give_back_signals()
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)
            for worker in self.workers:
                if worker.peer is not None:
                    worker.peer.close()
        if self._failure is not None:
            raise self._failure

    def _step(self) -> None:
        for key, _ in self._selector.select(self._timeout()):
            if key.fd == self._wake_r:
                _drain(self._wake_r)
            else:
                self._read(key.data)
        self._take_pending_signals()
        self._reap()
        now = self._timer()
        if self.stopping:
            if self._kill_at is not None and now >= self._kill_at:
                self._kill_at = None
                self._kill_left("did not stop within LB_SHUTDOWN_TIMEOUT "
                                f"({self.shutdown_timeout:g} s) and {KILL_GRACE:g} s more")
            return
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at:
                worker.restart_at = None
                self._start(worker)

    def _timeout(self) -> float | None:
        times = [w.restart_at for w in self.workers if w.restart_at is not None]
        if self.stopping:
            times = [] if self._kill_at is None else [self._kill_at]
        if not times:
            return None
        return max(0.0, min(times) - self._timer())

    def _running(self) -> list[_Worker]:
        return [worker for worker in self.workers if worker.pid]

    # -- a worker's life -----------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        read, write = os.pipe()
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()  # or the worker writes the parent's buffered text again
            pid = os.fork()
        except BaseException:   # no worker (EAGAIN: a process limit): no pipe left open
            os.close(read)
            os.close(write)
            raise
        if pid == 0:            # the worker: never returns
            os.close(read)
            self._worker(worker, write)
        os.close(write)
        os.set_blocking(read, False)    # (its last words are read after it ended)
        worker.pid, worker.pipe = pid, read
        worker.started, worker.served_since, worker.report = self._timer(), None, b""
        worker.starts += 1
        worker.stopping = False
        self._selector.register(read, selectors.EVENT_READ, worker)
        logger.debug("worker %d started (pid %d)", worker.index, pid)

    def _read(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:            # it exited (reaped by _reap, which closes the pipe)
            self._selector.unregister(worker.pipe)
            return
        if worker.served_since is None and not worker.report and data[:1] == _READY:
            worker.served_since = self._timer()
            data = data[1:]
            if self.serving:
                logger.info("worker %d (pid %d) serving again", worker.index, worker.pid)
            elif all(w.served_since is not None for w in self.workers):
                self.serving = True
                self.banner()
        worker.report += data[:65536 - len(worker.report)]

    def _reap(self) -> None:
        for worker in self._running():
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid:
                self._ended(worker, status)

    def _ended(self, worker: _Worker, status: int) -> None:
        now = self._timer()
        pid, worker.pid = worker.pid, 0
        try:
            while data := os.read(worker.pipe, 65536):      # its last words, if any
                worker.report += data
        except OSError:
            pass
        if worker.pipe in self._selector.get_map():
            self._selector.unregister(worker.pipe)
        os.close(worker.pipe)
        worker.pipe = -1
        how = _exit_text(status)
        if self.stopping:
            # (SIGTERM before its server took the signal: its default action, as asked)
            if status and not (os.WIFSIGNALED(status)
                               and os.WTERMSIG(status) == signal.SIGTERM):
                logger.warning("worker %d (pid %d) %s while stopping", worker.index, pid, how)
            else:
                logger.debug("worker %d (pid %d) stopped", worker.index, pid)
            return
        if not self.serving and worker.served_since is None:
            # the gateway does not start: as one process would, it says why and ends
            self._failure = _startup_error(worker, pid, how)
            self._stop()
            return
        served = None if worker.served_since is None else now - worker.served_since
        delay = worker.backoff.delay(served)
        worker.restart_at = now + delay
        logger.warning("worker %d (pid %d) %s%s; starting it again %s", worker.index, pid,
                       how, "" if served is not None else " before it served",
                       "now" if delay == 0 else f"in {delay:g} s")

    # -- stopping ------------------------------------------------------------------------

    def _stop(self) -> None:
        """SIGTERM to every worker once: each stops as one gateway does on it."""
        if not self.stopping:
            self.stopping = True
            self._kill_at = self._timer() + self.shutdown_timeout + KILL_GRACE
        for worker in self.workers:
            worker.restart_at = None
            if worker.pid and not worker.stopping:
                worker.stopping = True
                _signal(worker.pid, signal.SIGTERM)

    def _kill_left(self, why: str) -> None:
        for worker in self._running():
            logger.warning("worker %d (pid %d) %s: killed", worker.index, worker.pid, why)
            _signal(worker.pid, signal.SIGKILL)

    def _stop_all(self) -> None:
        """On the way out (an exception in the parent too): no worker is left running."""
        if not self._running():
            return
        self._stop()
        deadline = self._timer() + self.shutdown_timeout + KILL_GRACE
        for worker in self._running():
            while worker.pid:
                try:
                    pid, status = os.waitpid(worker.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = worker.pid, 0
                if pid:
                    self._ended(worker, status)
                elif self._timer() >= deadline:
                    _signal(worker.pid, signal.SIGKILL)
                    self._ended(worker, os.waitpid(worker.pid, 0)[1])
                else:
                    time.sleep(0.05)

    # -- signals -------------------------------------------------------------------------

    def _take_signals(self) -> None:
        """Each signal noted and the loop woken (Python runs the handler in this thread,
        between two steps; the wake-up pipe ends the ``select``)."""
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._previous[-1] = signal.set_wakeup_fd(self._wake_w)

        def note(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, note)

    def _give_back_signals(self) -> None:
        for signum, handler in self._previous.items():
            if signum == -1:
                signal.set_wakeup_fd(handler)
            else:
                signal.signal(signum, handler)

    def _take_pending_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    if signum == signal.SIGINT:     # a second Ctrl-C: now
                        self._kill_left("stopped at once (a second SIGINT)")
                    continue
                logger.info("%s: stopping the %d workers", signal.Signals(signum).name,
                            len(self.workers))
                self._stop()
            elif signum == signal.SIGHUP:
                self._sighup()

    def _sighup(self) -> None:
        if self.config is None:
            logger.warning("SIGHUP: nothing to re-read: the gateway was started without "
                           "--config (LB_* variables are read once, at the start)")
            return
        pids = [worker.pid for worker in self._running() if not worker.stopping]
        for pid in pids:
            _signal(pid, signal.SIGHUP)
        logger.debug("SIGHUP: %s to be re-read by the workers (pid %s)", self.config,
                     ", ".join(map(str, pids)) or "none")

    # -- in the worker -------------------------------------------------------------------

    def _worker(self, worker: _Worker, pipe: int) -> None:
        """The forked worker: the parent's signals, descriptors and loop left behind, then
        the fast server until it stops; the process ends here (``os._exit``: never back
        into the parent's stack)."""
        status = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum, handler in self._previous.items():
                if signum != -1:
                    signal.signal(signum, handler)
            os.setpgid(0, 0)        # a terminal's Ctrl-C is the parent's to pass on
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._life_w):
                os.close(fd)
            for other in self.workers:
                if other.pipe >= 0:
                    os.close(other.pipe)
                if other is not worker:
                    for each in (other.sock, other.admin, other.peer):
                        if each is not None:
                            each.close()
            set_worker(worker.index, len(self.workers), self._peers)
            if worker.peer is not None:
                serve_peers(worker.peer)
            _watch_parent(self._life_r)
            serve = self._serve
            if serve is None:
                from . import serve_fast
                serve = serve_fast
            serve(self.settings, worker.sock, worker.admin,
                  lambda: _say(pipe, _READY))
        except KeyboardInterrupt:
            pass
        except ConfigError as exc:
            _say(pipe, _CONFIG_ERROR + str(exc).encode("utf-8", "replace"))
            status = _STATUS[_CONFIG_ERROR]
        except OSError as exc:
            logger.debug("worker %d (pid %d) failed", worker.index, os.getpid(), exc_info=True)
            _say(pipe, _OS_ERROR + str(exc).encode("utf-8", "replace"))
            status = _STATUS[_OS_ERROR]
        except BaseException:
            logger.exception("worker %d (pid %d) failed", worker.index, os.getpid())
            status = _FAILED
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(status)


def _peer_sockets(count: int) -> list[socket.socket] | None:
    """``count`` listening sockets on loopback for the workers' metrics; None (a WARNING:
    each worker's /metrics then has its own samples alone) when loopback cannot be bound."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(bind(("127.0.0.1", 0)))
    except OSError as exc:
        for sock in socks:
            sock.close()
        logger.warning("the workers' metrics cannot be gathered (127.0.0.1: %s): /metrics "
                       "has the samples of the worker that answers alone", exc.strerror)
        return None
    return socks


def _watch_parent(life: int) -> None:
    """In a worker: SIGTERM to itself when the parent is gone (its end of ``life`` closed),
    so that no worker outlives a parent that was killed."""
    def watch() -> None:
        try:
            while os.read(life, 1):
                pass
        except OSError:
            pass
        logger.warning("worker (pid %d): the gateway's main process is gone: stopping",
                       os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lbmiddleware-parent", daemon=True).start()


def _say(pipe: int, data: bytes) -> None:
    try:
        os.write(pipe, data)
    except OSError:         # the parent is gone
        pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:      # ended already: reaped next
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _exit_text(status: int) -> str:
    """``waitpid``'s ``status`` in words: "exited with status 1", "was killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _startup_error(worker: _Worker, pid: int, how: str) -> BaseException:
    """The error of a worker that ended before the gateway served: the one it reported
    (a setting, an address: what one process would have raised), else :class:`WorkerFailed`."""
    kind, message = worker.report[:1], worker.report[1:].decode("utf-8", "replace")
    if kind == _CONFIG_ERROR:
        return ConfigError(message)
    if kind == _OS_ERROR:
        return OSError(message)
    return WorkerFailed(f"worker {worker.index} (pid {pid}) {how} before it served")
