"""The reverse-proxy rules shared by every proxy front-end (ASGI, WSGI, the gateway).
Standard library only, no I/O; the rules themselves are ``docs/contract.md``, "Proxying".

One job per module: :mod:`.routing` (which paths are proxied), :mod:`.target` (the
request target sent upstream), :mod:`.headers` (header rules both ways), :mod:`.client`
(the client's address, scheme and sticky key), :mod:`.refusals` (requests refused, with their
status), :mod:`.responses` (the proxy's own error responses), :mod:`.settings` (the
proxy's settings), :mod:`.sticky` (the sticky cookie, read and set by every front-end),
:mod:`.redirects` (a backend's redirects to itself rewritten to the client's address).
Whether an attempt goes again is the core's retry rule
(:class:`lbmiddleware.core.attempts.RetryRule`), shared with the requests adapter.
"""

from .client import ClientAddress, client_scheme, parse_cookie, sticky_key
from .headers import (
    BINARY,
    FRAMING,
    HOP_BY_HOP,
    PROXY_HEADER_PREFIXES,
    PROXY_HEADERS,
    TEXT,
    HeaderRules,
)
from .refusals import NotProxied, UnsafeRequest
from .responses import ErrorResponse, error_response
from .routing import match_prefix, normalize_prefix
from .settings import ProxySettings
from .sticky import StickyCookie
from .target import join_target, quote_path, upstream_url

__all__ = [
    "UnsafeRequest", "NotProxied", "HeaderRules", "TEXT", "BINARY",
    "HOP_BY_HOP", "FRAMING", "PROXY_HEADERS", "PROXY_HEADER_PREFIXES",
    "normalize_prefix", "match_prefix", "quote_path", "join_target", "upstream_url",
    "ClientAddress", "client_scheme", "sticky_key", "parse_cookie",
    "ErrorResponse", "error_response",
    "ProxySettings", "StickyCookie",
]
