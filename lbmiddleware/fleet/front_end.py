"""What the client front-ends (the requests adapter, the httpx transports) share: their
settings resolved into a pool of their own or a shared one, the retry rule, waiting for a
pool's first answers, the sticky key read from a header or a cookie, and each request's
attempt loop with its sticky cookie and its deadline.

A mixin, so each front-end keeps its library's base class (``HTTPAdapter``,
``httpx.BaseTransport``); one copy of these steps instead of one per front-end.

The sticky cookie (``LB_STICKY_COOKIE``, :mod:`lbmiddleware.proxy.sticky`): the outgoing
request's ``Cookie`` header, where the caller's cookie jar (a ``requests.Session``'s, an
``httpx.Client``'s) put it, names the backend to prefer (:meth:`ClientFrontEnd._attempts`);
the response gets a ``Set-Cookie`` when another backend answered
(:meth:`ClientFrontEnd._sticky_header`), which the jar keeps for the virtual host. Its path
is ``/`` (:attr:`ClientFrontEnd.sticky_path`; the WSGI middleware, which forwards through an
adapter, sets its prefix).

The deadline (``LB_TIMEOUT``): the loop knows it (:class:`~lbmiddleware.core.attempts.Attempts`
decides whether a retry has time), and each attempt's timeouts are cut to the time left
(:func:`deadline_limits`). Those are limits on each wait of the I/O (one connect, one read,
one write), so while an attempt awaits its response head (:class:`AwaitingHead`) the I/O
beneath also cuts every wait to the time left then (:func:`head_deadline`): a backend that
trickles its head a byte at a time, each within the read timeout, is still cut at the
deadline. A timeout that fired where the deadline cut it is the deadline's, in its words
(:func:`deadline_outcome`).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core.attempts import MIN_TIME_LEFT, Attempts, Outcome
from ..core.backend import Backend, Source
from ..core.balancer import Balancer as CoreBalancer
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve
from ..proxy import StickyCookie, parse_cookie
from .pool import Balancer

__all__ = ["ClientFrontEnd", "AwaitingHead", "HeadDeadline", "deadline_limits",
           "deadline_outcome", "deadline_words", "head_deadline"]

#: An attempt's timeouts by name ("connect", "read"; httpx's "write" and "pool" too), in
#: seconds; None is no limit.
Limits = Mapping[str, float | None]


class ClientFrontEnd:
    """The set-up and the per-request steps every client front-end takes the same way."""

    balancer: CoreBalancer
    settings: ForwardingSettings
    #: Reads the request's time and the deadline's (set by each front-end).
    _timer: Callable[[], float]
    #: The sticky cookie (``LB_STICKY_COOKIE``), None when off.
    sticky_cookie: StickyCookie | None = None

    def _set_up(self, name: str, backends: Iterable[str | Backend | Source] | str | None,
                policy: str | None, options: dict[str, Any], *,
                settings: Settings | ForwardingSettings | FrontEndSettings | None,
                balancer: CoreBalancer | None, environ: Mapping[str, str] | None,
                keyed_by_func: bool) -> ForwardingSettings:
        """Resolve the keywords (``name`` is the front-end's, for errors), build a pool
        unless one is given (``balancer``: shared, never closed here), and keep what each
        request reads; returns the forwarding settings."""
        if backends is not None:
            options["backends"] = backends
        if policy is not None:
            options["policy"] = policy
        resolved = resolve(name, (ForwardingSettings,), options,
                           shared=None if balancer is None else balancer.settings,
                           settings=settings, environ=environ)
        self._owns_balancer = balancer is None
        if balancer is None:
            balancer = Balancer(settings=resolved.core)
        self.balancer = balancer
        # A pool built where an event loop runs did not wait for its sources' first
        # answers: the first request does (_wait_ready).
        self._ready = not isinstance(balancer, Balancer)
        self.settings = forwarding = resolved[ForwardingSettings]
        self._retry_rule = forwarding.retry_rule()
        self._keyed = keyed_by_func or (
            balancer.policy == "ip_hash" and forwarding.hash_key != "client_ip")
        self._key_kind, _, self._key_name = forwarding.hash_key.partition(":")
        self._deadline = forwarding.timeout
        if forwarding.sticky_cookie:
            self.sticky_cookie = StickyCookie(forwarding.sticky_cookie)
        return forwarding

    @property
    def sticky_path(self) -> str:
        """The sticky cookie's ``Path``: ``/`` for a client (its cookie jar sends it with
        every request to the virtual host); a proxy forwarding through this front-end (the
        WSGI middleware) sets its prefix, so that two routes' cookies do not meet."""
        return "/" if self.sticky_cookie is None else self.sticky_cookie.path

    @sticky_path.setter
    def sticky_path(self, path: str) -> None:
        if self.sticky_cookie is not None:
            self.sticky_cookie = StickyCookie(self.sticky_cookie.name, path)

    def _attempts(self, method: str, key: str | None, cookie: str | None) -> Attempts:
        """The attempt loop of one request (``cookie``: its ``Cookie`` header, read only
        when the sticky cookie is on): its first pick prefers the backend the sticky
        cookie names, and its deadline is ``LB_TIMEOUT`` from now on the front-end's
        timer."""
        sticky = self.sticky_cookie
        prefer = None if sticky is None else sticky.read(cookie)
        return Attempts(self.balancer, self._retry_rule, method, key, prefer=prefer,
                        timeout=self._deadline, timer=self._timer)

    def _sticky_header(self, attempts: Attempts, backend: Backend, secure: bool) -> str | None:
        """The ``Set-Cookie`` value to add to ``backend``'s response, the answer of
        ``attempts``' request (``secure``: the caller's URL is https): the sticky cookie
        of ``backend`` when the request's did not name it; None when it did, or when
        the sticky cookie is off."""
        sticky = self.sticky_cookie
        if sticky is None:
            return None
        return sticky.renewal(self.balancer.sticky_value(backend), attempts.prefer,
                              secure=secure)

    def _wait_ready(self) -> None:
        """Before the first request: wait for the first answers of the pool's sources (up
        to ``FIRST_ANSWER_TIMEOUT`` after it was built), as its constructor does where no
        event loop runs: a pool built in an async function and used from worker threads.
        Not on a thread running a loop, which it would hold up."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if isinstance(self.balancer, Balancer):
                self.balancer.wait_ready()
            self._ready = True

    def _header_key(self, header: Callable[[str], str | None]) -> str | None:
        """The sticky key from ``hash_key``'s header or cookie, ``header(name)`` reading a
        request header; None for ``client_ip`` (a client front-end has no client address)."""
        if self._key_kind == "header":
            return header(self._key_name)
        if self._key_kind == "cookie":
            cookie = header("Cookie")
            return parse_cookie(cookie).get(self._key_name) if cookie else None
        return None


# -- the deadline's part of one attempt --------------------------------------------------------

def deadline_limits(attempts: Attempts, limits: Limits) -> tuple[dict[str, float | None],
                                                                frozenset[str]]:
    """An attempt's timeouts (``limits``, by name; None: no limit), each cut to the time
    left before the request's deadline (:meth:`Attempts.cut`), and the names of those it
    cut: a timeout among them that fires is the deadline's. Without a deadline, the limits
    as given and none cut."""
    cut: dict[str, float | None] = dict(limits)
    if attempts.deadline is None:
        return cut, frozenset()
    names = []
    for name, limit in limits.items():
        given = math.inf if limit is None else limit
        cut[name], _ = attempts.cut(given, given)
        if cut[name] != given:
            names.append(name)
    return cut, frozenset(names)


def deadline_outcome(attempts: Attempts, outcome: Outcome, fired: str | None,
                     cut: frozenset[str]) -> Outcome:
    """``outcome``, an attempt's failure, in the deadline's words when the timeout that
    fired (``fired``: its name, None for no timeout) is one the deadline cut, at the
    attempt's start (``cut``) or later, as a wait of the head (:class:`HeadDeadline`: then
    the deadline has passed)."""
    if fired is not None and (fired in cut or attempts.expired):
        return outcome._replace(error=attempts.deadline_text())
    return outcome


def deadline_words(attempts: Attempts, outcome: Outcome) -> str | None:
    """The deadline's words when ``outcome`` (the last attempt's) ended by the deadline,
    for the caller's exception; None otherwise."""
    if attempts.deadline is None or not outcome.timeout:
        return None
    words = attempts.deadline_text()
    return words if outcome.error == words else None


class HeadDeadline:
    """The request's deadline as the I/O beneath an attempt sees it while the attempt awaits
    its response head (:func:`head_deadline`): each wait (a connect, a block of the body
    sent, a read of the head) is cut to the time left when it begins (:meth:`limit`).

    The timeouts of the libraries beneath (urllib3's, httpcore's) bound each wait, not a
    sum of them: cut once when the attempt begins, a head trickling in a byte at a time
    would still take as long as the backend likes."""

    __slots__ = ("_attempts",)

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts

    def limit(self, given: float | None) -> float:
        """``given`` seconds (None: no limit) cut to the time left, never below
        :data:`~lbmiddleware.core.attempts.MIN_TIME_LEFT` (a timeout of 0 would be a
        non-blocking socket, not a timeout)."""
        left = max(MIN_TIME_LEFT, self.left())
        return left if given is None or given > left else given

    def left(self) -> float:
        """Seconds left (negative once passed)."""
        return self._attempts.time_left() or 0.0


#: The deadline of the attempt whose response head this thread (or task) awaits, while it
#: does; None otherwise (no deadline, or the head is in).
_HEAD_DEADLINE: contextvars.ContextVar[HeadDeadline | None] = contextvars.ContextVar(
    "lbmiddleware_head_deadline", default=None)


def head_deadline() -> HeadDeadline | None:
    """The deadline that bounds each wait of the I/O now (on this thread, in this task):
    that of an attempt awaiting its response head under ``LB_TIMEOUT``; None otherwise."""
    return _HEAD_DEADLINE.get()


class AwaitingHead:
    """``with AwaitingHead(attempts):`` around the step of an attempt that sends the request
    and reads the response head: while it runs, :func:`head_deadline` gives the request's
    deadline (None without one) to the I/O beneath. The body's reads come after it: the
    deadline bounds the wait for an answer, not its length."""

    __slots__ = ("_deadline", "_token")

    def __init__(self, attempts: Attempts) -> None:
        self._deadline = None if attempts.deadline is None else HeadDeadline(attempts)
        self._token: contextvars.Token[HeadDeadline | None] | None = None

    def __enter__(self) -> None:
        if self._deadline is not None:
            self._token = _HEAD_DEADLINE.set(self._deadline)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _HEAD_DEADLINE.reset(self._token)
            self._token = None
