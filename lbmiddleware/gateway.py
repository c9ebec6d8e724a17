"""The gateway: the ASGI proxy alone, under uvicorn, configured from ``LB_*`` variables.

``python -m lbmiddleware serve`` calls :func:`serve`. uvicorn runs with httptools and
uvloop when they are installed (``pip install lbmiddleware[gateway]``), one worker, no
access log: the fastest combination measured (``benchmarks/bench_proxy.py``). The
gateway binds its socket itself and prints the address it listens on, so
``LB_LISTEN=127.0.0.1:0`` (a port chosen by the OS) works too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from typing import Mapping, TextIO

from .asgi import LoadBalancerMiddleware
from .proxy import ProxySettings

__all__ = ["load_settings", "make_app", "app_from_env", "bind", "serve"]


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


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on ``(host, port)``; port 0 lets the OS choose."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ProxySettings, *, out: TextIO = sys.stdout) -> None:
    """Run the gateway until interrupted (SIGINT / SIGTERM)."""
    import uvicorn

    app = make_app(settings)
    sock = bind(settings.listen_address)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    has = importlib.util.find_spec
    config = uvicorn.Config(
        app, lifespan="on", access_log=False, log_level="warning",
        loop="uvloop" if has("uvloop") else "asyncio",
        http="httptools" if has("httptools") else "h11",
        proxy_headers=False, server_header=False, date_header=False,
    )
    server = uvicorn.Server(config)
    backends = ", ".join(b.url for b in settings.backends)
    print(f"lbmiddleware gateway listening on http://{shown}:{port} "
          f"(prefix {settings.prefix}, policy {settings.policy}) -> {backends}",
          file=out, flush=True)
    try:
        if config.loop == "uvloop":
            import uvloop
            uvloop.run(server.serve(sockets=[sock]))
        else:
            asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
