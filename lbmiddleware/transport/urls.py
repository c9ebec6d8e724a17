"""The URL of one attempt: the backend's URL (its base path included) followed by the
path and query the caller asked for.

httpx parses and validates every URL it builds (about 10 us each, the whole cost of the
transport otherwise), yet both halves here were parsed already: the backend's URL once per
backend, the caller's by the client. :func:`backend_url` joins the two parsed forms
(httpx's ``ParseResult``, a named tuple), and falls back to parsing the joined text where
an httpx version keeps its parsed URL otherwise; tests/transport/test_urls.py checks that
both ways give the same URL.
"""

from __future__ import annotations

import httpx

__all__ = ["backend_url", "joined_url"]


def joined_url(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """``base`` (a backend's URL) with ``request_url``'s path and query after its own path,
    parsed again from text: the public way."""
    return httpx.URL(str(base) + request_url.raw_path.decode("ascii"))


def _fast_join(base: httpx.URL, request_url: httpx.URL) -> httpx.URL:
    """:func:`joined_url` from the parsed forms: both halves are valid already."""
    asked = request_url._uri_reference
    own = base._uri_reference
    url = object.__new__(httpx.URL)
    url._uri_reference = own._replace(path=own.path + (asked.path or "/"), query=asked.query,
                                      fragment=None)
    return url


def _can_join_parsed() -> bool:
    """Whether this httpx keeps a URL as a named tuple of its parts (0.24 and later do)."""
    try:
        probe = _fast_join(httpx.URL("http://a:1/b"), httpx.URL("http://c/d?e=f"))
    except (AttributeError, TypeError):
        return False
    return probe == joined_url(httpx.URL("http://a:1/b"), httpx.URL("http://c/d?e=f"))


#: ``backend_url(base, request_url)``: :func:`joined_url`, from the parsed forms when the
#: installed httpx allows it.
backend_url = _fast_join if _can_join_parsed() else joined_url
