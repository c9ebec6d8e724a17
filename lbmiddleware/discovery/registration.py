"""A replica that registers itself in etcd, so the pools that follow the prefix find it.

::

    with Registration("etcd://127.0.0.1:2379/services/orders", "http://10.0.0.5:8080"):
        serve_forever()                 # the key exists while the block runs

    async with Registration(source, url, ttl=10, weight=2):
        await server.serve()

On entry the key ``<prefix>/<the backend's URL>`` (``services/orders/http://10.0.0.5:8080``:
the normalised URL, so ``http://h`` and ``https://h`` are two keys, and ``http://h:80`` and
``http://h`` one) is put under a lease of ``ttl`` seconds; the lease is kept alive every
``ttl/3`` (etcd's naming convention; a lease that was lost meanwhile, say etcd lost its data,
is granted again and the key put again). On exit the key is deleted *first*, so that every
pool following the prefix stops picking the replica at once, then the lease is revoked. The
delete is a transaction that deletes the key only while it is under this registration's
lease: a replacement that registered the same URL meanwhile (a restart that started the new
process first) keeps its key. A process that dies without exiting the block stops renewing:
etcd drops the key when the lease expires (at most ``ttl`` later; a default etcd grants no
less than about 2 s). A delete that fails is logged and kept in ``unregister_error``: the key
then stays until the lease expires (:meth:`Registration.lease_remaining`).

The value is the URL (``http://10.0.0.5:8080``), or with ``weight`` or ``priority`` the JSON of
etcd's naming package: ``{"Addr": "10.0.0.5:8080", "Metadata": {"weight": 2}}`` (``Addr`` is
``host:port`` with the port always written, ``10.0.0.5:80`` too, as the naming package's
readers expect; the full URL when the scheme is https or there is a base path). :mod:`.etcd`
reads both as the registered backend (a test keeps the two in step).

The async context manager renews on the running loop; the sync one runs a loop of its own on a
daemon thread (``lbmiddleware-etcd-registration``), so it fits any program. ``python -m
lbmiddleware register`` is this class on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ..core.backend import Backend, Source
from ..core.casts import parse_duration
from ..errors import ConfigError
from .backoff import Backoff
from .etcd import EtcdClient, EtcdError
from .watcher import describe_error

__all__ = ["Registration", "DEFAULT_TTL", "main"]

logger = logging.getLogger(__name__)

DEFAULT_TTL = 10.0          # seconds of the lease


class Registration:
    """One backend registered under an etcd source's prefix (module docstring).

    ``source``: ``etcd://host:port/prefix`` (text or :class:`~lbmiddleware.Source`); ``url``:
    the backend's URL as callers reach it; ``ttl``: the lease in seconds (or ``"10s"``),
    rounded up to whole seconds; ``weight`` (>= 1) and ``priority`` (>= 0): written in the
    value's metadata when given. Bad values raise :class:`~lbmiddleware.ConfigError` naming
    them; etcd's failures on entry raise :class:`~.etcd.EtcdError`.
    """

    def __init__(self, source: Source | str, url: str | Backend, *, ttl: float | str = DEFAULT_TTL,
                 weight: int | None = None, priority: int | None = None) -> None:
        self.source = _etcd_source(source)
        if isinstance(url, Backend):
            url = url.url
        if not isinstance(url, str):
            raise ConfigError(f"registration URL {url!r} is not a string")
        # The checks of a backend (scheme, host, weight, priority) name the bad value.
        self.backend = Backend(url, 1 if weight is None else weight,
                               0 if priority is None else priority)
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise ConfigError(f"registration ttl {ttl!r}: {exc}") from None
        if seconds < 1:
            raise ConfigError(f"registration ttl {ttl!r}: etcd leases are whole seconds, "
                              "at least 1 (a default etcd grants no less than about 2)")
        self.ttl = math.ceil(seconds)
        self.key = self.source.path + self.backend.url
        self.value = _value(self.backend, weight, priority)
        self.client = EtcdClient(self.source.host, self.source.port or 2379)
        self.lease = 0                  # the current lease's id (0: none)
        self.granted_ttl = 0            # the TTL etcd granted it
        self.renewals = 0               # keep-alives etcd answered
        self.registrations = 0          # puts of the key (more than 1: the lease was lost)
        self.expires_at = 0.0           # time.monotonic() when the lease runs out unrenewed
        self.unregister_error: str | None = None    # why the last exit did not delete the key
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Registration({self.source.url!r}, {self.backend.url!r}, ttl={self.ttl})"

    @property
    def interval(self) -> float:
        """Seconds between keep-alives: a third of the lease."""
        return (self.granted_ttl or self.ttl) / 3

    # -- async ---------------------------------------------------------------------------

    async def __aenter__(self) -> Registration:
        await self.register()
        self._task = asyncio.get_running_loop().create_task(
            self._keep_alive(), name=f"lbmiddleware etcd registration {self.key}")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.unregister()

    async def register(self) -> None:
        """Grant a lease and put the key under it (raises :class:`EtcdError`)."""
        lease, granted = await self.client.grant(self.ttl)
        try:
            await self.client.put(self.key, self.value, lease)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.client.revoke(lease)
            raise
        self.lease, self.granted_ttl = lease, granted
        self.expires_at = time.monotonic() + granted
        self.registrations += 1
        logger.info("registered %s in etcd at %s as %r (lease %x, ttl %ds)",
                    self.backend.url, self.client.address, self.key, lease, granted)

    async def unregister(self) -> bool:
        """Stop renewing, delete the key (only while it is still under this registration's
        lease: a replacement that registered the same URL since keeps it), then revoke the
        lease. Returns True when the key was deleted now; failures are logged, not raised
        (the lease expires by itself, :meth:`lease_remaining` from now), and a failed delete
        is kept in :attr:`unregister_error`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.lease:
            return False
        lease, self.lease = self.lease, 0
        self.unregister_error = None
        try:
            deleted = await self.client.delete_if_lease(self.key, lease)
        except EtcdError as exc:
            # etcd is down or stalled: a revoke would fail the same way (and wait as long).
            self.unregister_error = str(exc)
            logger.warning("could not delete %r from etcd: %s; renewals stopped, so the key "
                           "stays until its lease expires, within %.0fs", self.key, exc,
                           self.lease_remaining())
            return False
        try:
            await self.client.revoke(lease)
        except EtcdError as exc:
            logger.warning("deregistered %s but did not revoke lease %x: %s (it expires by "
                           "itself within %.0fs)", self.backend.url, lease, exc,
                           self.lease_remaining())
        else:
            logger.info("deregistered %s: %s %r, revoked lease %x", self.backend.url,
                        "deleted" if deleted else "left (not under this lease any more)",
                        self.key, lease)
        return deleted

    def lease_remaining(self) -> float:
        """Seconds until the lease runs out if it is not renewed (0 once it has)."""
        return max(0.0, self.expires_at - time.monotonic())

    async def _keep_alive(self) -> None:
        backoff = Backoff(initial=min(1.0, self.interval), max_delay=self.interval)
        failing = False
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                ttl = await self.client.keepalive(self.lease)
                if ttl > 0:
                    self.expires_at = time.monotonic() + ttl
                    self.renewals += 1
                else:
                    logger.warning("etcd no longer has lease %x of %r (expired, or etcd lost "
                                   "its data): registering again", self.lease, self.key)
                    await self.register()
            except Exception as exc:    # etcd's failure, or a bug: renewing must go on
                if not failing:
                    logger.warning("cannot renew the etcd registration of %s: %s; retrying",
                                   self.backend.url, describe_error(exc))
                    failing = True
                delay = backoff.next()
                continue
            if failing:
                logger.info("etcd registration of %s renewed again", self.backend.url)
                failing = False
            backoff.reset()
            delay = self.interval

    # -- sync: a loop on a thread of its own ------------------------------------------------

    def __enter__(self) -> Registration:
        if self._loop is not None:
            raise RuntimeError(f"{self!r} is already open")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True,
                                  name="lbmiddleware-etcd-registration")
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result()
        except BaseException:
            _stop(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self, *, interrupt: threading.Event | None = None) -> bool:
        """The sync exit: delete the key, revoke the lease, stop the thread (idempotent).
        Returns True when the key was deleted now.

        ``interrupt``: give up as soon as it is set (a second signal to the command): the
        unregistering is cancelled, :attr:`unregister_error` says so, and the key, if etcd
        did not delete it meanwhile, goes when its lease expires."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return False
        self._loop = self._thread = None
        finished = threading.Event()

        async def closing() -> bool:
            try:
                return await self.unregister()
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(closing(), loop)
        try:
            if interrupt is None:
                return future.result()
            while not finished.wait(0.05):
                if interrupt.is_set():
                    future.cancel()             # cancels the task on the loop
                    finished.wait(1.0)          # let it unwind before the loop stops
                    self.unregister_error = "interrupted before etcd answered"
                    return False
            return future.result()
        finally:
            _stop(loop, thread)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _etcd_source(source: object) -> Source:
    if isinstance(source, str):
        source = Source(source)
    if not isinstance(source, Source):
        raise ConfigError(f"registration source {source!r} is not an etcd:// source")
    if source.kind != "etcd":
        raise ConfigError(f"registration source {source.url!r} is not an etcd:// source "
                          "(a backend registers in etcd; DNS records are the DNS server's)")
    return source


def _value(backend: Backend, weight: int | None, priority: int | None) -> str:
    if weight is None and priority is None:
        return backend.url
    plain = backend.scheme == "http" and not backend.path
    metadata: dict[str, Any] = {}
    if weight is not None:
        metadata["weight"] = weight
    if priority is not None:
        metadata["priority"] = priority
    # host:port with the port written even when it is the scheme's default (Backend.netloc
    # leaves it out): a bare host is no address for etcd's naming package, nor for parse_value.
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    address = f"{host}:{backend.port}" if plain else backend.url
    return json.dumps({"Addr": address, "Metadata": metadata})


# -- python -m lbmiddleware register ----------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lbmiddleware register SOURCE URL [--ttl 10s] [--weight N] [--priority N]
    [--drain DURATION]``: register, keep the lease alive, and on SIGTERM or SIGINT delete the
    key, wait ``--drain`` (callers' pools stop picking the backend meanwhile), exit 0.

    A second signal ends whatever is being waited for at once, and says so: the drain (exit
    0: the key is gone), or the delete itself (etcd stalled: exit 1, the key may stay until
    its lease expires). A delete that fails (etcd down or not answering) is logged with what
    follows: the key stays until the lease expires (renewals stopped, so within ``--ttl``);
    the command then waits for that and the drain, so that no pool still picks the backend
    when it exits, and exits 1. Exit status 2 for a bad argument, 1 when etcd cannot be
    reached at the start."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        drain = parse_duration(args.drain)
    except ValueError as exc:
        parser.error(f"argument --drain: {args.drain!r}: {exc}")
    try:
        registration = Registration(args.source, args.url, ttl=args.ttl, weight=args.weight,
                                    priority=args.priority)
    except ConfigError as exc:
        parser.error(str(exc))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    signals: list[int] = []
    stop = threading.Event()            # set by the first signal
    again = threading.Event()           # set by the second: stop waiting, whatever for

    def on_signal(number: int, frame: object) -> None:
        signals.append(number)
        (again if stop.is_set() else stop).set()

    previous = {number: signal.signal(number, on_signal)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            registration.__enter__()
        except EtcdError as exc:
            print(f"python -m lbmiddleware register: error: {exc}", file=sys.stderr)
            return 1
        logger.info("keeping the lease alive every %.3gs; SIGTERM or SIGINT deregisters "
                    "(drain %gs; a second signal stops waiting)", registration.interval, drain)
        while not stop.wait(1.0):       # a timeout: signals are handled between waits
            pass
        url = registration.backend.url
        logger.info("%s: deregistering %s", _name(signals[0]), url)
        deleted = registration.close(interrupt=again)
        error = registration.unregister_error
        if error is not None and again.is_set():
            logger.error("%s again: stopped waiting for etcd at %s to delete %r; if it was "
                         "not deleted, the key stays until its lease expires, within %.0fs, "
                         "and pools following %s may pick %s until then", _name(signals[-1]),
                         registration.client.address, registration.key,
                         registration.lease_remaining(), registration.source.url, url)
            return 1
        wait, status = drain, 0
        if error is not None:
            remaining = registration.lease_remaining()
            logger.error("%r was not deleted (etcd: %s), so it stays in etcd until its "
                         "lease expires, within %.1fs (ttl %ds, renewals stopped): pools "
                         "following %s pick %s until then. Waiting for that and the drain "
                         "(%.1fs in all; a second signal stops waiting), then exiting with "
                         "status 1", registration.key, error, remaining,
                         registration.granted_ttl, registration.source.url, url,
                         remaining + drain)
            wait, status = remaining + drain, 1
        elif drain:
            logger.info("draining for %gs before exit (callers stop picking %s)", drain, url)
        if wait and again.wait(wait):
            logger.info("%s again: ending the %s early", _name(signals[-1]),
                        "drain" if status == 0 else "wait")
        logger.info("exiting%s", "" if deleted or status == 0 else
                    f" with status 1: {registration.key!r} was not deleted")
        return status
    finally:
        registration.close()
        for number, handler in previous.items():
            signal.signal(number, handler)


def _name(number: int) -> str:
    return signal.Signals(number).name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lbmiddleware register",
        description="Register a backend in etcd under a lease and keep it alive; on SIGTERM or "
                    "SIGINT delete the key first, wait --drain, then exit 0. Pools that follow "
                    "the prefix (LB_BACKENDS=etcd://...) add and remove the backend.",
        epilog="example: python -m lbmiddleware register "
               "etcd://127.0.0.1:2379/services/orders http://10.0.0.5:8080 --ttl 10s --drain 5s")
    parser.add_argument("source", metavar="SOURCE",
                        help="etcd://host:port/prefix: the key goes under prefix/")
    parser.add_argument("url", metavar="URL", help="the backend's URL as callers reach it")
    parser.add_argument("--ttl", default=f"{DEFAULT_TTL:g}s",
                        help="the lease (10s, 5m; whole seconds, at least 1) [%(default)s]")
    parser.add_argument("--weight", type=_integer, default=None,
                        help="the backend's weight (>= 1), written in the value's metadata")
    parser.add_argument("--priority", type=_integer, default=None,
                        help="the backend's tier (0 first, 1 = backup), in the metadata")
    parser.add_argument("--drain", default="0s",
                        help="after deleting the key, wait this long before exiting, while "
                             "callers' pools stop picking the backend [%(default)s]")
    return parser


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
