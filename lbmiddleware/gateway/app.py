"""The gateway's ASGI application: the proxy with no app behind it (one pool from ``LB_*``:
:class:`GatewayApp`; routes from a config file: :class:`RoutesGatewayApp`), and the admin
listener beside it in the process that owns the pools, from the lifespan's startup to its
shutdown.

A gateway with routes re-reads its file on SIGHUP (:meth:`RoutesGatewayApp.reload`), in
the process that owns the pools (uvicorn's; under granian, its worker, to which ``serve``
forwards the signal: granian would otherwise start a new worker, with new pools). A route
whose pool settings are unchanged but for its backends keeps its pool (``update()``: the
backends that stay keep their state: health, latency, counters), one whose other settings
changed gets a new pool, its old one closed once its requests end; a bad new file is a
WARNING and changes nothing. No connection is dropped: the server keeps running, and a
request goes on with the route it matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import fleet
from ..asgi import LoadBalancerMiddleware
from ..core.balancer import Balancer
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings
from ..errors import ConfigError
from ..gateway_settings import GatewaySettings, load_settings
from ..proxy.access import logger as access_logger
from ..proxy.settings import ProxySettings
from .admin import AdminServer
from .config import GatewayConfig, Route, file_stamp, read_config
from .listen import bind_setting
from .routes import Entry, Router, close_entry

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["make_app", "app_from_env", "GatewayApp", "RoutesGatewayApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("lbmiddleware.gateway")

#: Seconds between two looks at the config file's stamp, with ``[gateway] watch = true``.
WATCH_INTERVAL = 1.0


def make_app(settings: FrontEndSettings, *, admin_socket: socket.socket | None = None
             ) -> GatewayApp | RoutesGatewayApp:
    """The gateway's ASGI application: the proxy with no app behind it, and the admin
    listener beside it when ``LB_ADMIN_LISTEN`` is set (``settings``: from
    :func:`~lbmiddleware.gateway.load_settings`, or a config file's
    :class:`~lbmiddleware.gateway.config.GatewayConfig`, which makes a
    :class:`RoutesGatewayApp` reloaded on SIGHUP; ``admin_socket``: the admin address bound
    already, as :func:`~lbmiddleware.gateway.serve` does before granian forks)."""
    if isinstance(settings, GatewayConfig):
        return RoutesGatewayApp(settings, admin_socket=admin_socket)
    return GatewayApp(settings, admin_socket=admin_socket)


class GatewayApp(LoadBalancerMiddleware):
    """The proxy (with no app behind it), and with ``LB_ADMIN_LISTEN`` the status app on a
    listener of its own (:class:`AdminServer`) in the process that owns the pool: started
    at the lifespan's startup (before the sources' first answers are awaited, so ``/ready``
    says 503 meanwhile), stopped at its shutdown.

    ``admin_app`` makes the admin listener's WSGI app for the pool
    (:func:`lbmiddleware.observe.status_wsgi_app` by default).
    """

    def __init__(self, settings: FrontEndSettings, *, admin_socket: socket.socket | None = None,
                 admin_app: Callable[[Balancer], WSGIApplication] | None = None) -> None:
        super().__init__(None, settings=settings)
        self._admin_address = settings[GatewaySettings].admin_address
        self._admin_socket = admin_socket
        self._admin_app = admin_app if admin_app is not None else _status_app
        self._header_timeout = settings[GatewaySettings].header_timeout
        self.admin: AdminServer | None = None

    async def ready(self) -> bool:
        self._start_admin()
        return await super().ready()

    async def aclose(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            admin.stop()
        await super().aclose()

    def _start_admin(self) -> None:
        if self.admin is not None:
            return
        sock, self._admin_socket = self._admin_socket, None
        if sock is None and self._admin_address is not None:
            sock = bind_setting(self._admin_address, "LB_ADMIN_LISTEN")
        if sock is not None:
            self.admin = AdminServer(self._admin_app(self.balancer), sock,
                                     header_timeout=self._header_timeout)
            self.admin.start()


def _status_app(pools: Balancer | Mapping[str, Balancer]) -> WSGIApplication:
    from ..observe import status_wsgi_app
    return status_wsgi_app(pools)


def app_from_env() -> GatewayApp:
    """An application factory for any ASGI server: ``uvicorn --factory
    lbmiddleware.gateway:app_from_env`` (settings from ``LB_*``; ``LB_LISTEN`` unused)."""
    return GatewayApp(load_settings())


class RoutesGatewayApp:
    """The gateway of a config file: a :class:`~lbmiddleware.gateway.routes.Router` over
    one :class:`LoadBalancerMiddleware` and pool per route, the admin listener showing each
    route's pool by its name, and :meth:`reload` (on SIGHUP with ``reload_on_sighup``, as
    ``serve`` runs it: the signal handler is installed at the lifespan's startup, so an app
    under another server takes no signal of its own).

    ``admin_app`` makes the admin listener's WSGI app for the pools, a mapping route name
    -> pool in the file's order (:func:`lbmiddleware.observe.status_wsgi_app` by default);
    it is made again, for the new pools, after each reload.
    """

    def __init__(self, config: GatewayConfig, *, admin_socket: socket.socket | None = None,
                 admin_app: Callable[[Mapping[str, Balancer]], WSGIApplication] | None = None,
                 reload_on_sighup: bool = True) -> None:
        self.config = config
        gateway = config[GatewaySettings]
        self._admin_address = gateway.admin_address
        self._admin_socket = admin_socket
        self._admin_app = admin_app if admin_app is not None else _status_app
        self._header_timeout = gateway.header_timeout
        self._reload_on_sighup = reload_on_sighup
        self.admin: AdminServer | None = None
        entries = [_entry(route) for route in config.routes]
        self.router = Router(entries, access_log=config[ProxySettings].access_log)
        self._retired: list[Entry] = []         # replaced by a reload, requests in flight
        self._closing: set[asyncio.Task[None]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self._again = False                     # a SIGHUP came during a reload
        self._watching: asyncio.Task[None] | None = None
        self._seen = config.stamp               # the file's last version acted on
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self._signal_before: Callable[[int, Any], Any] | int | None = None
        #: How many reloads were applied (for tests and the logs).
        self.reloads = 0

    @property
    def pools(self) -> dict[str, Balancer]:
        """Each route's pool by the route's name, in the file's order."""
        entries = sorted(self.router.entries, key=lambda entry: entry.route.line)
        return {entry.route.name: entry.balancer for entry in entries}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def ready(self) -> bool:
        """Start the admin listener and the SIGHUP handler, then wait (without blocking the
        loop) for the first answers of every pool's sources: True when they all came."""
        self._start_admin()
        if self._reload_on_sighup:
            self._take_sighup()
        self._watch(self.config.watch)
        if self._seen is not None and _stamp(self.config.path) not in (self._seen, None):
            # Changed since it was read (by granian's main process, before it started this
            # worker; or by the process a worker granian starts again was forked from).
            self.request_reload()
        answers = await asyncio.gather(*(entry.middleware.ready()
                                         for entry in self.router.entries))
        return all(answers)

    async def aclose(self) -> None:
        """Stop taking SIGHUP, stop the admin listener, close every route's middleware
        and pool (those a reload retired too, their requests being cut by the shutdown)."""
        self._drop_sighup()
        self._watch(False)
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading
        admin, self.admin = self.admin, None
        if admin is not None:
            admin.stop()
        entries = [*self.router.entries, *self._retired]
        self._retired = []
        balancers = {id(entry.balancer): entry.balancer for entry in entries}
        for entry in entries:
            entry.on_idle = None
            await close_entry(entry, balancer=False)
        for balancer in balancers.values():
            await balancer.aclose()
        if self._closing:
            await asyncio.wait(self._closing)

    # -- reload ------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the file again and apply it (see the module's docstring): True when it
        was, False when it was refused (logged at WARNING: the running routes are kept)."""
        path = self.config.path
        try:
            new = read_config(path, options=dict(self.config.options),
                              log_level=self.config.log_level)
            self._seen = new.stamp
        except ConfigError as exc:
            self._seen = _stamp(path) or self._seen     # (this version is not tried again)
            logger.warning("%s was not reloaded (the running configuration is kept): %s",
                           path, exc)
            return False
        plan = _Plan(self.router.entries, new)
        try:
            plan.build()
        except Exception as exc:            # a pool that cannot be built: a source's library
            await plan.discard()
            logger.warning("%s was not reloaded (the running configuration is kept): %s",
                           path, exc)
            return False
        await asyncio.gather(*(entry.middleware.ready() for entry in plan.built))
        plan.update_backends()
        for entry in self.router.swap(plan.entries):
            self._retire(entry)
        running = self.config[GatewaySettings]
        self.config = dataclasses.replace(new, groups=self.config.groups)
        self.router.access_log = new[ProxySettings].access_log
        if new[ProxySettings].access_log:
            access_logger.setLevel(logging.INFO)        # (at log_level warning, say)
        if self.admin is not None:
            self.admin.set_app(self._admin_app(self.pools))
        self._watch(new.watch)
        self.reloads += 1
        logger.info("%s reloaded: %s", path, "; ".join(plan.changes) or "no change")
        restart = _changed(running, new[GatewaySettings], GatewaySettings)
        if restart:
            logger.warning("%s: [gateway] %s changed: taken at the next start only", path,
                           ", ".join(restart))
        return True

    def _retire(self, entry: Entry) -> None:
        """``entry`` left the table: close it once its requests in flight end (its pool
        too, unless a route of the new table kept it)."""
        self._retired.append(entry)

        def idle(done: Entry) -> None:
            self._retired.remove(done)
            shared = any(other.balancer is done.balancer
                         for other in (*self.router.entries, *self._retired))
            task = asyncio.get_running_loop().create_task(
                close_entry(done, balancer=not shared))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        entry.on_idle = idle
        entry.retire()

    def request_reload(self) -> None:
        """A reload soon, on the running loop (a SIGHUP's): one at a time, and a request
        during one makes one more after it (the file may have changed again)."""
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reloading %s failed; the running configuration is kept",
                                 self.config.path)

    def _watch(self, on: bool) -> None:
        """Start or stop looking at the file every :data:`WATCH_INTERVAL` seconds."""
        if on and self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch_file())
        elif not on and self._watching is not None:
            self._watching.cancel()
            self._watching = None

    async def _watch_file(self) -> None:
        """``[gateway] watch``: a reload when the file's stamp changes (a new version
        refused is not tried again until it changes again, or SIGHUP); a file missing for
        a moment (an editor's or a ConfigMap's swap) is looked at again the next time."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = _stamp(self.config.path)
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                self.request_reload()

    def _take_sighup(self) -> None:
        """SIGHUP -> :meth:`request_reload`, on this loop (in its main thread only: Python
        delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("SIGHUP does not reload %s: the server's loop is not in the main "
                           "thread", self.config.path)
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGHUP)
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            logger.warning("SIGHUP does not reload %s: %s", self.config.path, exc)
            return
        self._signal_loop = loop
        self._signal_before = previous

    def _drop_sighup(self) -> None:
        """The handler there was before :meth:`_take_sighup` back (asyncio would leave
        SIGHUP's default, which ends the process)."""
        loop, self._signal_loop = self._signal_loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_signal_handler(signal.SIGHUP)
            if self._signal_before is not None:
                signal.signal(signal.SIGHUP, self._signal_before)

    def _start_admin(self) -> None:
        if self.admin is not None:
            return
        sock, self._admin_socket = self._admin_socket, None
        if sock is None and self._admin_address is not None:
            sock = bind_setting(self._admin_address, "admin_listen")
        if sock is not None:
            self.admin = AdminServer(self._admin_app(self.pools), sock,
                                     header_timeout=self._header_timeout)
            self.admin.start()


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """The file's stamp now (:func:`~lbmiddleware.gateway.config.file_stamp`); None when it
    cannot be looked at (missing for a moment, say)."""
    try:
        return file_stamp(os.stat(path))
    except OSError:
        return None


def _entry(route: Route, balancer: fleet.Balancer | None = None) -> Entry:
    """A route's middleware, on ``balancer`` or a pool of its own."""
    if balancer is None:
        balancer = fleet.Balancer(settings=route.settings.core)
    proxy = FrontEndSettings((route.settings[ForwardingSettings], route.settings[ProxySettings]))
    middleware = LoadBalancerMiddleware(None, settings=proxy, balancer=balancer, environ={})
    return Entry(route, middleware, balancer)


def _same_pool(old: Settings, new: Settings) -> bool:
    """Whether a pool built with ``old`` serves ``new`` once given its backends: every
    setting but the backends the same, and the same sources (each has its watcher)."""
    return old.sources == new.sources and all(
        getattr(old, field.name) == getattr(new, field.name)
        for field in dataclasses.fields(Settings) if field.name != "backends")


def _changed(old: object, new: object, cls: type[Any]) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)
            if getattr(old, field.name) != getattr(new, field.name)]


class _Plan:
    """What a reload does to the running ``entries`` to serve ``config``'s routes, matched
    by name: each route keeps its entry (same settings: only its backends updated), keeps
    its pool under a new middleware (its forwarding, proxy settings or host changed), or
    gets a new pool (another pool setting changed, or a new route)."""

    def __init__(self, entries: tuple[Entry, ...], config: GatewayConfig) -> None:
        self.old = {entry.route.name: entry for entry in entries}
        self.config = config
        self.entries: list[Entry] = []
        self.built: list[Entry] = []            # entries made for this reload
        self.changes: list[str] = []
        self._updates: list[tuple[Entry, Route]] = []

    def build(self) -> None:
        said: list[tuple[int, str]] = []
        for route in self.config.routes:
            old = self.old.get(route.name)
            name = f"route {route.name!r}"
            if old is None:
                entry = self._new(_entry(route))
                said.append((route.line, f"{name} added"))
            elif not _same_pool(old.balancer.settings, route.settings.core):
                entry = self._new(_entry(route))
                changed = ", ".join(_changed(old.route.settings.core, route.settings.core,
                                             Settings))
                said.append((route.line, f"{name} has a new pool ({changed} changed)"))
            elif (old.route.host, old.route.settings[ForwardingSettings],
                  old.route.settings[ProxySettings]) != (
                    route.host, route.settings[ForwardingSettings],
                    route.settings[ProxySettings]):
                entry = self._new(_entry(route, old.balancer))
                self._updates.append((entry, route))
                said.append((route.line, f"{name} kept its pool"
                                         f"{self._backends_note(old, route)}, new proxy "
                                         f"settings"))
            else:
                entry = old
                self._updates.append((entry, route))
                said.append((route.line, f"{name} kept its pool"
                                         f"{self._backends_note(old, route)}"))
            self.entries.append(entry)
        self.changes = [text for _, text in sorted(said)]
        names = {route.name for route in self.config.routes}
        self.changes += [f"route {name!r} removed" for name in self.old if name not in names]

    def _new(self, entry: Entry) -> Entry:
        self.built.append(entry)
        return entry

    @staticmethod
    def _backends_note(old: Entry, route: Route) -> str:
        before = {b.url: b for b in old.route.settings.core.static_backends}
        after = {b.url: b for b in route.settings.core.static_backends}
        added = len(after.keys() - before.keys())
        removed = len(before.keys() - after.keys())
        if not added and not removed:
            return ""
        return f" (backends: {added} added, {removed} removed)"

    def update_backends(self) -> None:
        """The kept pools take their route's static backends (those that stay keep their
        state; those that left drain), and their entries the new route."""
        for entry, route in self._updates:
            entry.balancer.update(route.settings.core.static_backends)
            entry.route = route

    async def discard(self) -> None:
        """Close what :meth:`build` made, the reload being refused."""
        own = {id(entry.balancer) for entry in self.old.values()}
        for entry in self.built:
            await close_entry(entry, balancer=id(entry.balancer) not in own)
