"""The gateway: the ASGI proxy alone, under an HTTP server, configured from ``LB_*``.

``python -m lbmiddleware serve`` calls :func:`serve`. The server is chosen by
``LB_SERVER`` [auto]: granian when it is installed, else uvicorn (with httptools and
uvloop when installed). Both run one worker with no access log; measured with
``benchmarks/bench_proxy.py`` on the same middleware, granian serves about 25% more
requests per second (its HTTP layer is native code), so ``auto`` prefers it.

The gateway prints the address it listens on. Under uvicorn it binds the socket itself,
so ``LB_LISTEN=127.0.0.1:0`` gets a port from the OS with no race; granian's worker binds
its own socket, so for port 0 a free port is looked up first and handed to it, and the
address is printed once it accepts connections (probed after granian forked its worker:
no thread of ours is alive across a fork).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import socket
import sys
import time
from typing import Callable, Mapping, TextIO

from .asgi import LoadBalancerMiddleware
from .errors import ConfigError
from .proxy_settings import ProxySettings

__all__ = ["load_settings", "make_app", "app_from_env", "choose_server", "bind", "serve"]

SERVERS = ("granian", "uvicorn")


def load_settings(environ: Mapping[str, str] | None = None, **overrides) -> ProxySettings:
    """The gateway's settings from ``LB_*`` variables; raises ``ConfigError``."""
    return ProxySettings.from_env(environ, **overrides)


def make_app(settings: ProxySettings) -> LoadBalancerMiddleware:
    """The gateway's ASGI application: the proxy with no app behind it."""
    return LoadBalancerMiddleware(None, settings=settings)


def app_from_env() -> LoadBalancerMiddleware:
    """An application factory for any ASGI server: ``uvicorn --factory
    lbmiddleware.gateway:app_from_env`` (settings from ``LB_*``; ``LB_LISTEN`` unused)."""
    return make_app(load_settings())


def choose_server(settings: ProxySettings) -> str:
    """``"granian"`` or ``"uvicorn"`` for ``settings.server``; ConfigError if not installed."""
    wanted = settings.server
    installed = [name for name in SERVERS if importlib.util.find_spec(name) is not None]
    if wanted == "auto":
        if not installed:
            raise ConfigError("no HTTP server for the gateway: pip install 'lbmiddleware[gateway]'"
                              " (granian or uvicorn)")
        return installed[0]
    if wanted not in installed:
        raise ConfigError(f"LB_SERVER has value {wanted!r}: {wanted} is not installed "
                          f"(pip install {wanted})")
    return wanted


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on ``(host, port)``; port 0 lets the OS choose."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it; plain asyncio sets it only on IPPROTO_TCP sockets, and
    # without it every response waits ~40 ms on the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ProxySettings, *, out: TextIO = sys.stdout) -> None:
    """Run the gateway until interrupted (SIGINT / SIGTERM). Raises ``ConfigError`` when
    the chosen server is not installed and ``OSError`` when the address is taken."""
    server = choose_server(settings)
    sock = bind(settings.listen_address)
    host, port = sock.getsockname()[:2]
    if server == "granian":
        sock.close()        # granian binds the address itself (port 0: the one just found)
    shown = f"[{host}]" if ":" in host else host
    backends = ", ".join(b.url for b in settings.backends)
    banner = functools.partial(
        print, f"lbmiddleware gateway listening on http://{shown}:{port} "
               f"(prefix {settings.prefix}, policy {settings.policy}, {server}) -> {backends}",
        file=out, flush=True)
    if server == "granian":
        _serve_granian(settings, host, port, banner)
    else:
        try:
            banner()            # the socket listens already: connections wait in its backlog
            _serve_uvicorn(settings, sock)
        finally:
            sock.close()


def _serve_uvicorn(settings: ProxySettings, sock: socket.socket) -> None:
    import uvicorn

    has = importlib.util.find_spec
    config = uvicorn.Config(
        make_app(settings), lifespan="on", access_log=False, log_level="warning",
        loop="uvloop" if has("uvloop") else "asyncio",
        http="httptools" if has("httptools") else "h11",
        proxy_headers=False, server_header=False, date_header=False,
    )
    server = uvicorn.Server(config)
    if config.loop == "uvloop":
        import uvloop
        uvloop.run(server.serve(sockets=[sock]))
    else:
        asyncio.run(server.serve(sockets=[sock]))


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


def _serve_granian(settings: ProxySettings, host: str, port: int, banner: Callable[[], None]) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    class AnnouncingServer(Server):
        """granian's server, printing the banner once its worker accepts connections.

        granian forks its worker after its startup hooks ran, and on Linux the worker
        binds its own socket, so the port is probed after the fork, in the main thread.
        Never from a thread alive across the fork: the probe's ``getaddrinfo`` imports
        ``encodings.idna``, and a worker forked while another thread held that import's
        lock froze on its first host name or TLS connection.
        """

        def startup(self, spawn_target, target_loader) -> None:
            super().startup(spawn_target, target_loader)
            if _wait_until_listening(host, port, lambda: all(w.is_alive() for w in self.wrks)):
                banner()

    server = AnnouncingServer(
        "lbmiddleware.gateway:make_app", address=host, port=port, interface=Interfaces.ASGI,
        workers=1, loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        http=HTTPModes.http1, websockets=False, log_level=LogLevels.warning, log_access=False)
    server.serve(target_loader=functools.partial(make_app, settings), wrap_loader=False)
