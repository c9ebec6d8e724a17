"""The reverse-proxy rules shared by every proxy front-end (ASGI, WSGI, the gateway):
routing by prefix, the upstream target, header rules, the client's address, retries and
error responses, and the proxy settings. Standard library only, no I/O."""

from .headers import (BINARY, FRAMING, HOP_BY_HOP, IDEMPOTENT_METHODS, PROXY_HEADER_PREFIXES,
                    PROXY_HEADERS, TEXT, ClientAddress, ErrorResponse, HeaderRules, NotProxied,
                    UnsafeRequest, error_response, join_target, match_prefix, may_retry,
                    normalize_prefix, parse_cookie, quote_path, sticky_key, upstream_url)
from .settings import ProxySettings

__all__ = [
    "UnsafeRequest", "NotProxied", "HeaderRules", "TEXT", "BINARY",
    "HOP_BY_HOP", "FRAMING", "PROXY_HEADERS", "PROXY_HEADER_PREFIXES", "IDEMPOTENT_METHODS",
    "normalize_prefix", "match_prefix", "quote_path", "join_target", "upstream_url",
    "ClientAddress", "sticky_key", "parse_cookie", "may_retry",
    "ErrorResponse", "error_response",
    "ProxySettings",
]
