"""The request of one attempt, as its backend gets it: the backend's URL (its base path
included) followed by the path and query the caller asked for, and the backend's ``Host``.

httpx parses and validates every URL and header it builds, yet everything here was parsed
already: the backend's URL once per backend, the caller's URL and headers by the client.
Building the attempt's request through httpx's public constructors took about 15 us (a URL
parsed from text, headers copied and searched twice), as much as the rest of the
transport. So the caller's ``Host`` is found once per request with where it is
(:func:`find_host`, and :func:`netloc` to compare it with its URL's), and each attempt's
request is made in one call (:func:`attempt`): the URL joined from the parsed forms
(httpx's ``ParseResult``, a named tuple), the backend's ``Host`` placed in a copy of the
headers' list of ``(name, lower-case name, value)``, the request's attributes set. Each
falls back to the public way where an httpx version keeps them otherwise;
tests/transport/test_outgoing.py checks that both ways give the same result.
"""

from __future__ import annotations

import httpx

__all__ = ["attempt", "attempt_request", "find_host", "host_position", "netloc", "url_netloc",
           "joined_url", "placed_host", "replaced_host", "new_request", "SEVERAL"]


# -- the caller's Host, once per request ----------------------------------------------------------

#: :func:`find_host`'s position when the request has several ``Host`` headers.
SEVERAL = -2


def host_position(headers: httpx.Headers) -> tuple[bytes | None, int]:
    """The request's ``Host`` as it is sent (several joined by ", ", as ``headers.get``
    joins them; None without one) and its position among the headers (-1 without one,
    :data:`SEVERAL`): the public way."""
    positions = [i for i, (name, _) in enumerate(headers.raw) if name.lower() == b"host"]
    if not positions:
        return None, -1
    value = b", ".join(headers.raw[i][1] for i in positions)
    return value, positions[0] if len(positions) == 1 else SEVERAL


def _host_position_parsed(headers: httpx.Headers) -> tuple[bytes | None, int]:
    """:func:`host_position` on the headers' list (a lower-case name each)."""
    items = headers._list
    if items and items[0][1] == b"host":    # where httpx puts it: is it the only one?
        for item in items[1:]:
            if item[1] == b"host":
                break
        else:
            return items[0][2], 0
    found, position = None, -1
    for index, (_, lower, value) in enumerate(items):
        if lower == b"host":
            if found is None:
                found, position = value, index
            else:
                found, position = found + b", " + value, SEVERAL
    return found, position


def url_netloc(url: httpx.URL) -> bytes:
    """What httpx sends as the ``Host`` of ``url``: the public way."""
    return url.netloc


def _netloc_parsed(url: httpx.URL) -> bytes:
    """:func:`url_netloc` from the parsed form, without the property's list and join."""
    parts = url._uri_reference
    host, port = parts.host, parts.port
    if ":" in host:
        host = f"[{host}]"
    return (host if port is None else f"{host}:{port}").encode("ascii")


# -- each attempt's request: the public ways ------------------------------------------------------

def joined_url(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """``base`` (a backend's URL) with ``request_url``'s path and query after its own path,
    parsed again from text."""
    return httpx.URL(str(base) + request_url.raw_path.decode("ascii"))


def replaced_host(headers: httpx.Headers, host: str) -> httpx.Headers:
    """A copy of ``headers`` whose ``Host`` is ``host``."""
    copy = headers.copy()
    copy["Host"] = host
    return copy


def placed_host(headers: httpx.Headers, position: int, host: str) -> httpx.Headers:
    """:func:`replaced_host`, told where the ``Host`` is (:func:`find_host`'s position),
    which the public way does not need to be told."""
    return replaced_host(headers, host)


def new_request(method: str, url: httpx.URL, headers: httpx.Headers,
                stream: httpx.SyncByteStream | httpx.AsyncByteStream,
                extensions: dict[str, object]) -> httpx.Request:
    """A request from its parts (its constructor copies the headers and the extensions,
    and checks the URL again)."""
    request = httpx.Request(method, url, stream=stream, extensions=extensions)
    request.headers = headers
    return request


def attempt_request(caller: httpx.Request, base: httpx.URL, host_at: int | None, host: str,
                    extensions: dict[str, object]) -> httpx.Request:
    """The request of an attempt on the backend of URL ``base`` and ``Host`` ``host``:
    the caller's, its URL after ``base`` (:func:`joined_url`), its headers with ``host``
    placed at ``host_at`` (:func:`placed_host`; None: the caller's kept), ``extensions``."""
    headers = caller.headers if host_at is None else placed_host(caller.headers, host_at, host)
    return new_request(caller.method, joined_url(base, caller.url), headers, caller.stream,
                       extensions)


# -- each attempt's request: from the parsed forms ------------------------------------------------

def _joined_parsed(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """:func:`joined_url` from the parsed forms: both halves are valid already. (The named
    tuple is made with ``tuple.__new__``, a third of ``_replace``'s time.)"""
    asked = request_url._uri_reference
    own = base._uri_reference
    url = object.__new__(httpx.URL)
    url._uri_reference = tuple.__new__(type(own), (
        own.scheme, own.userinfo, own.host, own.port, own.path + (asked.path or "/"),
        asked.query, None))
    return url


def _replaced_host_parsed(headers: httpx.Headers, host: str) -> httpx.Headers:
    """:func:`replaced_host` on the headers' list: the first ``Host`` keeps its place and
    takes the value, any other is dropped; without one it goes last."""
    value = host.encode("ascii")
    items = []
    replaced = False
    for name, lower, old in headers._list:
        if lower != b"host":
            items.append((name, lower, old))
        elif not replaced:
            items.append((b"Host", lower, value))
            replaced = True
    if not replaced:
        items.append((b"Host", b"host", value))
    copy = object.__new__(httpx.Headers)
    copy._list = items
    copy._encoding = headers._encoding
    return copy


def _placed_host_parsed(headers: httpx.Headers, position: int, host: str) -> httpx.Headers:
    """:func:`placed_host` on the headers' list: the one ``Host`` replaced where it is (a
    copy of the list), or added last."""
    if position == SEVERAL:
        return _replaced_host_parsed(headers, host)
    items = headers._list.copy()
    if position < 0:
        items.append((b"Host", b"host", host.encode("ascii")))
    else:
        items[position] = (b"Host", b"host", host.encode("ascii"))
    copy = object.__new__(httpx.Headers)
    copy._list = items
    copy._encoding = headers._encoding
    return copy


#: What a request built with ``stream=`` holds: the attributes :func:`_new_request_set` sets.
_REQUEST_ATTRIBUTES = {"method", "url", "headers", "extensions", "stream"}


def _new_request_set(method: str, url: httpx.URL, headers: httpx.Headers,
                     stream: httpx.SyncByteStream | httpx.AsyncByteStream,
                     extensions: dict[str, object]) -> httpx.Request:
    """:func:`new_request` by setting its public attributes: each is ready (the method is
    the caller's request's, upper-case already; the extensions a dict of this attempt)."""
    request = object.__new__(httpx.Request)
    request.method = method
    request.url = url
    request.headers = headers
    request.extensions = extensions
    request.stream = stream
    return request


def _attempt_request_parsed(caller: httpx.Request, base: httpx.URL, host_at: int | None,
                            host: str, extensions: dict[str, object]) -> httpx.Request:
    """:func:`attempt_request` as :func:`_joined_parsed`, :func:`_placed_host_parsed` and
    :func:`_new_request_set` make it, the first and last inlined (once per attempt: their
    calls were a quarter of its time)."""
    asked = caller.url._uri_reference
    own = base._uri_reference
    url = object.__new__(httpx.URL)
    url._uri_reference = tuple.__new__(type(own), (
        own.scheme, own.userinfo, own.host, own.port, own.path + (asked.path or "/"),
        asked.query, None))
    headers = caller.headers
    if host_at is not None:
        headers = _placed_host_parsed(headers, host_at, host)
    request = object.__new__(httpx.Request)
    request.method = caller.method
    request.url = url
    request.headers = headers
    request.extensions = extensions
    request.stream = caller.stream
    return request


# -- which ways the installed httpx allows --------------------------------------------------------

def _same(fast: object, public: object) -> bool:
    """Whether this httpx keeps its parsed URLs and headers as the fast ways expect (0.24
    and later do): both ways give equal results on a probe."""
    try:
        return bool(fast == public)
    except (AttributeError, TypeError):
        return False


def _probe() -> tuple[bool, bool, bool]:
    base, asked = httpx.URL("http://a:1/b"), httpx.URL("http://c/d?e=f")
    public = new_request("GET", base, httpx.Headers(), httpx.ByteStream(b""), {})
    requests = set(vars(public)) == _REQUEST_ATTRIBUTES
    headers = httpx.Headers({"Accept": "*/*", "host": "c"})
    try:
        urls = _same(_joined_parsed(base, asked), joined_url(base, asked)) and all(
            _same(_netloc_parsed(url), url_netloc(url))
            for url in (base, asked, httpx.URL("http://[::1]:8/")))
    except (AttributeError, TypeError):
        urls = False
    try:
        hosts = _same(_replaced_host_parsed(headers, "a:1").raw,
                      replaced_host(headers, "a:1").raw) \
            and _same(_host_position_parsed(headers), host_position(headers)) \
            and _same(_placed_host_parsed(headers, 1, "a:1").raw,
                      placed_host(headers, 1, "a:1").raw)
    except (AttributeError, TypeError):
        hosts = False
    return urls, hosts, requests


_FAST_URLS, _FAST_HOSTS, _FAST_REQUESTS = _probe()

#: ``find_host(headers)``: :func:`host_position`, read from the headers' list when the
#: installed httpx allows it.
find_host = _host_position_parsed if _FAST_HOSTS else host_position
#: ``netloc(url)``: :func:`url_netloc`, from the parsed form when the installed httpx allows it.
netloc = _netloc_parsed if _FAST_URLS else url_netloc
#: ``attempt(caller, base, host_at, host, extensions)``: :func:`attempt_request`, from the
#: parsed forms when the installed httpx allows each of them.
attempt = _attempt_request_parsed if _FAST_URLS and _FAST_HOSTS and _FAST_REQUESTS \
    else attempt_request
