"""The gateway under granian: one worker forked with the app, the banner printed once that
worker accepts connections (:func:`serve_granian`); https with ``LB_TLS_CERT`` /
``LB_TLS_KEY`` (granian's ``ssl_cert`` / ``ssl_key``, TLS 1.2 and up)."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.settings import FrontEndSettings
from ..gateway_settings import GatewaySettings
from .app import make_app
from .logs import server_log_level, settings_logging_config
from .tls import check_certificate

__all__ = ["serve_granian"]


def _wait_until_listening(host: str, port: int, alive: Callable[[], bool],
                          timeout: float = 30.0) -> bool:
    """Whether ``host:port`` accepts a connection within ``timeout`` seconds; False at
    once when ``alive()`` turns false (the worker died). Runs in the caller's thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            time.sleep(0.02)
            continue
        return True
    return False


def serve_granian(settings: FrontEndSettings, host: str, port: int,
                  banner: Callable[[], None], admin: socket.socket | None) -> None:
    """Serve the gateway on ``host:port`` (and the admin listener on ``admin``) under
    granian until SIGINT or SIGTERM; ``banner()`` once the worker accepts connections."""
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    if TYPE_CHECKING:       # granian picks its server class when imported: a variable
        from granian.server import MPServer as Server
    else:
        from granian.server import Server

    gateway = settings[GatewaySettings]
    check_certificate(gateway)
    tls: dict[str, Any] = {}
    if gateway.tls_cert:
        # (granian's own minimum is TLS 1.3; 1.2 as nginx and uvicorn serve by default)
        tls = {"ssl_cert": pathlib.Path(gateway.tls_cert),
               "ssl_key": pathlib.Path(gateway.tls_key),
               "ssl_protocol_min": SSLProtocols.tls12}

    class AnnouncingServer(Server):
        """granian's server, printing the banner once its worker accepts connections.

        granian forks its worker after its startup hooks ran, and on Linux the worker
        binds its own socket, so the port is probed after the fork, in the main thread.
        Never from a thread alive across the fork: the probe's ``getaddrinfo`` imports
        ``encodings.idna``, and a worker forked while another thread held that import's
        lock froze on its first host name or TLS connection.
        """

        def startup(self, spawn_target: Callable[..., Any],
                    target_loader: Callable[..., Any]) -> None:
            super().startup(spawn_target, target_loader)  # type: ignore[no-untyped-call]
            # (the admin socket stays open here: each worker granian starts, on SIGHUP or
            # after a crash, gets its copy by the fork and serves on it)
            if _wait_until_listening(host, port, lambda: all(w.is_alive() for w in self.wrks)):
                banner()

    server = AnnouncingServer(
        "lbmiddleware.gateway:make_app", address=host, port=port, interface=Interfaces.ASGI,
        workers=1, loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        http=HTTPModes.http1, log_access=False,
        websockets=True,        # proxied: granian terminates the client's WebSocket
        # the worker configures logging with it again, after the fork
        log_dictconfig=settings_logging_config(settings),
        log_level=LogLevels(server_log_level(gateway.log_level)),
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(gateway.header_timeout * 1000))),
        backpressure=gateway.max_connections,       # connections a worker accepts at once
        # then the worker is killed (typed int, used as a join() timeout: a float works)
        workers_kill_timeout=gateway.shutdown_timeout,  # type: ignore[arg-type]
        **tls)
    server.serve(target_loader=functools.partial(make_app, settings, admin_socket=admin),
                 wrap_loader=False)
