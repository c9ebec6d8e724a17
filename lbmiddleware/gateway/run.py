"""``python -m lbmiddleware serve``: the server chosen (:func:`choose_server`), the sources'
libraries checked, the addresses bound, the banner printed, and the server run
(:func:`serve`).

SIGHUP: with a config file (``serve --config``) the process that owns the pools re-reads
it (:meth:`~lbmiddleware.gateway.app.RoutesGatewayApp.reload`). Under the fast server and
uvicorn that is the gateway's own process (with ``LB_WORKERS`` above 1, each worker: the
parent forwards the signal to them all, see ``fast/workers.py``); under granian it is the
worker, and granian's main process would answer SIGHUP by starting a new worker (new pools:
every backend's state lost), so once granian has set its own handlers (the banner is printed
after that) the main process's SIGHUP is forwarded to its worker instead. Without a config
file there is nothing to re-read: the fast and uvicorn gateways log so and go on (SIGHUP's
default would end them), granian's starts a new worker as granian does. From the start of
:func:`serve` until then, a SIGHUP is logged (the gateway is not serving yet), under every
server.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from ..core.settings import FrontEndSettings
from ..errors import ConfigError
from ..fleet.pool import require_library
from ..gateway_settings import GatewaySettings
from ..proxy.settings import ProxySettings
from .config import GatewayConfig, Route
from .fast.workers import bind_shared, serve_workers
from .granian_server import serve_granian
from .listen import bind_setting, url
from .tls import check_backend_files, check_certificate
from .uvicorn_server import serve_uvicorn

logger = logging.getLogger("lbmiddleware.gateway")

__all__ = ["serve", "choose_server", "check_libraries", "banner_line", "SERVERS"]

# The modules each server needs, in ``auto``'s order of preference. The fast server: uvloop
# and httptools, and uvicorn with websockets for the WebSocket hand-off (an upgrade request
# goes to uvicorn's protocol). Under uvicorn the gateway's protocol (head timeout, connection
# limit, no trailers as headers) extends uvicorn's httptools protocol.
SERVERS = {"fast": ("uvloop", "httptools", "uvicorn", "websockets"),
           "granian": ("granian",), "uvicorn": ("uvicorn", "httptools")}


def choose_server(settings: GatewaySettings, *, server_name: str = "LB_SERVER",
                  workers_name: str = "LB_WORKERS") -> str:
    """``"fast"``, ``"granian"`` or ``"uvicorn"`` for ``settings.server`` (``auto``: the first
    installed, in :data:`SERVERS`' order); ConfigError if not installed, or if
    ``settings.workers`` is more than 1 and the server is not the fast one (the names: how
    the error calls the two settings)."""
    wanted = settings.server
    missing = {name: [m for m in modules if importlib.util.find_spec(m) is None]
               for name, modules in SERVERS.items()}
    installed = [name for name in SERVERS if not missing[name]]
    if wanted == "auto":
        if not installed:
            raise ConfigError("no HTTP server for the gateway: pip install 'lbmiddleware[gateway]'"
                              " (uvloop, httptools and uvicorn for the fast server; or granian)")
        chosen = installed[0]
    elif wanted not in installed:
        names = " ".join(missing[wanted])
        raise ConfigError(f"{server_name} has value {wanted!r}: {names} is not installed "
                          f"(pip install {names})")
    else:
        chosen = wanted
    if settings.workers > 1 and chosen != "fast":
        how = (f"{server_name} has value {wanted!r}" if wanted != "auto" else
               f"{server_name} has value 'auto', which chose {chosen} (the fast server's "
               f"{' '.join(missing['fast'])} not installed)")
        raise ConfigError(f"{workers_name} has value {settings.workers}: more than one worker "
                          f"needs the fast server, and {how}")
    return chosen


def check_libraries(settings: FrontEndSettings) -> None:
    """ConfigError naming the source and the extra to install when a source's library is
    missing (dnspython for DNS), and each pool's backend TLS files that cannot be loaded:
    found before the server starts, not by its worker building the pool (granian's would
    crash with a traceback; uvicorn's after the banner). A config file's: every route's."""
    pools = ([route.settings.core for route in settings.routes]
             if isinstance(settings, GatewayConfig) else [settings.core])
    for pool in pools:
        for source in pool.sources:
            try:
                require_library(source)
            except ModuleNotFoundError as exc:
                raise ConfigError(str(exc)) from None
        # (a config file's were checked as it was read, naming its line: again is cheap)
        check_backend_files(pool)


def serve(settings: FrontEndSettings, *, out: TextIO = sys.stdout) -> None:
    """Run the gateway until interrupted (SIGINT / SIGTERM); ``settings`` from
    :func:`~lbmiddleware.gateway.load_settings`. Raises ``ConfigError`` when the chosen
    server, or a source's library, is not installed and ``OSError`` when the address is
    taken."""
    config = settings.path if isinstance(settings, GatewayConfig) else None
    # From the start, before either server runs: SIGHUP's default would end the process.
    with _sighup_until_served(config):
        _serve(settings, config, out)


def _serve(settings: FrontEndSettings, config: str | None, out: TextIO) -> None:
    gateway = settings[GatewaySettings]
    server = choose_server(gateway, server_name=_named(settings, "server", "LB_SERVER"),
                           workers_name=_named(settings, "workers", "LB_WORKERS"))
    check_libraries(settings)
    workers = gateway.workers if server == "fast" else 1
    socks, admins = _bind(settings, workers)
    sock, admin = socks[0], None if admins is None else admins[0]
    host, port = sock.getsockname()[:2]
    if server == "granian":
        sock.close()        # granian binds the address itself (port 0: the one just found)
    line = banner_line(settings, server if workers == 1 else f"{server}, {workers} workers",
                       host, port, None if admin is None else admin.getsockname()[:2])
    banner: Callable[[], None] = functools.partial(print, line, file=out, flush=True)
    try:
        if server == "granian":
            if config is not None:      # (before the banner: a SIGHUP may follow it at once)
                banner = _then(functools.partial(_forward_sighup, config), banner)
            serve_granian(settings, host, port, banner, admin)
        elif workers > 1:
            check_certificate(gateway)  # once, here, rather than by every worker
            serve_workers(settings, socks, admins, banner, config=config)
        elif server == "fast":
            from .fast import serve_fast
            serve_fast(settings, sock, admin, banner)
        else:
            banner()        # the sockets listen already: connections wait in the backlog
            serve_uvicorn(settings, sock, admin)
    finally:
        for each in (*socks, *(admins or ())):
            each.close()


def _bind(settings: FrontEndSettings, count: int
          ) -> tuple[list[socket.socket], list[socket.socket] | None]:
    """The listening sockets, bound here so that port 0 is resolved once and printed (and
    before granian forks: its worker serves on the admin socket): one, or with ``count``
    workers one each on the same address (:func:`~.fast.workers.bind_shared`); the admin
    listener's the same way, None without one."""
    gateway = settings[GatewaySettings]

    def bound(address: tuple[str, int], variable: str) -> list[socket.socket]:
        if count == 1:
            return [bind_setting(address, variable)]
        return bind_shared(address, count, variable)

    socks = bound(gateway.listen_address, _named(settings, "listen", "LB_LISTEN"))
    if gateway.admin_address is None:
        return socks, None
    try:
        admins = bound(gateway.admin_address, _named(settings, "admin_listen", "LB_ADMIN_LISTEN"))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks, admins


def banner_line(settings: FrontEndSettings, server: str, host: str, port: int,
                admin: tuple[str, int] | None) -> str:
    """What ``serve`` prints once its address listens (connections wait in the backlog until
    the pools' sources first answered): its address (https:// with ``LB_TLS_CERT``), then
    the pool (or each route's, in the file's order), and the admin listener's page."""
    gateway = settings[GatewaySettings]
    address = url(host, port)
    if gateway.tls_cert:
        address = "https://" + address.removeprefix("http://")
    if isinstance(settings, GatewayConfig):
        routes = sorted(settings.routes, key=lambda route: route.line)
        pools = "; ".join(f"{_route_label(route)} -> "
                          f"{', '.join(b.url for b in route.settings.core.backends)}"
                          for route in routes)
        line = (f"lbmiddleware gateway listening on {address} ({server}, "
                f"{len(routes)} route{'s' if len(routes) != 1 else ''} from "
                f"{settings.path}): {pools}")
    else:
        backends = ", ".join(b.url for b in settings.core.backends)
        line = (f"lbmiddleware gateway listening on {address} "
                f"(prefix {settings[ProxySettings].prefix}, policy {settings.core.policy}, "
                f"{server}) -> {backends}")
    if admin is not None:
        line += f"; admin {url(*admin)}/status"
    return line


def _named(settings: FrontEndSettings, key: str, variable: str) -> str:
    """How an error names the setting of an address: its variable, or with a config file
    the option that gave it, else its key in the file."""
    if not isinstance(settings, GatewayConfig):
        return variable
    if key in dict(settings.options):
        return {"listen": "--listen", "admin_listen": "--admin",
                "workers": "--workers"}.get(key, key)
    return f"{key} in {settings.path}"


def _route_label(route: Route) -> str:
    where = f"{route.host or ''}{route.prefix}"
    return where if route.name == where else f"{where} [{route.name}]"


def _then(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()
    return both


def _forward_sighup(config: str) -> None:
    """In granian's main process, once granian set its handlers: SIGHUP goes to the
    worker, which re-reads ``config`` (granian would start a new worker)."""
    def forward(signum: int, frame: FrameType | None) -> None:
        workers = multiprocessing.active_children()
        for worker in workers:
            if worker.pid is not None:
                os.kill(worker.pid, signal.SIGHUP)
        logger.debug("SIGHUP: %s to be re-read by the worker (pid %s)", config,
                     ", ".join(str(w.pid) for w in workers) or "none")
    signal.signal(signal.SIGHUP, forward)


@contextmanager
def _sighup_until_served(config: str | None) -> Iterator[None]:
    """SIGHUP, which would end the process by default, is logged from the start of
    :func:`serve` until something takes it: under uvicorn the app (at its lifespan's
    startup; without a config, never), under granian granian's own handler then
    :func:`_forward_sighup` (granian's worker, forked, inherits it until its app takes it)."""
    def early(signum: int, frame: FrameType | None) -> None:
        if config is None:
            logger.warning("SIGHUP: nothing to re-read: the gateway was started without "
                           "--config (LB_* variables are read once, at the start)")
        else:
            logger.warning("SIGHUP: %s not re-read: the gateway is not serving yet", config)
    previous = signal.signal(signal.SIGHUP, early)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
