"""How the client contract drives each client front-end: build one (the requests adapter,
the sync or the async httpx transport) in front of real loopback backends, mount it in its
library's client, send requests, read what comes back.

A :class:`ClientFrontEnd` builds front-ends (``make``, ``from_env``) and clients over them
(``client``), and closes them all after the test. A :class:`Client` sends one request,
read whole (:meth:`Client.request`) or streamed (:meth:`Client.stream`), in the same words
for every library: a body is ``bytes``, a list of chunks (sent as a generator, read once)
or a file; ``timeout`` is ``(connect, read)`` seconds. Both return a :class:`Reply`.

The async transport is driven from the test's thread through an event loop of its own,
running in a thread for as long as the front-end lives, so every contract test is written
once, synchronously. Where the libraries legitimately differ, the difference is a
documented attribute of the :class:`ClientFrontEnd` class, and the contract branches on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter, NoHealthyBackendError
from lbmiddleware.transport import (
    AsyncLoadBalancingTransport,
    LoadBalancingTransport,
)
from lbmiddleware.transport import NoHealthyBackendError as TransportNoHealthyBackendError

from ..support.servers import RawServer, read_request_head

VHOST = "http://svc"
TIMEOUT = 20.0              # seconds for one exchange driven through the async loop

Body = bytes | list[bytes] | io.IOBase | None
_R = TypeVar("_R")


class Reply:
    """What the caller got: ``status``, ``headers``, ``url`` (as the client saw it: the
    virtual host), ``history`` (statuses of the redirects followed), ``body`` (read whole;
    for a stream see :class:`Stream`), ``set_cookies`` (each ``Set-Cookie`` header's
    value, in order)."""

    def __init__(self, status: int, headers: Any, url: str, body: bytes = b"",
                 history: list[int] | None = None, request_url: str = "",
                 set_cookies: list[str] | None = None) -> None:
        self.status, self.headers, self.url, self.body = status, headers, url, body
        self.history = history or []
        self.request_url = request_url
        self.set_cookies = set_cookies or []

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def server(self) -> str:
        """The backend that served it (tests/support/servers.py names itself)."""
        return self.headers["X-Server"]


class Stream(Reply):
    """A response whose body the caller reads: ``read_some`` (the next piece, at most
    ``size`` bytes), ``read_rest`` (to the end: the bytes read), ``close``."""

    def __init__(self, reply: Reply, pieces: Callable[[], bytes | None],
                 closer: Callable[[], None]) -> None:
        super().__init__(reply.status, reply.headers, reply.url, history=reply.history,
                         request_url=reply.request_url, set_cookies=reply.set_cookies)
        self._pieces, self._closer = pieces, closer

    def read_some(self) -> bytes:
        piece = self._pieces()
        return b"" if piece is None else piece

    def read_rest(self) -> int:
        total = 0
        while (piece := self._pieces()) is not None:
            total += len(piece)
        return total

    def read_all(self) -> bytes:
        data = bytearray()
        while (piece := self._pieces()) is not None:
            data += piece
        self.body = bytes(data)
        return self.body

    def close(self) -> None:
        self._closer()


class Client:
    """One library's client with the front-end mounted for ``vhost``."""

    def request(self, method: str, target: str = "/", *, body: Body = None,
                json: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] | None = None) -> Reply:
        raise NotImplementedError

    def stream(self, method: str, target: str = "/", *,
               timeout: tuple[float, float] | None = None) -> Stream:
        raise NotImplementedError

    def location(self, target: str) -> str | None:
        """The ``Location`` of a GET of ``target``, not followed."""
        raise NotImplementedError

    def cookie_domains(self) -> list[str]:
        raise NotImplementedError

    def cookie(self, name: str) -> str | None:
        """The value of the cookie ``name`` in the client's jar (None: not there)."""
        raise NotImplementedError

    def set_cookie(self, name: str, value: str) -> None:
        """Put the cookie ``name`` in the client's jar, as the virtual host had set it."""
        raise NotImplementedError

    def get(self, target: str = "/", **kwargs: Any) -> Reply:
        return self.request("GET", target, **kwargs)

    def close(self) -> None:
        raise NotImplementedError


class ClientErrors:
    """The exception classes a library's caller sees, by what happened."""

    def __init__(self, base: type[Exception], connect: type[Exception],
                 read_timeout: type[Exception], closed: type[Exception],
                 cut: type[Exception], decoding: type[Exception],
                 no_healthy: type[Exception], connect_timeout: type[Exception],
                 upload_timeout: type[Exception]) -> None:
        self.base = base                    # every error of the library's client
        self.connect = connect              # every backend refused
        self.connect_timeout = connect_timeout  # no connection in time
        self.read_timeout = read_timeout    # no response head in time
        self.upload_timeout = upload_timeout    # the backend stopped reading the body
        self.closed = closed                # the connection closed before a response
        self.cut = cut                      # the body ended before its length
        self.decoding = decoding            # a body that does not decode
        self.no_healthy = no_healthy        # the pool had nothing to try


class ClientFrontEnd:
    """Builds one kind of client front-end and the clients over it; :meth:`stop` closes
    them. The attributes say where a library legitimately differs."""

    #: The front-end's class (its keywords, settings and ``from_env`` are the contract's).
    front_end_class: type[Any]
    errors: ClientErrors
    #: The body is read inside the attempt when the caller does not stream: a connection
    #: cut mid-body is retried (the requests adapter; an httpx transport hands the body to
    #: the client, which reads it after the transport returned).
    reads_body_in_attempt = False
    #: A seekable file as the body is rewound and sent again on a retry (requests).
    replays_files = False

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def make(self, backends: list[Any] | None = None, **kwargs: Any) -> Any:
        """The front-end over ``backends`` (URLs or servers) with keyword ``kwargs``."""
        if backends is not None:
            kwargs["backends"] = [b if isinstance(b, (str, lb.Backend)) else b.url
                                  for b in backends]
        return self._keep(self.front_end_class(**kwargs))

    def from_env(self, environ: dict[str, str], **kwargs: Any) -> Any:
        return self._keep(self.front_end_class.from_env(environ, **kwargs))

    def client(self, front: Any, vhost: str = VHOST) -> Client:
        raise NotImplementedError

    def path_of(self, request: Any) -> str:
        """The path (and query) of the request object ``key_func`` is given."""
        raise NotImplementedError

    def _keep(self, front: Any) -> Any:
        return front

    def stop(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()


def _timeout(timeout: tuple[float, float] | None) -> Any:
    return None if timeout is None else httpx.Timeout(5.0, connect=timeout[0],
                                                      read=timeout[1])


def _reply(response: httpx.Response, body: bytes = b"") -> Reply:
    return Reply(response.status_code, response.headers, str(response.url), body,
                 [r.status_code for r in response.history], str(response.request.url),
                 response.headers.get_list("Set-Cookie"))


def _jar_domain(vhost: str) -> str:
    """The domain a cookie jar gives a cookie the virtual host set (a host name without a
    dot gets ``.local``, as http.cookiejar names it)."""
    host = httpx.URL(vhost).host
    return host if "." in host else host + ".local"


def _content(body: Body) -> Any:
    if isinstance(body, list):
        return iter(body)
    return body


# -- the requests adapter ---------------------------------------------------------------------

class _RequestsClient(Client):
    def __init__(self, session: requests.Session, vhost: str) -> None:
        self.session, self.vhost = session, vhost

    def request(self, method: str, target: str = "/", *, body: Body = None, json: Any = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                cookies: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] | None = None) -> Reply:
        response = self.session.request(
            method, self.vhost + target, data=_content(body), json=json, params=params,
            headers=headers, cookies=cookies, auth=auth, timeout=timeout)
        return Reply(response.status_code, response.headers, response.url,
                     response.content, [r.status_code for r in response.history],
                     response.request.url or "", response.raw.headers.getlist("Set-Cookie"))

    def stream(self, method: str, target: str = "/", *,
               timeout: tuple[float, float] | None = None) -> Stream:
        response = self.session.request(method, self.vhost + target, stream=True,
                                        timeout=timeout)
        pieces = response.iter_content(4096)
        reply = Reply(response.status_code, response.headers, response.url,
                      set_cookies=response.raw.headers.getlist("Set-Cookie"))
        return Stream(reply, lambda: next(pieces, None), response.close)

    def location(self, target: str) -> str | None:
        response = self.session.get(self.vhost + target, allow_redirects=False)
        return response.headers.get("Location")

    def cookie_domains(self) -> list[str]:
        return [c.domain for c in self.session.cookies]

    def cookie(self, name: str) -> str | None:
        return self.session.cookies.get(name)

    def set_cookie(self, name: str, value: str) -> None:
        self.session.cookies.set(name, value, domain=_jar_domain(self.vhost), path="/")

    def close(self) -> None:
        self.session.close()


class RequestsFrontEnd(ClientFrontEnd):
    """The requests adapter, mounted in a ``requests.Session``."""

    front_end_class = LoadBalancingAdapter
    errors = ClientErrors(requests.RequestException, requests.ConnectionError,
                          requests.ReadTimeout, requests.ConnectionError,
                          requests.exceptions.ChunkedEncodingError,
                          requests.exceptions.ContentDecodingError, NoHealthyBackendError,
                          requests.ConnectTimeout, requests.ReadTimeout)
    reads_body_in_attempt = True
    replays_files = True

    def client(self, front: Any, vhost: str = VHOST) -> Client:
        session = requests.Session()
        session.mount(vhost + "/", front)
        self._closers.append(session.close)
        return _RequestsClient(session, vhost)

    def path_of(self, request: Any) -> str:
        return str(request.path_url)


_HTTPX_ERRORS = ClientErrors(httpx.HTTPError, httpx.ConnectError, httpx.ReadTimeout,
                             httpx.RemoteProtocolError, httpx.RemoteProtocolError,
                             httpx.DecodingError, TransportNoHealthyBackendError,
                             httpx.ConnectTimeout, httpx.WriteTimeout)


# -- the sync transport -----------------------------------------------------------------------

class _HttpxClient(Client):
    def __init__(self, client: httpx.Client, vhost: str) -> None:
        self.httpx, self.vhost = client, vhost

    def request(self, method: str, target: str = "/", *, body: Body = None, json: Any = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                cookies: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] | None = None) -> Reply:
        if cookies:
            self.httpx.cookies.update(cookies)
        response = self.httpx.request(
            method, self.vhost + target, content=_content(body), json=json, params=params,
            headers=headers, auth=auth, **_timeout_kwarg(timeout))
        return _reply(response, response.content)

    def stream(self, method: str, target: str = "/", *,
               timeout: tuple[float, float] | None = None) -> Stream:
        request = self.httpx.build_request(method, self.vhost + target,
                                           **_timeout_kwarg(timeout))
        response = self.httpx.send(request, stream=True)
        pieces = response.iter_raw(4096)
        return Stream(_reply(response), lambda: next(pieces, None), response.close)

    def location(self, target: str) -> str | None:
        return self.httpx.get(self.vhost + target, follow_redirects=False).headers.get(
            "Location")

    def cookie_domains(self) -> list[str]:
        return [c.domain for c in self.httpx.cookies.jar]

    def cookie(self, name: str) -> str | None:
        return self.httpx.cookies.get(name)

    def set_cookie(self, name: str, value: str) -> None:
        self.httpx.cookies.set(name, value, domain=_jar_domain(self.vhost), path="/")

    def close(self) -> None:
        self.httpx.close()


def _timeout_kwarg(timeout: tuple[float, float] | None) -> dict[str, Any]:
    """httpx's ``timeout=``: given, or left to the client's default (a call without one)."""
    return {} if timeout is None else {"timeout": _timeout(timeout)}


class HttpxFrontEnd(ClientFrontEnd):
    """The sync transport, in an ``httpx.Client`` (following redirects, as requests does)."""

    front_end_class = LoadBalancingTransport
    errors = _HTTPX_ERRORS

    def client(self, front: Any, vhost: str = VHOST) -> Client:
        client = httpx.Client(transport=front, follow_redirects=True)
        self._closers.append(client.close)
        return _HttpxClient(client, vhost)

    def path_of(self, request: Any) -> str:
        return str(request.url.raw_path.decode("ascii"))


# -- the async transport ------------------------------------------------------------------------

class _Loop:
    """An event loop running in a thread of its own; :meth:`run` a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _R], timeout: float = TIMEOUT) -> _R:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class _AsyncHttpxClient(Client):
    def __init__(self, client: httpx.AsyncClient, vhost: str, loop: _Loop) -> None:
        self.httpx, self.vhost, self.loop = client, vhost, loop

    def request(self, method: str, target: str = "/", *, body: Body = None, json: Any = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                cookies: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] | None = None) -> Reply:
        if cookies:
            self.httpx.cookies.update(cookies)

        async def call() -> Reply:
            response = await self.httpx.request(
                method, self.vhost + target, content=_async_content(body), json=json,
                params=params, headers=headers, auth=auth, **_timeout_kwarg(timeout))
            return _reply(response, response.content)

        return self.loop.run(call())

    def stream(self, method: str, target: str = "/", *,
               timeout: tuple[float, float] | None = None) -> Stream:
        async def send() -> httpx.Response:
            request = self.httpx.build_request(method, self.vhost + target,
                                               **_timeout_kwarg(timeout))
            return await self.httpx.send(request, stream=True)

        response = self.loop.run(send())
        pieces = response.aiter_raw(4096)

        async def next_piece() -> bytes | None:
            return await anext(pieces, None)

        return Stream(_reply(response), lambda: self.loop.run(next_piece()),
                      lambda: self.loop.run(response.aclose()))

    def location(self, target: str) -> str | None:
        async def get() -> str | None:
            response = await self.httpx.get(self.vhost + target, follow_redirects=False)
            return response.headers.get("Location")

        return self.loop.run(get())

    def cookie_domains(self) -> list[str]:
        return [c.domain for c in self.httpx.cookies.jar]

    def cookie(self, name: str) -> str | None:
        return self.httpx.cookies.get(name)

    def set_cookie(self, name: str, value: str) -> None:
        self.httpx.cookies.set(name, value, domain=_jar_domain(self.vhost), path="/")

    def close(self) -> None:
        self.loop.run(self.httpx.aclose())


def _async_content(body: Body) -> Any:
    """The body as an AsyncClient takes it: a list of chunks or a file (an AsyncClient
    refuses a sync one) as an async generator."""
    if isinstance(body, io.IOBase):
        file = body

        async def reads() -> Any:
            while chunk := file.read(4096):
                yield chunk

        return reads()
    if not isinstance(body, list):
        return body

    async def chunks() -> Any:
        for chunk in body:
            yield chunk

    return chunks()


class AsyncHttpxFrontEnd(ClientFrontEnd):
    """The async transport, in an ``httpx.AsyncClient`` on a loop in a thread."""

    front_end_class = AsyncLoadBalancingTransport
    errors = _HTTPX_ERRORS

    def __init__(self) -> None:
        super().__init__()
        self.loop = _Loop()
        self._closers.append(self.loop.stop)

    def client(self, front: Any, vhost: str = VHOST) -> Client:
        async def build() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=front, follow_redirects=True)

        client = _AsyncHttpxClient(self.loop.run(build()), vhost, self.loop)
        self._closers.append(client.close)
        return client

    def path_of(self, request: Any) -> str:
        return str(request.url.raw_path.decode("ascii"))


class TricklingHead(RawServer):
    """Reads a request head, then sends a response head that never ends, one byte every
    ``gap`` seconds for ``lasting`` seconds, then closes: each read of it gets a byte well
    within any read timeout, and only a bound on the whole wait ends it sooner.
    ``given_up`` is set when the client closes the connection meanwhile (a write fails)."""

    def __init__(self, gap: float = 0.05, lasting: float = 5.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.gap, self.lasting, self.tls = gap, lasting, tls
        self.scheme = "http" if tls is None else "https"
        self.requests = 0
        self.given_up = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
            self.track(conn)
        reader = conn.makefile("rb")
        if read_request_head(reader) is None:
            return
        self.requests += 1
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: ")
            for _ in range(int(self.lasting / self.gap)):
                if self.stopping.wait(self.gap):
                    return
                conn.sendall(b"p")
        except OSError:
            self.given_up.set()


class UnreadUpload(RawServer):
    """Reads a request head, then neither reads its body nor answers (for ``lasting``
    seconds, or until stopped): the client's upload fills the sockets' buffers and blocks."""

    def __init__(self, lasting: float = 10.0) -> None:
        self.lasting = lasting
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        if read_request_head(reader) is None:
            return
        self.requests += 1
        self.stopping.wait(self.lasting)


#: Far more than loopback's socket buffers hold: an upload of it blocks on a backend that
#: does not read.
UPLOAD = 32 * 1024 * 1024


def generator(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks


def pool_of(front: Any) -> lb.Balancer:
    balancer: lb.Balancer = front.balancer
    return balancer
