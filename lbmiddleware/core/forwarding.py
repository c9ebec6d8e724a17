"""Forwarding settings: how a front-end sends one request to the pool.

Every front-end that forwards requests reads them: the requests adapter, the ASGI and WSGI
middlewares, the gateway (and any later transport). They live in the core, not beside one
front-end, because they are the same for all of them and the core's attempt loop reads
them (how many retries, which statuses fail an attempt, whether a sent POST is retried);
the :class:`~lbmiddleware.core.settings.Settings` of the Balancer do not include them,
since the Balancer never reads them, and so front-ends sharing one Balancer may each
forward differently::

    pool = lb.Balancer(urls, max_fails=3)
    app.add_middleware(lb.LoadBalancerMiddleware, balancer=pool, retries=0)
    session.mount("http://svc/", lb.LoadBalancingAdapter(balancer=pool, retries=2))

Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from .attempts import RetryRule
from .casts import format_duration
from .settings import (
    BaseSettings,
    CountLike,
    DurationLike,
    FlagLike,
    parse_count,
    parse_duration,
    parse_flag,
    parse_positive_duration,
    setting,
)

__all__ = ["ForwardingSettings", "parse_statuses", "parse_hash_key", "parse_cookie_name",
           "parse_deadline",
           "StatusesLike"]

# A cookie's name is an RFC 6265 token: visible ASCII except separators.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: HTTP statuses: numbers (``[502, 503]``), one number (``503``), or one comma-separated
#: string (``"502, 503"``).
StatusesLike: TypeAlias = Iterable[int | str] | int | str


def parse_statuses(value: Any) -> frozenset[int]:
    """HTTP statuses from ``"502, 503"``, an iterable of numbers, or one number."""
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError("not a status, a list of statuses or a comma-separated string")
    statuses = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or not 100 <= int(text) <= 599:
            raise ValueError(f"{text!r} is not an HTTP status (100-599)")
        statuses.add(int(text))
    return frozenset(statuses)


def parse_hash_key(value: Any) -> str:
    """``client_ip``, ``header:NAME`` or ``cookie:NAME``."""
    text = str(value).strip()
    kind, sep, name = text.partition(":")
    if text == "client_ip" or (sep and kind in ("header", "cookie") and name.strip()):
        return text if text == "client_ip" else f"{kind}:{name.strip()}"
    raise ValueError("expected client_ip, header:NAME or cookie:NAME")


def parse_deadline(value: Any) -> float:
    """The deadline of a whole request: one duration (``1.5``, ``"2s"``; 0: none). A pair or
    an ``httpx.Timeout`` is the per-attempt kind of timeout, refused with where that goes."""
    if isinstance(value, (tuple, list)) or type(value).__name__ == "Timeout":
        raise ValueError("the deadline of a whole request across its attempts is one duration "
                         "('2s'); per-attempt timeouts are connect_timeout and read_timeout, "
                         "or the timeout= of each call")
    return parse_duration(value)


def parse_cookie_name(value: Any) -> str:
    """A cookie name (an RFC 6265 token: ``lb``, ``SERVERID``), or empty (off)."""
    if not isinstance(value, str):
        raise ValueError("not a cookie name (a string such as 'lb_backend')")
    name = value.strip()
    if name and not _COOKIE_NAME.fullmatch(name):
        bad = next(c for c in name if not _COOKIE_NAME.fullmatch(c))
        raise ValueError(f"not a cookie name: {bad!r} is not allowed in one (letters, digits "
                         f"and !#$%&'*+-.^_`|~ are)")
    return name


@dataclasses.dataclass(frozen=True)
class ForwardingSettings(BaseSettings):
    """How each request is forwarded: retries, timeouts, the statuses that fail an
    attempt, the sticky key and the ``Host`` sent. ``lb.AdapterSettings`` is this class."""

    fail_statuses: frozenset[int] = dataclasses.field(
        default=frozenset({502, 503, 504}),
        metadata=setting("LB_FAIL_STATUSES", parse_statuses,
                         "response statuses counted as failures"))
    retries: int = dataclasses.field(
        default=2,
        metadata=setting("LB_RETRIES", parse_count,
                         "retries on other backends per request"))
    connect_timeout: float = dataclasses.field(
        default=5.0,
        metadata=setting("LB_CONNECT_TIMEOUT", parse_positive_duration,
                         "seconds to open a connection to a backend"))
    read_timeout: float = dataclasses.field(
        default=60.0,
        metadata=setting("LB_READ_TIMEOUT", parse_positive_duration,
                         "seconds to wait for the response head (and between body reads)"))
    hash_key: str = dataclasses.field(
        default="client_ip",
        metadata=setting("LB_HASH_KEY", parse_hash_key,
                         "sticky key for ip_hash: client_ip | header:NAME | cookie:NAME"))
    preserve_host: bool = dataclasses.field(
        default=False,
        metadata=setting("LB_PRESERVE_HOST", parse_flag,
                         "send the client's Host upstream (default: the backend's)"))
    retry_non_idempotent: bool = dataclasses.field(
        default=False,
        metadata=setting("LB_RETRY_NON_IDEMPOTENT", parse_flag,
                         "also retry a request whose method is not idempotent "
                         "(POST, PATCH, ...) after it was sent"))
    timeout: float = dataclasses.field(
        default=0.0,
        metadata=setting("LB_TIMEOUT", parse_deadline,
                         "the longest a request waits for its response head across all its "
                         "attempts; a retry is not started without time for it (0: off)",
                         show=format_duration))
    sticky_cookie: str = dataclasses.field(
        default="",
        metadata=setting("LB_STICKY_COOKIE", parse_cookie_name,
                         "cookie that pins a client to the backend that first answered it, "
                         "for any policy (empty: off)"))

    readers: ClassVar[str] = (
        "every front-end that forwards requests (LoadBalancingAdapter, LoadBalancingTransport, "
        "AsyncLoadBalancingTransport, LoadBalancerMiddleware, WSGILoadBalancer, the gateway): "
        "give it there")

    def retry_rule(self) -> RetryRule:
        """The attempt loop's rule these settings describe (a front-end builds it once)."""
        return RetryRule(retries=self.retries, fail_statuses=self.fail_statuses,
                         retry_non_idempotent=self.retry_non_idempotent)

    if TYPE_CHECKING:
        # The constructor as type checkers see it: each field as its cast takes it (see
        # Settings in core/settings.py).
        def __init__(self, fail_statuses: StatusesLike = ..., retries: CountLike = ...,
                     connect_timeout: DurationLike = ..., read_timeout: DurationLike = ...,
                     hash_key: str = ..., preserve_host: FlagLike = ...,
                     retry_non_idempotent: FlagLike = ..., timeout: DurationLike = ...,
                     sticky_cookie: str = ...) -> None: ...
