"""``python -m lbmiddleware serve``: the server chosen (:func:`choose_server`), the sources'
libraries checked, the addresses bound, the banner printed, and the server run
(:func:`serve`)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import TextIO

from ..core.settings import FrontEndSettings
from ..errors import ConfigError
from ..fleet.pool import require_library
from ..gateway_settings import GatewaySettings
from ..proxy.settings import ProxySettings
from .granian_server import serve_granian
from .listen import bind_setting, url
from .uvicorn_server import serve_uvicorn

__all__ = ["serve", "choose_server", "check_libraries", "SERVERS"]

# The modules each server needs: under uvicorn the gateway's protocol (head timeout,
# connection limit, no trailers as headers) extends uvicorn's httptools protocol.
SERVERS = {"granian": ("granian",), "uvicorn": ("uvicorn", "httptools")}


def choose_server(settings: GatewaySettings) -> str:
    """``"granian"`` or ``"uvicorn"`` for ``settings.server``; ConfigError if not installed."""
    wanted = settings.server
    missing = {name: [m for m in modules if importlib.util.find_spec(m) is None]
               for name, modules in SERVERS.items()}
    installed = [name for name in SERVERS if not missing[name]]
    if wanted == "auto":
        if not installed:
            raise ConfigError("no HTTP server for the gateway: pip install 'lbmiddleware[gateway]'"
                              " (granian, or uvicorn with httptools)")
        return installed[0]
    if wanted not in installed:
        names = " ".join(missing[wanted])
        raise ConfigError(f"LB_SERVER has value {wanted!r}: {names} is not installed "
                          f"(pip install {names})")
    return wanted


def check_libraries(settings: FrontEndSettings) -> None:
    """ConfigError naming the source and the extra to install when a source's library is
    missing (dnspython for DNS): found before the server starts, not by its worker building
    the pool (granian's would crash with a traceback)."""
    for source in settings.core.sources:
        try:
            require_library(source)
        except ModuleNotFoundError as exc:
            raise ConfigError(str(exc)) from None


def serve(settings: FrontEndSettings, *, out: TextIO = sys.stdout) -> None:
    """Run the gateway until interrupted (SIGINT / SIGTERM); ``settings`` from
    :func:`~lbmiddleware.gateway.load_settings`. Raises ``ConfigError`` when the chosen
    server, or a source's library, is not installed and ``OSError`` when the address is
    taken."""
    gateway = settings[GatewaySettings]
    server = choose_server(gateway)
    check_libraries(settings)
    sock = bind_setting(gateway.listen_address, "LB_LISTEN")
    host, port = sock.getsockname()[:2]
    admin = None
    if gateway.admin_address is not None:
        try:
            # Bound here, before granian forks (its worker serves on this very socket), so
            # port 0 is resolved once and printed.
            admin = bind_setting(gateway.admin_address, "LB_ADMIN_LISTEN")
        except OSError:
            sock.close()
            raise
    if server == "granian":
        sock.close()        # granian binds the address itself (port 0: the one just found)
    backends = ", ".join(b.url for b in settings.core.backends)
    line = (f"lbmiddleware gateway listening on {url(host, port)} "
            f"(prefix {settings[ProxySettings].prefix}, policy {settings.core.policy}, "
            f"{server}) -> {backends}")
    if admin is not None:
        line += f"; admin {url(*admin.getsockname()[:2])}/status"
    banner = functools.partial(print, line, file=out, flush=True)
    try:
        if server == "granian":
            serve_granian(settings, host, port, banner, admin)
        else:
            banner()            # the sockets listen already: connections wait in the backlog
            serve_uvicorn(settings, sock, admin)
    finally:
        sock.close()
        if admin is not None:
            admin.close()
