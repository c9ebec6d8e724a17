"""The status apps: one ASGI and one WSGI application over the same routes, to mount where a
user likes (FastAPI/Starlette ``app.mount("/admin", ...)``, Flask's or Django's WSGI
dispatch) or to serve alone (the gateway's admin port).

Routes, relative to where the app is mounted (ASGI ``root_path``, WSGI ``SCRIPT_NAME``):

* ``/status``: the HTML page (:mod:`.page`);
* ``/status.json``: the snapshot (:mod:`.snapshot`, docs/status.md);
* ``/metrics``: Prometheus's text format (:func:`lbmiddleware.observe.metrics.exposition`),
  404 naming the extra when ``prometheus_client`` is not installed;
* ``/ready``: 200 while every pool has a usable backend, else 503 naming those without;
* ``/``: a redirect to ``status``.

GET and HEAD only (405 with ``Allow`` otherwise); anything else is 404. Each pool's
:class:`~.history.History` starts when the app is built, so its charts fill from then on.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, NamedTuple

from ..core.balancer import Balancer
from ..errors import EXTRAS, ConfigError
from ..proxy import quote_path
from .history import history_of
from .page import render
from .peers import gather, publish
from .snapshot import Pools, named_pools, snapshot
from .worker import current_worker

__all__ = ["status_app", "status_wsgi_app", "StatusApp", "StatusWSGIApp", "Response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StartResponse = Callable[..., Any]

_TEXT = "text/plain; charset=utf-8"
# The page needs no script, no frame, no form and no other origin: a network's text that
# escaped the escaping still could not run.
_PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_METRICS_EXTRA = "prometheus_client"
_REASONS = {200: "OK", 302: "Found", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class Response(NamedTuple):
    """What a route answers; the ASGI and WSGI apps write it their way."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _response(status: int, body: bytes | str, content_type: str = _TEXT,
              *extra: tuple[str, str]) -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = [("Content-Type", content_type), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), *extra]
    return Response(status, headers, data)


class _Routes:
    """The routes, shared by both apps: ``respond(method, path, base)`` where ``path`` is
    the request's path below the mount point and ``base`` the mount point's own path,
    percent-encoded (:func:`_quoted_base`)."""

    def __init__(self, pools: Pools, refresh: object, what: str) -> None:
        if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not (
                math.isfinite(refresh) and refresh > 0):
            raise ConfigError(f"{what}: refresh has value {refresh!r}: not a number of "
                              "seconds above 0")
        self.named = named_pools(pools, what)
        # one mapping, kept: the metrics' exposition sees the same names every scrape
        self.by_name: dict[str, Balancer] = dict(self.named)
        if len(self.by_name) != len(self.named):
            raise ConfigError(f"{what}: two pools have one name")
        self.refresh = float(refresh)
        for _, pool in self.named:
            history_of(pool)
        if current_worker() is not None:      # a gateway worker's: its siblings ask for it
            publish(self._own_metrics)

    def respond(self, method: str, path: str, base: str) -> Response:
        route = self._ROUTES.get(path or "/")
        if route is None:
            return _response(404, f"not found: {path}\n")
        if method not in ("GET", "HEAD"):
            return _response(405, f"method {method} not allowed: GET or HEAD\n", _TEXT,
                             ("Allow", "GET, HEAD"))
        response = route(self, base)
        if method == "HEAD":
            return response._replace(body=b"")
        return response

    def _redirect(self, base: str) -> Response:
        location = base.rstrip("/") + "/status"
        return _response(302, f"see {location}\n", _TEXT, ("Location", location))

    def _page(self, base: str) -> Response:
        page = render(self._snapshot(), refresh=self.refresh)
        return _response(200, page, "text/html; charset=utf-8",
                         ("Content-Security-Policy", _PAGE_POLICY))

    def _json(self, base: str) -> Response:
        body = json.dumps(self._snapshot(), separators=(",", ":"), allow_nan=False) + "\n"
        return _response(200, body, "application/json")

    def _metrics(self, base: str) -> Response:
        try:
            body, content_type = self._metrics_text()
            body = gather(body)     # a gateway worker's siblings' too (.peers)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != _METRICS_EXTRA:
                raise
            extra = EXTRAS[_METRICS_EXTRA]
            return _response(404, f"metrics need {_METRICS_EXTRA}, which is not installed: "
                                  f"pip install 'lbmiddleware[{extra}]'\n")
        return _response(200, body, content_type)

    def _metrics_text(self) -> tuple[bytes, str]:
        from .metrics import exposition
        return exposition(self.by_name)

    def _own_metrics(self) -> bytes:
        return self._metrics_text()[0]

    def _ready(self, base: str) -> Response:
        empty = [name for name, pool in self.named if not pool.pool_stats()["usable"]]
        if not empty:
            return _response(200, "ready\n")
        return _response(503, "not ready: no usable backend in "
                              + ", ".join(f"pool {name!r}" for name in empty) + "\n")

    def _snapshot(self) -> dict[str, Any]:
        return snapshot(self.by_name)

    _ROUTES: dict[str, Callable[[_Routes, str], Response]] = {
        "/": _redirect, "/status": _page, "/status.json": _json, "/metrics": _metrics,
        "/ready": _ready}


class StatusApp:
    """The status routes as a plain ASGI application (see the module's docstring)."""

    def __init__(self, pools: Pools, *, refresh: float = 5.0) -> None:
        self._routes = _Routes(pools, refresh, "status_app")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":              # served alone: nothing to start or stop
            await _lifespan(receive, send)
            return
        if kind != "http":                  # a websocket: refused
            await send({"type": "websocket.close", "code": 1000})
            return
        root = scope.get("root_path", "") or ""
        # in a thread: a big pool's page takes milliseconds the event loop need not wait
        response = await asyncio.get_running_loop().run_in_executor(
            None, self._routes.respond, scope["method"], _route_path(scope, root),
            _quoted_base(root))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                for name, value in response.headers]})
        await send({"type": "http.response.body", "body": response.body})


class StatusWSGIApp:
    """The status routes as a WSGI application (see the module's docstring)."""

    def __init__(self, pools: Pools, *, refresh: float = 5.0) -> None:
        self._routes = _Routes(pools, refresh, "status_wsgi_app")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        response = self._routes.respond(environ.get("REQUEST_METHOD", "GET"),
                                        environ.get("PATH_INFO", "") or "",
                                        _quoted_base(_wsgi_bytes(environ.get("SCRIPT_NAME"))))
        reason = _REASONS.get(response.status, "")
        start_response(f"{response.status} {reason}", response.headers)
        return [response.body] if response.body else []


def status_app(pools: Pools, *, refresh: float = 5.0) -> StatusApp:
    """An ASGI app serving ``/status``, ``/status.json``, ``/metrics`` and ``/ready`` for
    ``pools``: a Balancer, a list of them (named pool1, pool2...) or a mapping name ->
    Balancer. The page refreshes every ``refresh`` seconds.

    ::

        app.mount("/admin", lb.status_app(pool))        # FastAPI, Starlette
    """
    return StatusApp(pools, refresh=refresh)


def status_wsgi_app(pools: Pools, *, refresh: float = 5.0) -> StatusWSGIApp:
    """:func:`status_app` as a WSGI app (Flask, Django, a threaded stdlib server)."""
    return StatusWSGIApp(pools, refresh=refresh)


def _quoted_base(root: str | bytes) -> str:
    """The mount point's path (decoded: ASGI's ``root_path`` as text, WSGI's ``SCRIPT_NAME``
    as its bytes) percent-encoded for a Location: a mount point with a space, a line break or
    text beyond Latin-1 would else make no URI, or no header at all."""
    return quote_path(root)


def _wsgi_bytes(text: str | None) -> str | bytes:
    """A WSGI environ's path (PEP 3333: its bytes as Latin-1 text) as its bytes; text beyond
    Latin-1 (a server that decoded UTF-8 against the rule) is kept as text."""
    text = text or ""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text


def _route_path(scope: Scope, root: str) -> str:
    """The path below the mount point. Servers and frameworks disagree on whether ``path``
    includes ``root_path`` (Starlette's Mount keeps it, as the ASGI spec now says; older
    ones cut it): it is cut when it is there."""
    path: str = scope.get("path", "") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
