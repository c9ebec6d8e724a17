"""The request of one attempt, as its backend gets it: the backend's URL (its base path
included) followed by the path and query the caller asked for, and the backend's ``Host``.

httpx parses and validates every URL and header it builds, yet everything here was parsed
already: the backend's URL once per backend, the caller's URL and headers by the client.
Building the attempt's request through httpx's public constructors took about 15 us (a URL
parsed from text, headers copied and searched twice), as much as the rest of the
transport; :func:`backend_url` and :func:`with_host` join the parsed forms instead (httpx's
``ParseResult``, a named tuple, and the headers' list of ``(name, lower-case name,
value)``), each falling back to the public way where an httpx version keeps them
otherwise. tests/transport/test_outgoing.py checks that both ways give the same result.
"""

from __future__ import annotations

import httpx

__all__ = ["backend_url", "joined_url", "with_host", "replaced_host", "request", "new_request"]


# -- the URL --------------------------------------------------------------------------------------

def joined_url(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """``base`` (a backend's URL) with ``request_url``'s path and query after its own path,
    parsed again from text: the public way."""
    return httpx.URL(str(base) + request_url.raw_path.decode("ascii"))


def _joined_parsed(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """:func:`joined_url` from the parsed forms: both halves are valid already."""
    asked = request_url._uri_reference
    own = base._uri_reference
    url = object.__new__(httpx.URL)
    url._uri_reference = own._replace(path=own.path + (asked.path or "/"), query=asked.query,
                                      fragment=None)
    return url


# -- the headers ----------------------------------------------------------------------------------

def replaced_host(headers: httpx.Headers, host: str) -> httpx.Headers:
    """A copy of ``headers`` whose ``Host`` is ``host``: the public way."""
    copy = headers.copy()
    copy["Host"] = host
    return copy


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


# -- the request ----------------------------------------------------------------------------------

def new_request(method: str, url: httpx.URL, headers: httpx.Headers,
                stream: httpx.SyncByteStream | httpx.AsyncByteStream,
                extensions: dict[str, object]) -> httpx.Request:
    """The attempt's request: the public way (its constructor copies the headers and the
    extensions, and checks the URL again)."""
    request = httpx.Request(method, url, stream=stream, extensions=extensions)
    request.headers = headers
    return request


#: What a request built with ``stream=`` holds: the attributes the fast way sets.
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
        urls = _same(_joined_parsed(base, asked), joined_url(base, asked))
    except (AttributeError, TypeError):
        urls = False
    try:
        hosts = _same(_replaced_host_parsed(headers, "a:1").raw,
                      replaced_host(headers, "a:1").raw)
    except (AttributeError, TypeError):
        hosts = False
    return urls, hosts, requests


_FAST_URLS, _FAST_HOSTS, _FAST_REQUESTS = _probe()

#: ``backend_url(base, request_url)``: :func:`joined_url`, from the parsed forms when the
#: installed httpx allows it.
backend_url = _joined_parsed if _FAST_URLS else joined_url
#: ``with_host(headers, host)``: :func:`replaced_host`, on the headers' list when the
#: installed httpx allows it.
with_host = _replaced_host_parsed if _FAST_HOSTS else replaced_host
#: ``request(method, url, headers, stream, extensions)``: :func:`new_request`, its
#: attributes set directly when the installed httpx's requests hold just these.
request = _new_request_set if _FAST_REQUESTS else new_request
