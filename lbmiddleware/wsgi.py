"""WSGI middleware: requests under a path prefix are reverse-proxied to a pool of backends.

::

    flask_app.wsgi_app = WSGILoadBalancer(flask_app.wsgi_app, prefix="/api",
                                          backends=["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
    application = WSGILoadBalancer(None)        # a pure gateway, every setting from LB_*

Each proxied request goes out through :class:`~lbmiddleware.adapter.LoadBalancingAdapter`
(pooled keep-alive connections per backend, pick / report, retries on another backend as
``docs/contract.md``, "Retries", says). The adapter is called directly rather than through a
``requests.Session``: a Session keeps one cookie jar for all clients and reads the body of a
3xx response to prepare the next hop, and a proxy must do neither.

The rules shared with the ASGI middleware (header rules, client IP and sticky key, safe
upstream target, error responses) come from :mod:`lbmiddleware.proxy`:

* the request body streams from ``wsgi.input`` in chunks (``Content-Length`` upstream when
  the client's is known; chunked when the server terminated a chunked body for us); a
  body of at most ``retry_buffer`` bytes is kept in memory so that it can be replayed;
* the response streams back in chunks; the upstream response is closed in the iterable's
  ``close()``, so a client that goes away closes the upstream connection and ends the
  attempt (in-flight counts return to their value before);
* hop-by-hop headers never reach the WSGI server (PEP 3333), nor do the backend's ``Date``
  and ``Server`` (the server's own go out); a ``Location``, ``Content-Location`` or
  ``Refresh`` pointing at the backend that answered is rewritten to the address the client
  used, under the prefix and the ``SCRIPT_NAME`` the middleware is mounted at
  (:mod:`lbmiddleware.proxy.redirects`);
* retries happen only while the response head is awaited: nothing has reached the client;
* 502 / 503 (+ ``Retry-After``) / 504 when no backend answered (504: not in time, the
  response head, or taking the request body, within ``read_timeout`` or the deadline, as
  the ASGI middleware); 400 for a request that cannot be forwarded safely; 404 outside
  the prefix when there is no wrapped app;
* with ``sticky_cookie`` (``LB_STICKY_COOKIE``) the adapter reads the cookie from the
  ``Cookie`` header, forwarded as the client sent it, and adds the ``Set-Cookie`` of the
  backend that answered when it is another (``Path``: the ``SCRIPT_NAME`` the middleware
  is mounted at, then the prefix; ``Secure`` when the client's scheme is https:
  ``wsgi.url_scheme``, or a trusted proxy's ``X-Forwarded-Proto``,
  :func:`~lbmiddleware.proxy.client_scheme`);
* with ``timeout`` (``LB_TIMEOUT``) the adapter's attempts share a deadline up to the
  response head, and the client gets 504 when it runs out;
* with ``access_log`` (``LB_ACCESS_LOG``), one line per request on the
  ``lbmiddleware.access`` logger (:mod:`lbmiddleware.proxy.access`), once its response
  body is closed.
"""

from __future__ import annotations

import http
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from . import fleet
from .core.balancer import Balancer
from .core.forwarding import ForwardingSettings
from .core.settings import FrontEndSettings, Settings, parse_positive_count, resolve
from .errors import ConfigError, NoHealthyBackend, needs_extra
from .proxy import (
    TEXT,
    ClientAddress,
    StickyCookie,
    UnsafeRequest,
    access,
    client_scheme,
    error_response,
    join_target,
    match_prefix,
    quote_path,
    sticky_key,
)
from .proxy.redirects import RedirectRule, forwarded_origin
from .proxy.settings import ProxySettings

with needs_extra(__name__):         # requests and urllib3 come with the `requests` extra
    import requests
    from requests.structures import CaseInsensitiveDict
    from urllib3.util import SKIP_HEADER

    from .adapter import LoadBalancingAdapter
    from .adapter.adapter import _UpstreamRequest
    from .adapter.bodies import PrefetchedResponse
    from .adapter.proxies import DIRECT, CallProxies

if TYPE_CHECKING:
    from _typeshed.wsgi import InputStream, StartResponse, WSGIApplication, WSGIEnvironment

    from .adapter.adapter import CertArg, VerifyArg
    from .core.backend import Backend, Source

__all__ = ["WSGILoadBalancer", "CHUNK_SIZE"]

CHUNK_SIZE = 256 * 1024          # bytes per read of a body, each way
DEFAULT_POOL_MAXSIZE = 32        # kept-alive connections per backend (threaded servers)
UPSTREAM_ORIGIN = "http://lbmiddleware.upstream"    # replaced by the chosen backend's URL

_NOT_ADDED = ("User-Agent", "Accept-Encoding")
_FOLDED = re.compile(r"[\r\n]+[ \t]*")


class _ProxiedRequest(requests.PreparedRequest):
    """A request built by the middleware; carries its sticky key, whether its client's
    scheme is https (``secure``: the sticky cookie's ``Secure``) and the mount point to the
    adapter, and back the backends it was sent to (``tried``, for the access log)."""

    sticky_key: str | None = None
    secure = False
    script_name = ""        # the mount point (SCRIPT_NAME), as it goes in a URL

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[str] = []


class _ProxyAdapter(LoadBalancingAdapter):
    """The adapter, sending the request target exactly as the middleware built it, and
    reading the first chunk of each response inside the attempt (a backend that dies
    between head and body is then retried, since nothing has reached the client)."""

    prefetch = CHUNK_SIZE

    def sticky_secure(self, request: requests.PreparedRequest) -> bool:
        # the client's scheme, not the upstream URL the middleware made (plain http)
        return isinstance(request, _ProxiedRequest) and request.secure

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        # Under a mount point the sticky cookie's Path is the mount point then the prefix
        # (the client's URLs start with SCRIPT_NAME, which the adapter's cookie does not
        # know); made here, once a backend's response gets a cookie (a client's first).
        if isinstance(req, _UpstreamRequest) and req.set_cookie is not None:
            original = req.original
            cookie = self.sticky_cookie
            if isinstance(original, _ProxiedRequest) and original.script_name \
                    and cookie is not None:
                path = original.script_name.replace(";", "%3B") + cookie.path.rstrip("/")
                req.set_cookie = StickyCookie(cookie.name, path).set_cookie(
                    self.balancer.sticky_value(req.backend), secure=original.secure)
        return super().build_response(req, resp)

    def call_proxies(self, request: requests.PreparedRequest,
                     proxies: Mapping[str, str] | None) -> CallProxies:
        # a reverse proxy reaches its backends itself, as nginx and the ASGI middleware do
        return DIRECT

    def redirect_origin(self, request: requests.PreparedRequest) -> str | None:
        # the address the client used (its scheme and Host, or a trusted proxy's
        # X-Forwarded-Proto/Host), as the header rules sent it upstream, and the mount
        # point in front of the prefix (the backend never saw it)
        headers = [(name, value.decode("latin-1") if isinstance(value, bytes) else value)
                   for name, value in request.headers.items()]
        origin = forwarded_origin(headers)
        if origin is None or not isinstance(request, _ProxiedRequest):
            return origin
        return origin + request.script_name

    def request_url(self, request: requests.PreparedRequest,
                    proxies: dict[str, str] | None) -> str:
        # requests turns a leading "//" into "/" for old urllib3 versions; the target is
        # already a safe path here (proxy.join_target), so it goes upstream unchanged.
        return request.path_url

    @staticmethod
    def _upstream_request(request: requests.PreparedRequest, backend: Backend, target: str,
                          headers: Any) -> Any:
        # one call per attempt: the backends tried, in order
        if isinstance(request, _ProxiedRequest):
            request.tried.append(backend.url)
        return LoadBalancingAdapter._upstream_request(request, backend, target, headers)


class WSGILoadBalancer:
    """Proxies requests under ``prefix`` to a pool of backends; others go to ``app``.

    ``backends``, ``prefix`` and the other keyword arguments are settings, each of the class
    that owns it, as for :class:`~lbmiddleware.LoadBalancerMiddleware`: the Balancer's
    (``policy``, ``max_fails``, ...), the forwarding settings (``retries``,
    ``connect_timeout``, ``hash_key``, ``preserve_host``, ...: ``self.forwarding``) and the
    proxy's own (``prefix``, ``strip_prefix``, ``trusted_proxies``, ``retry_buffer``,
    ``access_log``: ``self.settings``). With no ``backends`` (and no ``balancer``) every
    setting comes from ``LB_*`` variables (``environ`` for tests), keyword arguments winning.
    ``settings=`` passes ready settings objects, as for the ASGI middleware. ``balancer=``
    shares an existing pool; then the Balancer's settings are set on it, and the forwarding and
    proxy settings are this middleware's: its keywords, else ``LB_*``, else the defaults. A
    ``prefix`` or ``backends`` of ``None`` is not given. ``chunk_size`` is the most read at
    once from a body, each way; ``verify`` and ``cert`` are passed to requests for ``https``
    backends. :meth:`close` stops the pool it built. """

    def __init__(self, app: WSGIApplication | None = None, prefix: str | None = None,
                 backends: Iterable[str | Backend | Source] | str | None = None, *,
                 settings: Settings | ForwardingSettings | ProxySettings | FrontEndSettings
                 | None = None,
                 balancer: Balancer | None = None, environ: Mapping[str, str] | None = None,
                 verify: VerifyArg = True, cert: CertArg = None,
                 pool_maxsize: int = DEFAULT_POOL_MAXSIZE, chunk_size: int = CHUNK_SIZE,
                 **options: Any) -> None:
        if prefix is not None:
            options["prefix"] = prefix
        if backends is not None:
            options["backends"] = backends
        try:
            chunk_size = parse_positive_count(chunk_size)
        except ValueError as exc:
            raise ConfigError(f"chunk_size has value {chunk_size!r}: {exc}") from None
        resolved = resolve("WSGILoadBalancer", (ForwardingSettings, ProxySettings), options,
                           shared=None if balancer is None else balancer.settings,
                           settings=settings, environ=environ)
        self.app = app
        self.settings = proxy = resolved[ProxySettings]
        self.forwarding = forwarding = resolved[ForwardingSettings]
        self._owns_balancer = balancer is None
        self.balancer = balancer if balancer is not None else fleet.Balancer(
            settings=resolved.core)
        self.adapter = _ProxyAdapter(      # Host is set here, from the settings
            balancer=self.balancer, settings=forwarding.replace(preserve_host=False),
            key_func=_sticky_key_of, pool_maxsize=pool_maxsize)
        self.adapter.prefetch = chunk_size        # the first block is read inside the attempt
        # The sticky cookie (the adapter reads it from the Cookie header forwarded as the
        # client sent it, and adds its Set-Cookie), scoped to the prefix so that two routes'
        # cookies do not meet (a ';' would end the Path: the one character quote_path keeps).
        self.adapter.sticky_path = quote_path(proxy.prefix).replace(";", "%3B")
        # A backend's redirect to itself goes back to the client's address, under the prefix.
        self.adapter.redirects = RedirectRule(proxy.prefix, proxy.strip_prefix)
        self._prefix = proxy.prefix
        self._strip = proxy.strip_prefix
        self._client_address = ClientAddress(proxy.trusted_proxies)
        self._sticky = self.balancer.policy == "ip_hash"
        self._verify = verify
        self._cert = cert
        self._chunk_size = chunk_size
        self._access_log = proxy.access_log

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        path = match_prefix(self._prefix, environ.get("PATH_INFO") or "/", self._strip)
        if path is None and self.app is not None:
            return self.app(environ, start_response)
        if self._access_log:
            return self._logged(environ, start_response, path)
        return self._proxy(environ, start_response, path)

    def _proxy(self, environ: WSGIEnvironment, start_response: StartResponse,
               path: str | None, record: _AccessRecord | None = None) -> Iterable[bytes]:
        """Forward one request (``path``: the part of ``PATH_INFO`` that goes upstream,
        ``None`` outside the prefix: 404); ``record``: its access log line."""
        if path is None:
            return _error(start_response, 404)
        try:
            request = self.upstream_request(environ, path)
            if record is not None and isinstance(request, _ProxiedRequest):
                record.tried = request.tried        # the adapter appends each attempt's
            response = self.adapter.send(request, stream=True, timeout=None,
                                         verify=self._verify, cert=self._cert, proxies={})
        except UnsafeRequest as exc:            # 400, or 501 for a WebSocket handshake
            return _error(start_response, exc.status, str(exc))
        except _ClientGone:
            return _error(start_response, 400, "the request body ended early")
        except NoHealthyBackend:
            return _error(start_response, 503)
        except requests.Timeout:
            return _error(start_response, 504)
        except requests.RequestException:
            return _error(start_response, 502)
        try:
            status = f"{response.status_code} {response.reason or _reason(response.status_code)}"
            start_response(status, _response_headers(response))
        except BaseException:
            response.close()
            raise
        # (a PrefetchedResponse: the adapter's prefetch is chunk_size, never 0)
        return _ResponseBody(cast(PrefetchedResponse, response), record)

    def _logged(self, environ: WSGIEnvironment, start_response: StartResponse,
                path: str | None) -> Iterable[bytes]:
        """:meth:`_proxy` with its access log line (:mod:`lbmiddleware.proxy.access`),
        written once the response body is closed (at once for the proxy's own)."""
        record = _AccessRecord(self._client(environ), environ)

        def watched(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            record.status = int(status[:3])
            return start_response(status, headers, exc_info)

        try:
            body = self._proxy(environ, watched, path, record)
        except BaseException:
            record.log()
            raise
        if not isinstance(body, _ResponseBody):
            record.log()
        return body

    def _client(self, environ: WSGIEnvironment) -> str | None:
        """The client's address: the peer, or from a trusted proxy's X-Forwarded-For."""
        peer = environ.get("REMOTE_ADDR") or None
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        return self._client_address(peer, [forwarded] if forwarded is not None else [])

    def upstream_request(self, environ: WSGIEnvironment, path: str) -> requests.PreparedRequest:
        """The request to send for ``environ`` (``path``: the part of ``PATH_INFO`` that goes
        upstream). Raises :class:`~lbmiddleware.proxy.UnsafeRequest` for one that cannot be
        forwarded safely."""
        raw = _raw_path(environ, self._prefix, self._strip)
        target = join_target("", raw if raw is not None else quote_path(path.encode("latin-1")),
                             environ.get("QUERY_STRING") or None)
        received = _environ_headers(environ)
        peer = environ.get("REMOTE_ADDR") or None
        trusted = self._client_address.is_trusted(peer)
        headers = TEXT.request_headers(received, peer=peer,
                                       scheme=environ.get("wsgi.url_scheme", "http"),
                                       preserve_host=self.forwarding.preserve_host,
                                       trusted_peer=trusted)
        body, length = self._body(environ)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        elif body is None:
            # wsgiref invents "text/plain" for a request without Content-Type; a request
            # without a body has no use for one.
            headers = [(n, v) for n, v in headers if n != "Content-Type"]
        request = _ProxiedRequest()
        request.method = environ.get("REQUEST_METHOD", "GET")
        request.url = UPSTREAM_ORIGIN + target
        request.headers = CaseInsensitiveDict(headers)
        for name in _NOT_ADDED:          # urllib3 would add its own if the client sent none
            request.headers.setdefault(name, SKIP_HEADER)
        request.body = body
        request.secure = client_scheme(
            environ.get("wsgi.url_scheme", "http"),
            [environ["HTTP_X_FORWARDED_PROTO"]]
            if trusted and "HTTP_X_FORWARDED_PROTO" in environ else ()) == "https"
        script_name = environ.get("SCRIPT_NAME")
        if script_name:
            request.script_name = quote_path(script_name.rstrip("/").encode("latin-1"))
        if self._sticky:
            forwarded = ([environ["HTTP_X_FORWARDED_FOR"]] if "HTTP_X_FORWARDED_FOR" in environ
                         else [])
            client_ip = self._client_address(peer, forwarded)
            request.sticky_key = sticky_key(self.forwarding.hash_key, client_ip, received)
        return request

    def _body(self, environ: WSGIEnvironment) -> tuple[bytes | _RequestBody | None, int | None]:
        """The body to send and its length (``None``: unknown, sent chunked)."""
        chunked = "HTTP_TRANSFER_ENCODING" in environ
        if chunked:
            # Only a server that decoded the chunked body for us can be read to the end;
            # from any other, Transfer-Encoding (with or without Content-Length) is refused.
            if not environ.get("wsgi.input_terminated"):
                raise UnsafeRequest("a chunked request body this server cannot delimit")
            return _RequestBody(environ["wsgi.input"], None, self._chunk_size), None
        text = (environ.get("CONTENT_LENGTH") or "").strip()
        if not text:
            return None, None
        if not text.isdigit():
            raise UnsafeRequest(f"Content-Length {text[:40]!r} is not a byte count")
        length = int(text)
        stream: InputStream = environ["wsgi.input"]        # (PEP 3333: always there)
        if length <= self.settings.retry_buffer:
            return _read_exactly(stream, length), length    # replayable on a retry
        return _RequestBody(stream, length, self._chunk_size), length

    def close(self) -> None:
        """Close the upstream connections, and stop the sources and health checks of the
        pool this middleware built (not a shared ``balancer=``). WSGI has no shutdown
        event: call it when the application ends. Idempotent."""
        self.adapter.close()
        if self._owns_balancer:
            self.balancer.close()

    def __repr__(self) -> str:
        return f"<WSGILoadBalancer prefix={self._prefix!r} {self.balancer!r}>"


# -- the pieces of one request ----------------------------------------------------------------

class _ClientGone(Exception):
    """The client's request body ended before its Content-Length (not the backend's fault;
    deliberately not an OSError, so the HTTP client does not count it against the backend)."""


def _read_exactly(stream: InputStream, length: int) -> bytes:
    chunks, remaining = [], length
    while remaining > 0:
        try:
            chunk = stream.read(remaining)
        except OSError:
            raise _ClientGone() from None
        if not chunk:
            raise _ClientGone()
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _RequestBody:
    """``wsgi.input`` as an iterable of chunks; ``length`` bytes, or to the end when ``None``."""

    def __init__(self, stream: InputStream, length: int | None, chunk_size: int) -> None:
        self._stream = stream
        self._length = length
        self._chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        remaining = self._length
        while remaining is None or remaining > 0:
            size = self._chunk_size if remaining is None else min(self._chunk_size, remaining)
            try:
                chunk = self._stream.read(size)
            except OSError:
                raise _ClientGone() from None
            if not chunk:
                if remaining is None:
                    return
                raise _ClientGone()
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


class _ResponseBody:
    """The upstream body as the WSGI response iterable; ``close()`` closes the upstream
    response (its connection too when the body was not read to the end) and writes the
    access log line, if any: the request ends there."""

    def __init__(self, response: PrefetchedResponse, record: _AccessRecord | None) -> None:
        self._response = response
        self._chunks = response.raw_chunks     # blocks of chunk_size (the adapter's prefetch)
        self._record = record

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            record, self._record = self._record, None
            if record is not None:
                record.log()


class _AccessRecord:
    """One request's access log line in the making: the status its ``start_response`` was
    given, and the backends its request went to (the adapter appends each)."""

    def __init__(self, client: str | None, environ: WSGIEnvironment) -> None:
        self.client = client
        self.method: str = environ.get("REQUEST_METHOD", "GET")
        self.path = _logged_path(environ)
        self.status: int | None = None
        self.tried: list[str] = []
        self.started = time.monotonic()

    def log(self) -> None:
        if access.logger.isEnabledFor(logging.INFO):
            access.logger.info(access.access_line(
                self.client, self.method, self.path, self.status,
                self.tried[-1] if self.tried else None, len(self.tried),
                time.monotonic() - self.started))


def _logged_path(environ: WSGIEnvironment) -> str:
    """The path the client asked for, decoded: ``SCRIPT_NAME`` and ``PATH_INFO`` (PEP 3333
    gives their bytes as latin-1 text; a path is UTF-8)."""
    path: str = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
    return path.encode("latin-1", "replace").decode("utf-8", "replace") or "/"


def _raw_path(environ: Mapping[str, Any], prefix: str, strip: bool) -> str | None:
    """The request's path as the client spelled it (``%2F`` and all), from ``RAW_URI``
    (gunicorn) or ``REQUEST_URI`` (uWSGI, mod_wsgi), when it agrees with ``PATH_INFO``;
    ``None`` otherwise (then the decoded ``PATH_INFO`` is encoded again)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw or environ.get("SCRIPT_NAME") or not raw.startswith("/"):
        return None
    raw = raw.partition("?")[0]
    if urllib.parse.unquote(raw, "latin-1") != environ.get("PATH_INFO"):
        return None
    if strip and prefix != "/":
        if not raw.startswith(prefix):
            return None
        raw = raw[len(prefix):] or "/"
    return raw


def _sticky_key_of(request: requests.PreparedRequest) -> str | None:
    return getattr(request, "sticky_key", None)


def _environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The client's request headers from a WSGI environ (``HTTP_*`` and ``CONTENT_TYPE``)."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").title(), value))
        elif key == "CONTENT_TYPE" and value:
            headers.append(("Content-Type", value))
    return headers


def _response_headers(response: requests.Response) -> list[tuple[str, str]]:
    """The upstream's headers for the WSGI server: hop-by-hop ones dropped (PEP 3333),
    repeated ones (``Set-Cookie``) kept, folded lines unfolded."""
    headers = TEXT.response_headers(list(response.raw.headers.items()))
    return [(name, _FOLDED.sub(" ", value)) if ("\r" in value or "\n" in value) else (name, value)
            for name, value in headers]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _error(start_response: StartResponse, status: int,
           detail: str | None = None) -> list[bytes]:
    error = error_response(status, detail)
    start_response(f"{error.status} {error.reason}", list(error.headers))
    return [error.body]
