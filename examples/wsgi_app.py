"""A plain WSGI app whose ``/api/...`` requests are load-balanced over LB_BACKENDS.

The app answers ``/`` itself; everything under ``/api`` goes to the backends (the same
line works for Flask: ``flask_app.wsgi_app = lb.WSGILoadBalancer(flask_app.wsgi_app, ...)``
and for Django's ``application``). With the demo's backends (fast, slow and flaky), in one
terminal::

    python -m lbmiddleware demo --backends-only    # prints LB_BACKENDS=http://127.0.0.1:...

and in another, with the line it printed::

    LB_BACKENDS=http://127.0.0.1:41001,http://127.0.0.1:41002,http://127.0.0.1:41003 \\
        LB_POLICY=least_conn python examples/wsgi_app.py

then ``curl -i http://127.0.0.1:8080/api/items`` a few times: the ``X-Backend`` header says
who answered; the flaky backend's failures are retried on another one. Every ``LB_*``
setting applies (``LB_RETRIES``, ``LB_TRUSTED_PROXIES``, ``LB_HASH_KEY``, ...).
"""

from __future__ import annotations

import argparse
import socketserver
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import lbmiddleware as lb


def home(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app's own page: everything outside /api."""
    body = (b"This page comes from the app itself.\n"
            b"Requests under /api go to the backends: try /api/items\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def make_app(environ: Mapping[str, str] | None = None) -> lb.WSGILoadBalancer:
    """The app wrapped by the load balancer (settings from LB_*; ``environ`` for tests)."""
    return lb.WSGILoadBalancer(home, prefix="/api", environ=environ)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    args = parser.parse_args(argv)
    try:
        app = make_app()
    except lb.ConfigError as exc:
        print(f"{exc}\n(see the top of {__file__} for how to run it)", file=sys.stderr)
        return 2
    with make_server("127.0.0.1", args.port, app, server_class=ThreadingWSGIServer) as server:
        print(f"serving on http://127.0.0.1:{server.server_port}/ (Ctrl-C to stop); "
              f"/api -> {', '.join(b.url for b in app.balancer.backends)}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
