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
less than about 2 s). A delete that fails (etcd down or not answering) is tried again for
``retry_for`` seconds when the caller gives them (the command gives the TTL and its drain:
an etcd back meanwhile still deletes the key), then logged once and kept in
``unregister_error``: the key stays until the lease expires, which is up to about ``ttl``
after etcd is reachable again, not ``ttl`` after the last renewal, since a restarted etcd
renews every lease (its lessor starts them over when it becomes leader).

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
from ..core.casts import format_duration, parse_duration
from ..errors import ConfigError
from .backoff import Backoff
from .etcd import EtcdClient, EtcdError
from .watcher import describe_error

__all__ = ["Registration", "DEFAULT_TTL", "main"]

logger = logging.getLogger(__name__)

DEFAULT_TTL = 10.0          # seconds of the lease
RETRY_DELAY = 0.2           # a failed delete is tried again after 0.2 s, then 0.32 s, ...
MAX_RETRY_DELAY = 1.0       # ... at most 1 s apart (etcd back: the key goes within a second)
MIN_RETRY_TIMEOUT = 0.2     # a retry near its deadline still gets this long to be answered


class Registration:
    """One backend registered under an etcd source's prefix (module docstring).

    ``source``: ``etcd://host:port/prefix`` (text or :class:`~lbmiddleware.Source`); ``url``:
    the backend's URL as callers reach it; ``ttl``: the lease in whole seconds, at least 1
    (``10``, ``"10s"``, ``"1m"``; ``"2.5s"`` is refused naming 2s and 3s: etcd leases are whole
    seconds, and a rounded lease would not be the one asked for); ``weight`` (>= 1) and
    ``priority`` (>= 0): written in the value's metadata when given. Bad values raise
    :class:`~lbmiddleware.ConfigError` naming them; etcd's failures on entry raise
    :class:`~.etcd.EtcdError`.
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
        self.ttl = _whole_seconds(ttl)
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

    async def unregister(self, *, retry_for: float = 0.0) -> bool:
        """Stop renewing, delete the key (only while it is still under this registration's
        lease: a replacement that registered the same URL since keeps it), then revoke the
        lease. Returns True when the key was deleted now.

        A delete that fails (etcd down or not answering) is tried again with a short back-off
        for ``retry_for`` seconds (0: not at all), so that an etcd back within that time still
        deletes the key. A delete that fails for good is logged once, with what follows (the
        key stays until its lease expires: up to about a TTL after etcd is reachable again,
        since etcd renews every lease when it restarts), and kept in :attr:`unregister_error`;
        failures are not raised."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.lease:
            return False
        lease, self.lease = self.lease, 0
        self.unregister_error = None
        deadline = time.monotonic() + retry_for
        backoff = Backoff(initial=RETRY_DELAY, max_delay=MAX_RETRY_DELAY)
        timeout: float | None = None        # the client's own for the first try
        while True:
            try:
                deleted = await self.client.delete_if_lease(self.key, lease, timeout=timeout)
                break
            except EtcdError as exc:
                error = exc
            left = deadline - time.monotonic()
            if backoff.retries == 0 and left > 0:
                logger.warning("could not delete %r from etcd: %s; trying again until etcd "
                               "answers, for up to %s", self.key, error,
                               format_duration(retry_for, digits=3))
            if left <= 0:
                # etcd is down or stalled: a revoke would fail the same way (and wait as long).
                self.unregister_error = str(error)
                tried = (f"gave up deleting {self.key!r} after trying for "
                         f"{format_duration(retry_for, digits=3)} "
                         f"(etcd: {error})" if backoff.retries else
                         f"could not delete {self.key!r} from etcd: {error}")
                logger.error("%s; %s", tried, self._stays())
                return False
            await asyncio.sleep(min(backoff.next(), left))
            timeout = max(deadline - time.monotonic(), MIN_RETRY_TIMEOUT)
        try:
            await self.client.revoke(lease)
        except EtcdError as exc:
            logger.warning("deregistered %s but did not revoke lease %x: %s (no key is under "
                           "it now; etcd drops it when it expires)", self.backend.url, lease, exc)
        else:
            logger.info("deregistered %s: %s %r%s, revoked lease %x", self.backend.url,
                        "deleted" if deleted else "left (not under this lease any more)",
                        self.key, " once etcd answered again" if backoff.retries else "", lease)
        return deleted

    def _stays(self) -> str:
        """What follows when the key could not be deleted, for a log line. etcd drops it when
        its lease expires, but a restarted etcd renews every lease (its lessor starts them
        over when it becomes leader): so up to about a TTL after etcd is reachable again."""
        return (f"the key stays until its lease expires: up to about "
                f"{self.granted_ttl or self.ttl}s after etcd is reachable again, since etcd "
                f"renews leases when it restarts; pools following {self.source.url} keep "
                f"picking {self.backend.url} until then")

    def lease_remaining(self) -> float:
        """Seconds until the lease runs out if it is not renewed (0 once it has), while etcd
        stays up: a restarted etcd renews every lease (:meth:`unregister`)."""
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

    def close(self, *, interrupt: threading.Event | None = None, retry_for: float = 0.0
              ) -> bool:
        """The sync exit: delete the key, revoke the lease, stop the thread (idempotent).
        Returns True when the key was deleted now. ``retry_for``: as for :meth:`unregister`.

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
                return await self.unregister(retry_for=retry_for)
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


def _whole_seconds(ttl: object) -> int:
    """A lease's TTL: whole seconds, at least 1. A value between two whole seconds is refused
    naming both (etcd's leases are whole seconds; rounding would grant another lease than the
    one asked for), rather than rounded in one direction or the other."""
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise ConfigError(f"registration ttl {ttl!r}: {exc}") from None
    whole = round(seconds)
    if seconds < 1:
        raise ConfigError(f"registration ttl {ttl!r}: etcd leases are whole seconds, at least 1 "
                          "(a default etcd grants no less than about 2); use 1s")
    if abs(seconds - whole) > 1e-9:     # "0.1m" is 6.000000000000001 seconds: whole
        lower = math.floor(seconds)
        raise ConfigError(f"registration ttl {ttl!r}: etcd leases are whole seconds; "
                          f"use {lower}s or {lower + 1}s")
    return whole


def _etcd_source(source: object) -> Source:
    """The etcd:// source a registration writes to; any other text or kind of source (the
    DNS ones a pool reads, a plain URL) is refused naming it and the one form register takes."""
    text = source.url if isinstance(source, Source) else source
    if not isinstance(text, str):
        raise ConfigError(f"registration source {source!r} is not an etcd:// source")
    if not text.strip().lower().startswith("etcd://"):
        raise ConfigError(f"registration source {text!r} is not an etcd:// source: a backend "
                          "registers in etcd only (etcd://host:port/prefix, such as "
                          "etcd://127.0.0.1:2379/services/orders)")
    return source if isinstance(source, Source) else Source(text)


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

    A delete that fails (etcd down or not answering) is tried again until etcd answers, for
    up to ``--ttl`` and ``--drain`` in all (as long as the lease and the drain would run): an
    etcd back by then deletes the key, and the command drains and exits 0. Otherwise it says
    once what follows (the key stays until its lease expires: up to about ``--ttl`` after
    etcd is reachable again, since etcd renews every lease when it restarts) and exits 1. A
    second signal ends whatever is being waited for at once, and says so: the drain (exit 0:
    the key is gone), or the delete (exit 1, the key may stay as above). Exit status 2 for a
    bad argument, 1 when etcd cannot be reached at the start."""
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
        logger.info("keeping the lease alive every %s; SIGTERM or SIGINT deregisters "
                    "(drain %s; a second signal stops waiting)",
                    format_duration(registration.interval, digits=3), format_duration(drain))
        while not stop.wait(1.0):       # a timeout: signals are handled between waits
            pass
        url = registration.backend.url
        logger.info("%s: deregistering %s", _name(signals[0]), url)
        # Tried until etcd answers, for as long as the lease and the drain would have run: a
        # short etcd outage then deletes the key, where a restarted etcd would otherwise renew
        # its lease (the key a whole TTL more, the stopped replica still picked).
        registration.close(interrupt=again, retry_for=registration.ttl + drain)
        error = registration.unregister_error
        if error is not None and again.is_set():
            logger.error("%s again: stopped waiting for etcd at %s to delete %r; if it was "
                         "not deleted, %s", _name(signals[-1]), registration.client.address,
                         registration.key, registration._stays())
            return 1
        if error is not None:           # said by unregister, with what follows
            logger.info("exiting with status 1")
            return 1
        if drain:
            logger.info("draining for %s before exit (callers stop picking %s)",
                        format_duration(drain), url)
            if again.wait(drain):
                logger.info("%s again: ending the drain early", _name(signals[-1]))
        logger.info("exiting")
        return 0
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
                        help="etcd://host:port/prefix: the key goes under prefix/ (etcd "
                             "only: DNS records are the DNS server's)")
    parser.add_argument("url", metavar="URL", help="the backend's URL as callers reach it")
    parser.add_argument("--ttl", default=f"{DEFAULT_TTL:g}s",
                        help="the lease, in whole seconds, at least 1 (10s, 5m; 2.5s is "
                             "refused: etcd leases are whole seconds) [%(default)s]")
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
