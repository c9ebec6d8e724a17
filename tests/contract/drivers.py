"""How the proxy contract drives each proxy front-end: start one in front of real loopback
backends with given settings, send it a request, read what comes back.

A :class:`FrontEnd` makes proxies (``start``) and stops them all after the test. A
:class:`Proxy` takes a request in two ways:

* :meth:`Proxy.request`: method, request target (path and query, as the client spelled
  them), headers, body (bytes, or a list of chunks: streamed, chunked unless the headers
  give a length), the client's address (``peer``) and scheme. The ASGI and WSGI
  middlewares are called in-process, as the tests of each did before the contract: an ASGI
  scope (``tests/support/asgi_client.py``) on one event loop that lives as long as the
  proxy, and a WSGI environ built as wsgiref's server builds it, checked by
  ``wsgiref.validate`` with its warnings as errors. The gateway is a process
  (``python -m lbmiddleware serve``) and gets the request on the wire, under its own fast
  server (:class:`FastGatewayFrontEnd`) and on the ASGI path under granian
  (:class:`GranianGatewayFrontEnd`).
* :meth:`Proxy.raw`: raw bytes on a socket, through a real server: uvicorn (in a thread)
  for the ASGI middleware, a threaded wsgiref server for the WSGI middleware, the gateway
  itself.

Both return a :class:`Response`. Where the front-ends legitimately differ, the difference is
a documented attribute of the :class:`FrontEnd` class, and the contract branches on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import re
import socket
import sys
import threading
import urllib.parse
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.validate import validator

import lbmiddleware as lb
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.asgi_client import Call
from ..support.asgi_server import ServerThread
from ..support.gateway import GatewayProcess
from ..support.wsgi_server import serve_wsgi

HOST = "front.example"          # the Host the client sends
LOCAL = b"local app"            # what the wrapped application answers
TIMEOUT = 20.0                  # seconds for one exchange, whatever happens

Body = bytes | list[bytes]
Headers = Iterable[tuple[str, str]]


@dataclass
class Response:
    """What the client got. ``status`` is None when no response started; ``complete`` is
    False when the body ended before its framing said it would (or the front-end raised
    while producing it)."""

    status: int | None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = True
    reason: str | None = None           # the status line's phrase, where there is one

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def urls(backends: Iterable[Any]) -> list[str]:
    return [b if isinstance(b, str) else b.url for b in backends]


def local_app_asgi():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": LOCAL})
    return app


def local_app_wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [LOCAL]


# -- the wire ------------------------------------------------------------------------------------

def encode_request(method: str, target: str, headers: Headers, body: Body,
                   host: str | None = HOST) -> tuple[bytes, list[bytes]]:
    """The request head and the body's pieces as a client sends them on the wire."""
    headers = list(headers)
    names = {n.lower() for n, _ in headers}
    if host is not None and "host" not in names:
        headers.insert(0, ("Host", host))
    pieces = [body] if isinstance(body, bytes) else list(body)
    if body and not names & {"content-length", "transfer-encoding"}:
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p] + [b"0\r\n\r\n"]
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    return (head + "\r\n").encode("latin-1"), pieces


def exchange(port: int, data: bytes | list[bytes], method: str = "GET",
             peer: str = "127.0.0.1") -> Response:
    """Send ``data`` (or its pieces, one write each) from ``peer`` (a loopback address) to
    127.0.0.1:``port``; read one response."""
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((peer, 0))
        sock.connect(("127.0.0.1", port))
        for piece in [data] if isinstance(data, bytes) else data:
            try:
                sock.sendall(piece)
            except OSError:            # the server answered early and closed: read that
                break
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionError):
            return Response(None, complete=False)
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        except (ConnectionError, TimeoutError):
            body, complete = b"", False
        return Response(response.status, response.getheaders(), body, complete,
                        response.reason)


def request_method(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode("latin-1")


# -- the front-ends ------------------------------------------------------------------------------

class Proxy:
    """One running proxy front-end (made by :meth:`FrontEnd.start`)."""

    front_end: FrontEnd

    def request(self, method: str = "GET", target: str = "/", *, headers: Headers = (),
                body: Body = b"", peer: str | None = None, scheme: str = "http",
                checked: bool = True) -> Response:
        """One request. ``checked``: hold the front-end's answer to its interface's rules
        where a checker exists (``wsgiref.validate`` for WSGI; it requires a Content-Type
        that a redirect need not carry)."""
        raise NotImplementedError

    def raw(self, data: bytes | list[bytes], peer: str | None = None) -> Response:
        """Raw bytes to the proxy under a real server; one response read."""
        raise NotImplementedError

    def stats(self) -> dict[str, dict]:
        """The balancer's rows by backend URL (the gateway's through its admin listener's
        ``/status.json``, read-only)."""
        raise NotImplementedError

    def pool_stats(self) -> dict[str, Any]:
        """The balancer's ``pool_stats()`` (the gateway's as its ``/status.json`` shows it)."""
        raise NotImplementedError

    def policy(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class FrontEnd:
    """Makes proxies of one front-end for a test, and stops them after it.

    The attributes say where a front-end legitimately differs:

    ``name``
        for messages.
    ``wraps_an_app``
        it wraps an application that gets the requests outside the prefix (the gateway
        has none: they get 404).
    ``sees_balancer``
        the test can read the balancer's rows (in-flight counts, failures, state) at any
        moment and the middleware's settings objects, and share a ``Balancer``; the
        gateway's balancer lives in another process (:meth:`Proxy.stats` and
        :meth:`Proxy.pool_stats` read it through its admin listener, once the requests
        are done).
    ``takes_keywords``
        it is configured with keyword arguments as well as ``LB_*`` variables (the gateway:
        variables only).
    ``carries_any_header_value``
        a request can reach it with any bytes in a header value, the path or the query
        (CR, LF, NUL): an in-process call can hand it what a lenient server might; on the
        wire, CR and LF end the header line.
    ``keeps_raw_target``
        the path goes upstream as the client spelled it. wsgiref gives WSGI a decoded
        ``PATH_INFO`` (and collapses a leading ``//``), from which the middleware encodes
        the path again (``%2F`` becomes ``/``, ``\\`` becomes ``%5C``).
    ``schemes``
        the schemes a client can use to reach it (the gateway serves plain HTTP).
    ``peer``, ``proxy_peer``, ``client(n)``
        the client's address as the front-end sees it by default, another one for a
        trusted proxy in front of it, and many more (on the wire: loopback addresses a
        socket binds).
    ``adds_connection_headers``
        on the wire the server adds its own ``Connection``/``Keep-Alive``/framing headers
        to the response, so the contract checks that the backend's hop-by-hop *values* are
        gone rather than that no such name appears.
    ``replays_a_small_chunked_body``
        a body without a length (chunked) that ends within ``retry_buffer`` is held and
        replayed on a retry. The WSGI middleware decides by the Content-Length alone: a
        body without one is streamed, so never replayed once sent.
    ``replays_a_body_over_the_limit_received_whole``
        the ASGI middleware receives the body message by message until it ends or more
        than ``retry_buffer`` bytes are held: a body that comes whole in one message
        (``more_body`` false) is held even when that message takes it past the limit.
        granian sends the last body message apart (empty), so through the gateway such a
        body is streamed, as the WSGI middleware streams any body over the limit.
    ``refuses_nul_itself``, ``refusal_body``
        the server in front refuses a NUL in a header value with its own 400 (granian's
        has an empty body) before the proxy sees the request.
    ``cut_before_its_body``
        what a client gets instead of the response when the backend dies after its head,
        before the first body byte (the ASGI middleware has passed the head on: it cannot
        retry). In-process and under uvicorn: the 200 with a body that broke off. granian
        holds the head until the first body message and answers its own 500 instead.
    ``keeps_response_name_case``
        a response header's name reaches the client spelled as the backend sent it (the
        WSGI middleware under a real WSGI server); ASGI names are lower-case.
    ``server_adds_date``
        a server in front of the proxy adds its own ``Date`` and ``Server`` to a response
        (the gateway's); in-process there is none.
    ``forwarded_name(name)``
        a client's header name as the backend receives it: as given in-process to the
        ASGI middleware, title-cased from the WSGI environ, lower-cased by a real ASGI
        server (ASGI names are lower-case).
    """

    name = "?"
    wraps_an_app = True
    sees_balancer = True
    takes_keywords = True
    carries_any_header_value = True
    keeps_raw_target = True
    schemes: tuple[str, ...] = ("http", "https")
    peer = "203.0.113.7"
    proxy_peer = "10.0.0.1"
    adds_connection_headers = False
    replays_a_small_chunked_body = True
    replays_a_body_over_the_limit_received_whole = True
    refuses_nul_itself = False
    refusal_body = b""
    cut_before_its_body: tuple[int, bytes] | None = None
    keeps_response_name_case = False
    server_adds_date = False

    def __init__(self) -> None:
        self.proxies: list[Proxy] = []

    def forwarded_name(self, name: str) -> str:
        return name

    def client(self, number: int) -> str:
        """The address of the ``number``-th of many clients (a sticky key's test)."""
        return f"203.0.113.{number * 7 % 250 + 1}"

    def start(self, backends: Iterable[Any] = (), *, app: bool = False,
              balancer: lb.Balancer | None = None, environ: dict[str, str] | None = None,
              **settings: Any) -> Proxy:
        """A proxy in front of ``backends`` (servers or URLs) with keyword ``settings``, or
        sharing ``balancer``, or configured from ``environ`` (``LB_*``); ``app``: wrap the
        local application (answers ``LOCAL``)."""
        proxy = self._make(urls(backends), app, balancer, environ, settings)
        proxy.front_end = self
        self.proxies.append(proxy)
        return proxy

    def _make(self, backends, app, balancer, environ, settings) -> Proxy:
        raise NotImplementedError

    def config_error(self, environ: dict[str, str] | None = None, **settings: Any) -> str:
        """The message of the configuration error that starting with these settings raises
        (an AssertionError if it starts)."""
        raise NotImplementedError

    def stop(self) -> None:
        for proxy in reversed(self.proxies):
            proxy.stop()
        self.proxies.clear()


def _middleware_settings(backends, balancer, environ, settings) -> dict[str, Any]:
    if balancer is not None:
        return {"balancer": balancer, **settings}
    if environ is not None:
        return {"environ": environ, **settings}
    return {"backends": backends, **settings}


class _InProcess(Proxy):
    """A middleware object in this process (ASGI or WSGI)."""

    middleware: Any
    server: contextlib.ExitStack | None = None
    port = 0
    _serving = threading.Lock()

    def stats(self) -> dict[str, dict]:
        return {row["url"]: row for row in self.middleware.balancer.stats()}

    def pool_stats(self) -> dict[str, Any]:
        return self.middleware.balancer.pool_stats()

    def policy(self) -> str:
        return self.middleware.balancer.policy

    def raw(self, data: bytes | list[bytes], peer: str | None = None) -> Response:
        with self._serving:
            if self.server is None:
                stack = contextlib.ExitStack()
                self.port = self._serve(stack)
                self.server = stack
        first = data if isinstance(data, bytes) else data[0]
        return exchange(self.port, data, request_method(first), peer or "127.0.0.1")

    def _serve(self, stack: contextlib.ExitStack) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


# -- ASGI ----------------------------------------------------------------------------------------

class ASGIProxy(_InProcess):
    def __init__(self, middleware: LoadBalancerMiddleware,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.middleware = middleware
        self.loop = loop

    def request(self, method="GET", target="/", *, headers=(), body=b"", peer=None,
                scheme="http", checked=True) -> Response:
        path, _, query = target.partition("?")
        raw_path = path.encode("latin-1")
        decoded = urllib.parse.unquote(path)
        client = (peer or self.front_end.peer, 40000)

        async def run() -> Call:
            call = Call(self.middleware, method, decoded, query=query.encode("latin-1"),
                        headers=list(headers), body=body, client=client, raw_path=raw_path,
                        scheme=scheme, host=HOST)
            try:
                await call.run(timeout=TIMEOUT)
            except Exception:
                call.complete = False
                raise
            return call

        call = asyncio.run_coroutine_threadsafe(run(), self.loop).result(TIMEOUT + 5)
        headers_out = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in call.headers]
        return Response(call.status, headers_out, call.body, call.complete)

    def _serve(self, stack: contextlib.ExitStack) -> int:
        return stack.enter_context(ServerThread(self.middleware)).port

    def stop(self) -> None:
        super().stop()
        upstream = getattr(self.middleware, "upstream", None)
        if upstream is not None:
            async def close() -> None:
                upstream.close()
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)


class ASGIFrontEnd(FrontEnd):
    """``LoadBalancerMiddleware`` called in-process (as an ASGI server calls it), every
    proxy of a test on one event loop in a thread (as one server would run them)."""

    name = "asgi"

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def _make(self, backends, app, balancer, environ, settings) -> Proxy:
        middleware = LoadBalancerMiddleware(local_app_asgi() if app else None,
                                            **_middleware_settings(backends, balancer,
                                                                   environ, settings))
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()
        return ASGIProxy(middleware, self.loop)

    def stop(self) -> None:
        super().stop()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            self.loop = None

    def config_error(self, environ=None, **settings) -> str:
        with_env = {} if environ is None else {"environ": environ}
        try:
            LoadBalancerMiddleware(None, **with_env, **settings)
        except lb.ConfigError as exc:
            return str(exc)
        raise AssertionError("no ConfigError")


# -- WSGI ----------------------------------------------------------------------------------------

def wsgiref_environ(method: str, target: str, headers: Headers, body: Body, peer: str,
                    scheme: str) -> dict[str, Any]:
    """The environ wsgiref's server would build for this request (its handler collapses a
    leading ``//``, decodes the path as latin-1, and says ``text/plain`` when the request
    has no Content-Type). A body given as pieces without a length is one a server decoded
    from chunked framing (gunicorn says so with ``wsgi.input_terminated``)."""
    path, _, query = target.partition("?")
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    data = body if isinstance(body, bytes) else b"".join(body)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"), "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": peer, "REMOTE_HOST": "", "CONTENT_TYPE": "text/plain",
        "wsgi.version": (1, 0), "wsgi.url_scheme": scheme, "wsgi.input": io.BytesIO(data),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    names = set()
    for name, value in [("Host", HOST), *headers]:
        key = name.upper().replace("-", "_")
        if key == "HOST" and "HOST" in names:
            environ["HTTP_HOST"] = value
            continue
        names.add(key)
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        elif "HTTP_" + key in environ:
            environ["HTTP_" + key] += "," + value
        else:
            environ["HTTP_" + key] = value
    if body and "CONTENT_LENGTH" not in names and "TRANSFER_ENCODING" not in names:
        if isinstance(body, bytes):
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    if environ.get("HTTP_TRANSFER_ENCODING") and "CONTENT_LENGTH" not in names:
        environ["wsgi.input_terminated"] = True
    return environ


class WSGIProxy(_InProcess):
    def __init__(self, middleware: WSGILoadBalancer) -> None:
        self.middleware = middleware

    def request(self, method="GET", target="/", *, headers=(), body=b"", peer=None,
                scheme="http", checked=True) -> Response:
        environ = wsgiref_environ(method, target, headers, body, peer or self.front_end.peer,
                                  scheme)
        captured: dict[str, Any] = {}

        def start_response(status, response_headers, exc_info=None):
            captured["status"], captured["headers"] = status, response_headers
            return lambda data: None

        app = validator(self.middleware) if checked else self.middleware
        chunks: list[bytes] = []
        complete = True
        with warnings.catch_warnings():
            warnings.simplefilter("error")            # a validator warning fails the test
            iterable = app(environ, start_response)
            try:
                for chunk in iterable:
                    chunks.append(chunk)
            except AssertionError:
                raise                                  # the validator's: a broken rule
            except Exception:
                complete = False                       # the body broke off
            finally:
                if hasattr(iterable, "close"):
                    iterable.close()
        if "status" not in captured:
            return Response(None, complete=False)
        code, _, reason = captured["status"].partition(" ")
        return Response(int(code), list(captured["headers"]), b"".join(chunks), complete,
                        reason)

    def _serve(self, stack: contextlib.ExitStack) -> int:
        return stack.enter_context(serve_wsgi(self.middleware))


class WSGIFrontEnd(FrontEnd):
    """``WSGILoadBalancer`` called in-process with the environ wsgiref would give it."""

    name = "wsgi"
    keeps_response_name_case = True
    keeps_raw_target = False
    replays_a_small_chunked_body = False
    replays_a_body_over_the_limit_received_whole = False
    peer = "192.0.2.10"

    def forwarded_name(self, name: str) -> str:
        return name.title()

    def _make(self, backends, app, balancer, environ, settings) -> Proxy:
        middleware = WSGILoadBalancer(local_app_wsgi if app else None,
                                      **_middleware_settings(backends, balancer, environ,
                                                             settings))
        return WSGIProxy(middleware)

    def config_error(self, environ=None, **settings) -> str:
        with_env = {} if environ is None else {"environ": environ}
        try:
            WSGILoadBalancer(None, **with_env, **settings)
        except lb.ConfigError as exc:
            return str(exc)
        raise AssertionError("no ConfigError")


# -- the gateway ---------------------------------------------------------------------------------

def lb_environ(settings: dict[str, Any]) -> dict[str, str]:
    """Keyword settings as ``LB_*`` variables."""
    environ = {}
    for name, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple, set, frozenset)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        environ["LB_" + name.upper()] = text
    return environ


class GatewayProxy(Proxy):
    def __init__(self, process: GatewayProcess) -> None:
        self.process = process

    def request(self, method="GET", target="/", *, headers=(), body=b"", peer=None,
                scheme="http", checked=True) -> Response:
        assert scheme in self.front_end.schemes, f"the gateway serves no {scheme}"
        head, pieces = encode_request(method, target, headers, body)
        return exchange(self.process.port, [head, *pieces], method, peer or self.front_end.peer)

    def raw(self, data: bytes | list[bytes], peer: str | None = None) -> Response:
        first = data if isinstance(data, bytes) else data[0]
        return exchange(self.process.port, data, request_method(first),
                        peer or self.front_end.peer)

    def stats(self) -> dict[str, dict]:
        return {row["url"]: row for row in self._status()["backends"]}

    def pool_stats(self) -> dict[str, Any]:
        return {k: v for k, v in self._status().items() if k not in ("backends", "sources")}

    def _status(self) -> dict[str, Any]:
        """The pool as the admin listener's ``/status.json`` shows it."""
        assert self.process.admin_port, "a gateway started from environ= has no admin port"
        connection = http.client.HTTPConnection("127.0.0.1", self.process.admin_port,
                                                timeout=TIMEOUT)
        try:
            connection.request("GET", "/status.json")
            response = connection.getresponse()
            assert response.status == 200
            (pool,) = json.loads(response.read())["pools"]
            return pool
        finally:
            connection.close()

    def policy(self) -> str:
        return re.search(r"policy (\w+)", self.process.banner).group(1)

    def stop(self) -> None:
        self.process.stop()


class GatewayFrontEnd(FrontEnd):
    """``python -m lbmiddleware serve`` in a process under ``server`` (``LB_SERVER``), on
    the wire. The attributes here are what every server of the gateway shares; where the
    servers differ, each subclass says (:class:`FastGatewayFrontEnd`,
    :class:`GranianGatewayFrontEnd`)."""

    name = "gateway"
    server = ""
    wraps_an_app = False
    sees_balancer = False
    takes_keywords = False
    carries_any_header_value = False
    schemes = ("http",)
    peer = "127.0.0.1"
    proxy_peer = "127.0.0.2"
    adds_connection_headers = True
    server_adds_date = True

    def forwarded_name(self, name: str) -> str:
        return name.lower()

    def client(self, number: int) -> str:
        return f"127.0.0.{number + 10}"

    def _make(self, backends, app, balancer, environ, settings) -> Proxy:
        assert not app, "the gateway wraps no application"
        assert balancer is None, "the gateway's balancer is its own"
        if environ is None:     # (with the admin listener: the pool's rows for stats())
            environ = {**lb_environ({"backends": backends, **settings}),
                       "LB_ADMIN_LISTEN": "127.0.0.1:0"}
        return GatewayProxy(GatewayProcess(self._on_server(environ)).start())

    def _on_server(self, environ: dict[str, str]) -> dict[str, str]:
        return {"LB_SERVER": self.server, **environ}

    def config_error(self, environ=None, **settings) -> str:
        assert not settings, "the gateway takes LB_* variables only"
        process = GatewayProcess(self._on_server(environ or {}))
        try:
            process.start()
        except RuntimeError as exc:
            return str(exc)
        process.stop()
        raise AssertionError("the gateway started")


class FastGatewayFrontEnd(GatewayFrontEnd):
    """The gateway under its own server (``LB_SERVER=fast``, the default). Its request
    parser (httptools) refuses a NUL in a header value, and the server answers that with
    the proxy's own 400, as the proxy answers what it refuses itself. A body over
    ``retry_buffer`` is streamed from its head on (its length says so), however it arrives;
    a response whose backend dies after its head is a 200 whose body broke off, as
    in-process."""

    name = "gateway-fast"
    server = "fast"
    replays_a_body_over_the_limit_received_whole = False


class GranianGatewayFrontEnd(GatewayFrontEnd):
    """The gateway on the ASGI path under granian (``LB_SERVER=granian``): granian refuses
    a NUL in a header value with its own empty 400, sends a body's last message apart, and
    answers its own 500 when the backend dies after the head, before the first body byte."""

    name = "gateway-granian"
    server = "granian"
    replays_a_body_over_the_limit_received_whole = False
    refuses_nul_itself = True
    cut_before_its_body = (500, b"Internal server error")
