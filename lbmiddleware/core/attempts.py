"""The attempt loop: one request tried on one backend after another, sans I/O.

Every front-end (the requests adapter, the ASGI middleware, the simulator of the quality
benchmark) runs the same loop with its own I/O; only the I/O and the translation of its
library's errors into an :class:`Outcome` are its own::

    attempts = Attempts(balancer, rule, "GET", key=client_ip)
    backend = attempts.start()                  # NoHealthyBackend: answer NO_BACKEND_STATUS
    with attempts:                              # an exception releases the open attempt
        while True:
            response, outcome = forward(backend)        # the front-end's I/O; a failure
            if outcome.ok:                              # without a response: failed()
                break
            following = attempts.retry(outcome)         # reports, picks another
            if following is None:
                break                                   # the client gets what there is
            discard(response)
            backend = following
        if response is None:                    # (that failure is reported already)
            raise_or_answer(Attempts.answer_status(outcome))        # 502, or 504
        received = deliver(response)            # broke off: broke_off(); client gone:
        attempts.delivered(outcome, received)   # client_left(); after the body: it was in
                                                # flight till then

Four pieces:

* :class:`RetryRule`, an immutable value (urllib3's ``Retry``): how many retries, which
  methods may be sent twice, which statuses fail an attempt. Its one question is
  :meth:`RetryRule.allows`. The rules are docs/contract.md, "Retries": a connect failure (the
  request was never sent) is retried for any method; after the request was sent, only an
  idempotent method (RFC 9110 9.2.2) whose body can be sent again, or any method with
  ``retry_non_idempotent`` (nginx ``proxy_next_upstream non_idempotent``); at most
  ``retries`` retries, each on a backend not tried yet for this request (Envoy
  ``previous_hosts``), so never more than the pool has other backends.
* :class:`Outcome`, a frozen record of how one attempt ended (gRPC's ``DoneInfo``): it can
  grow (bytes for the bandwidth policy) without changing the callers.
* :class:`Completion`, tower's completion handle: :meth:`Balancer.begin
  <lbmiddleware.core.balancer.Balancer.begin>` picks a backend and returns one; it ends
  exactly once, with :meth:`~Completion.done` (an outcome) or :meth:`~Completion.release`
  (none: the caller gave up or was cancelled). A second end is ignored, and a handle
  dropped without an end is released by its finalizer, so an in-flight count cannot leak.
  An end that a garbage collection may run (a finalizer, a coroutine or generator closed
  with ``GeneratorExit``) takes the balancer's lock-free path: it never waits for the lock
  (the collection may run inside it, on this very thread) and runs no event listener.
* :class:`Attempts`, the loop: the first pick, then after each failure the question "is
  there another attempt?", answered by the rule and by whether a backend is left.

The order is fixed here, once. A failure without a response (refused, reset, timed out) is
reported at once, before the next pick, so the pick already knows of it. A failure *with*
a response (a status in ``fail_statuses``) is the answer the client gets if no other
attempt follows: it is reported when the next backend is picked, or else stays open
until the front-end has delivered it (:meth:`Attempts.end`), as every successful
attempt does (a streamed body keeps its backend in flight until it ends).

Standard library only, no I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

from ..errors import ConfigError, NoHealthyBackend
from .casts import format_duration

if TYPE_CHECKING:
    from types import TracebackType

    from .backend import Backend

__all__ = ["RetryRule", "Outcome", "Completion", "Attempts", "IDEMPOTENT_METHODS",
           "DEFAULT_FAIL_STATUSES", "ANSWER_BEGUN", "failure_reason", "broken_body", "Picker",
           "Reporter", "Failure", "NO_BACKEND_STATUS"]

#: One INFO line per failed attempt: off by default in a library (the package's logger has
#: only a NullHandler and Python's default level is WARNING); the gateway turns INFO on.
logger = logging.getLogger("lbmiddleware.attempts")

#: Methods that may be sent again after the request reached a backend (RFC 9110 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: Response statuses that fail an attempt by default (Envoy ``gateway-error``).
DEFAULT_FAIL_STATUSES = frozenset({502, 503, 504})

#: Why a failure after the response began (a body that broke off) is never retried.
ANSWER_BEGUN = "its response had begun to reach the client"

#: The proxy's own answer when the pool has no backend to try (:meth:`Attempts.start` raised
#: :class:`~lbmiddleware.errors.NoHealthyBackend`); see :meth:`Attempts.answer_status` for
#: the answer when the attempts failed.
NO_BACKEND_STATUS = 503


# -- the outcome of one attempt -----------------------------------------------------------

class Outcome(NamedTuple):
    """How one attempt ended (a named tuple: immutable, and made in a fraction of a frozen
    dataclass's time, once per attempt).

    ``ok``: a success for the backend's health (a response whose status is not in
    ``fail_statuses``). ``latency``: seconds from sending to the response head, or
    ``None`` when unknown. ``sent``: the request may have reached the backend (``False``
    only for a connect failure, which any method may retry). ``timeout``: a connect or
    read timeout ended it. ``status``: the response's status, or ``None`` without a
    response. ``bytes_sent`` / ``bytes_received``: request and response body bytes on
    the wire, ``0`` when the front-end does not know them. ``error``: the front-end's words
    for a failure without a response ("connection refused", "read timed out after 2s"),
    for the log line of a failed attempt; ``None`` otherwise.
    """

    ok: bool
    latency: float | None = None
    sent: bool = True
    timeout: bool = False
    status: int | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    error: str | None = None


# ``_new_outcome(Outcome, fields)`` builds an Outcome from all eight fields in order, without
# the generated ``__new__``'s frame and argument binding (the hot path: one success per
# proxied request).
_new_outcome = tuple.__new__

# A context manager's block raised an Exception: a failure, with no latency (no answer).
_FAILED = Outcome(ok=False)


# -- the retry rule -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RetryRule:
    """When a failed attempt is tried again on another backend; an immutable value, safe to
    share between threads and front-ends (each front-end builds its own once).

    ``retries``: attempts after the first, at most [2]. ``fail_statuses``: response
    statuses that fail an attempt [502, 503, 504]. ``retry_non_idempotent``: also send a
    POST or PATCH again after it reached a backend [no]. ``idempotent_methods`` is a class
    default (subclass to change it).
    """

    retries: int = 2
    fail_statuses: frozenset[int] = DEFAULT_FAIL_STATUSES
    retry_non_idempotent: bool = False

    idempotent_methods: ClassVar[frozenset[str]] = IDEMPOTENT_METHODS

    def __post_init__(self) -> None:
        if type(self.retries) is not int or self.retries < 0:     # (a bool is no count)
            raise ConfigError(f"retries has value {self.retries!r}: not a count (0 or more)")
        object.__setattr__(self, "fail_statuses", frozenset(self.fail_statuses))

    def allows(self, method: str, outcome: Outcome, *, attempts: int = 0,
               replayable: bool = True) -> bool:
        """May a request that has made ``attempts`` attempts, the last ending in
        ``outcome``, be tried again? ``replayable``: its body can be sent again.

        ``attempts=0`` asks about the method and body alone (an upstream client resending
        a request on a fresh connection to the same backend asks this).
        """
        return (not outcome.ok and self._has_retries_left(attempts)
                and (not outcome.sent or self._may_resend(method, replayable)))

    def outcome(self, status: int, latency: float | None = None, bytes_sent: int = 0,
                bytes_received: int = 0) -> Outcome:
        """The outcome of an attempt answered with ``status``: a failure when the status
        is in ``fail_statuses``. (The byte counts are not keyword-only: a keyword-only
        default costs a dict lookup per call, and this is one per response.)"""
        # (ok, latency, sent, timeout, status, bytes_sent, bytes_received, error)
        return _new_outcome(Outcome, (status not in self.fail_statuses, latency, True, False,
                                      status, bytes_sent, bytes_received, None))

    def why_not(self, method: str, outcome: Outcome, *, attempts: int = 0,
                replayable: bool = True) -> str | None:
        """Why :meth:`allows` says no, in words for a log line ("no retries left (2 used)",
        "POST is not idempotent", "the body cannot be sent again"); None when it says yes
        or the attempt succeeded (nothing to retry)."""
        if outcome.ok:
            return None
        if not self._has_retries_left(attempts):
            return f"no retries left ({attempts - 1} used)"
        if not outcome.sent:
            return None
        if not (self.retry_non_idempotent or method.upper() in self.idempotent_methods):
            return f"{method.upper()} is not idempotent"
        if not replayable:
            return "the body cannot be sent again"
        return None

    def _has_retries_left(self, attempts: int) -> bool:
        return attempts <= self.retries

    def _may_resend(self, method: str, replayable: bool) -> bool:
        """After sending: only a replayable body, and an idempotent method unless opted in."""
        return replayable and (self.retry_non_idempotent
                               or method.upper() in self.idempotent_methods)

    def __repr__(self) -> str:
        statuses = ", ".join(str(s) for s in sorted(self.fail_statuses))
        extra = ", retry_non_idempotent=True" if self.retry_non_idempotent else ""
        return f"RetryRule(retries={self.retries}, fail_statuses={{{statuses}}}{extra})"


def failure_reason(outcome: Outcome) -> str:
    """How a failed attempt failed, for its log line: the front-end's words (``error``),
    else what the outcome says ("status 503", "timed out", "connect failed", "failed after
    sending")."""
    if outcome.error:
        return outcome.error
    if outcome.status is not None:
        return f"status {outcome.status}"
    if outcome.timeout:
        return "timed out"
    return "failed after sending" if outcome.sent else "connect failed"


def broken_body(answered: Outcome, received: int, error: str, *,
                timeout: bool = False) -> Outcome:
    """The outcome of an attempt whose response body broke off (``error``: the front-end's
    words for why; ``timeout``: it stopped coming) after ``received`` of its bytes:
    ``answered`` was its outcome when the head came. A failure of the backend, with the time
    to its head, its status and the bytes, in one wording for every front-end's log line."""
    return Outcome(ok=False, latency=answered.latency, timeout=timeout, status=answered.status,
                   bytes_sent=answered.bytes_sent, bytes_received=received,
                   error=f"the response body broke off after {received} bytes ({error})")


class Failure(Protocol):
    """What the attempt loop reads of an attempt that failed without a response: the upstream
    client's error (:class:`lbmiddleware.upstream.errors.UpstreamError` has these), or any
    front-end's record of one."""

    @property
    def sent(self) -> bool:
        """The request may have reached the backend (False: a connect failure)."""

    @property
    def timeout(self) -> bool:
        """A connect or read timeout ended it."""

    @property
    def deadline(self) -> bool:
        """That timeout was the request's deadline (LB_TIMEOUT), cut from a longer one."""

    @property
    def bytes_sent(self) -> int:
        """Request body bytes written before it failed."""


# -- the completion handle ----------------------------------------------------------------

class Reporter(Protocol):
    """What a :class:`Completion` needs of its balancer (a Balancer, its Lane, or a test's
    fake). ``now``: the caller's reading of the balancer's timer (None reads it);
    :meth:`Completion.done` passes it only when given one, so a reporter without it works
    for callers that never pass one."""

    def report(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
               bytes_sent: int = 0, bytes_received: int = 0, status: int | None = None,
               now: float | None = None) -> None: ...

    def report_later(self, backend: Backend, ok: bool = True, latency: float | None = None, *,
                     bytes_sent: int = 0, bytes_received: int = 0,
                     status: int | None = None) -> None: ...

    def release(self, backend: Backend) -> None: ...

    def release_later(self, backend: Backend) -> None: ...


class Picker(Protocol):
    """What :class:`Attempts` needs of its balancer: picks that return completion handles,
    the retry budget, and how long a backend usually takes to answer. ``now``: the caller's
    reading of the balancer's timer (None reads it); :class:`Attempts` passes it only when
    it was given one, so a picker without it works for front-ends that never pass one."""

    def begin(self, key: str | None = None, exclude: Collection[Backend] = (),
              prefer: str | None = None, now: float | None = None) -> Completion: ...

    def spend_retry(self, tried: Collection[Backend] = ()) -> bool: ...

    def refund_retry(self, picked: bool = False) -> None: ...

    def usual_latency(self, backend: Backend) -> float | None: ...


#: Less time left than this is none: an attempt's timeouts are never cut below it.
MIN_TIME_LEFT = 0.001


class Completion:
    """One pick of ``backend``, in flight until it ends, exactly once.

    :meth:`done` ends it with an outcome (health and latency learn from it), :meth:`release`
    without one (the caller gave up, or was cancelled). A second end is ignored. A handle
    dropped without an end is released by a finalizer, through the balancer's lock-free
    path (a garbage collection may run it while this thread holds the balancer's lock).

    Also a context manager, with the rules of :meth:`Balancer.attempt
    <lbmiddleware.core.balancer.Balancer.attempt>` (docs/contract.md, "Failures"): an
    ``Exception`` in the block is a failure (no latency), any other ``BaseException``
    a release; a block that ends without an outcome releases it at once (call :meth:`done`
    in the block to report one). ``GeneratorExit`` (a coroutine closed, perhaps by a
    garbage collection) releases it on the lock-free path.
    """

    # The finalizer is ``__del__`` rather than a ``weakref.finalize``: the same last resort
    # (PEP 442 runs it for a handle in a reference cycle too) without a global registry
    # entry per pick, which cost three times this whole class on the adapter's path.
    # ``_open`` holds one token: ``list.pop`` is atomic, so of two threads ending the same
    # handle exactly one gets it.

    __slots__ = ("backend", "_balancer", "_open")

    def __init__(self, balancer: Reporter, backend: Backend) -> None:
        self.backend = backend
        self._balancer = balancer
        self._open = [True]

    @property
    def ended(self) -> bool:
        return not self._open

    def _end(self) -> bool:
        """Take the handle's one token: True for the first caller only."""
        try:
            return self._open.pop()
        except IndexError:
            return False

    def done(self, outcome: Outcome, *, wait: bool = True, now: float | None = None) -> None:
        """End with ``outcome``. ``wait=False``: the lock-free path, for finalizers and
        callbacks that a garbage collection may run (perhaps inside the balancer's lock, on
        this thread): it never waits for the lock and runs no event listener. The report is
        applied at once if the lock is free, else by the balancer's next call; the events it
        causes go out with the next call that delivers (docs/contract.md, "Passive health").

        ``now``: the balancer's timer read by the caller at the end (the reading its latency
        came from), passed on to the balancer's ``report`` (:class:`Reporter`); None: the
        balancer reads its timer. Not with ``wait=False``
        (applied later, at the time it is applied)."""
        if wait:
            self._report(outcome.ok, outcome.latency, outcome.bytes_sent,
                         outcome.bytes_received, outcome.status, now)
            return
        # (_end, inlined: once per attempt)
        try:
            self._open.pop()
        except IndexError:
            return                  # already ended
        self._balancer.report_later(self.backend, outcome.ok, outcome.latency,
                                    bytes_sent=outcome.bytes_sent,
                                    bytes_received=outcome.bytes_received,
                                    status=outcome.status)

    def _report(self, ok: bool, latency: float | None, bytes_sent: int, bytes_received: int,
                status: int | None, now: float | None) -> None:
        """:meth:`done` of an outcome with these fields (waiting for the lock): the attempt
        loop ends its answered attempt here without building that outcome, once per request.
        """
        # (_end, inlined: once per attempt)
        try:
            self._open.pop()
        except IndexError:
            return                  # already ended
        if now is None:
            self._balancer.report(self.backend, ok, latency, bytes_sent=bytes_sent,
                                  bytes_received=bytes_received, status=status)
        else:
            self._balancer.report(self.backend, ok, latency, bytes_sent=bytes_sent,
                                  bytes_received=bytes_received, status=status, now=now)

    def release(self, *, wait: bool = True) -> None:
        """End without an outcome: the pick no longer counts in flight. ``wait=False``: the
        lock-free path, as for :meth:`done` (no event listener runs from this call)."""
        if self._end():
            if wait:
                self._balancer.release(self.backend)
            else:
                self._balancer.release_later(self.backend)

    def __del__(self) -> None:
        # Dropped without an end (a front-end's bug, a task destroyed mid-flight): release,
        # without waiting for the lock (a garbage collection may run this inside it).
        if self._open:
            self._open.clear()
            self._balancer.release_later(self.backend)

    def __enter__(self) -> Completion:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self._open:
            return                  # ended in the block
        if kind is None:
            self.release()          # no outcome given
        elif issubclass(kind, GeneratorExit):
            self.release(wait=False)
        elif issubclass(kind, Exception):
            self.done(_FAILED)
        else:
            self.release()          # a cancellation, an interrupt

    def __repr__(self) -> str:
        return f"<Completion {self.backend.url} {'ended' if self.ended else 'in flight'}>"


# -- the loop -----------------------------------------------------------------------------

class Attempts:
    """One request's attempts: a backend per attempt, each attempt reported exactly once.

    ``balancer`` picks (:meth:`Balancer.begin <lbmiddleware.core.balancer.Balancer.begin>`),
    ``rule`` decides, ``method`` and ``key`` (the sticky key) describe the request;
    ``prefer`` is its sticky cookie's value (the first pick's only). ``timeout`` (seconds;
    0: none) is the request's deadline across all its attempts, from now on ``timer``: the
    front-end cuts each attempt's timeouts to the time left (:meth:`cut`), and a retry is
    not started without time for it. Each retry spends from the balancer's retry budget. Drive
    it from sync or async code: :meth:`start`, then :meth:`retry` after each failed
    attempt, then :meth:`end` (or :meth:`release`) for the attempt whose answer the client
    got (:meth:`end_failed` when that answer fails on its way). As a context manager, an
    exception releases the attempt still open (the front-end has turned every failure of
    the backend into an outcome already: what escapes is a cancellation, a client gone, an
    error of its own; ``GeneratorExit`` on the lock-free path), and a clean exit leaves it
    to its owner (a streamed body ends it later).

    ``now``: ``timer``'s reading when the request began, taken by the front-end (the time
    its head arrived, say): the deadline runs from it and the first pick is made at it,
    so that one reading serves the request (the balancer's ``begin`` takes it:
    :class:`Picker`), on the same clock as ``timer``.
    :meth:`retry`, :meth:`end` and :meth:`end_failed` take a fresh reading the same way.

    A front-end that makes one per request passes ``prefer``, ``timeout`` and ``now`` by
    position: calling a class with keywords builds a dict of them, a third of its cost (and
    ``timer`` is not keyword-only: a keyword-only default costs a dict lookup per call).
    """

    __slots__ = ("_balancer", "rule", "method", "key", "tried", "_current", "prefer",
                 "timeout", "deadline", "_timer", "_now")

    def __init__(self, balancer: Picker, rule: RetryRule, method: str = "GET",
                 key: str | None = None, prefer: str | None = None, timeout: float = 0.0,
                 now: float | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._balancer = balancer
        self.rule = rule
        self.method = method
        self.key = key
        self.prefer = prefer
        self.tried: list[Backend] = []        # the backends of this request, in order
        self._current: Completion | None = None
        self.timeout = timeout
        self._timer = timer
        self._now = now
        #: The time (on ``timer``) by which the request's answer must have begun; None: none.
        self.deadline = ((timer() if now is None else now) + timeout if timeout > 0
                         else None)

    def time_left(self) -> float | None:
        """Seconds left before the deadline (negative once it has passed); None without one."""
        deadline = self.deadline
        return None if deadline is None else deadline - self._timer()

    @property
    def expired(self) -> bool:
        """A deadline is set and no time is left of it."""
        deadline = self.deadline
        return deadline is not None and deadline - self._timer() < MIN_TIME_LEFT

    def cut(self, connect: float, read: float) -> tuple[float, float]:
        """An attempt's connect and read timeouts, each cut to the time left before the
        deadline (never below :data:`MIN_TIME_LEFT`); as given without a deadline."""
        deadline = self.deadline
        if deadline is None:
            return connect, read
        left = max(MIN_TIME_LEFT, deadline - self._timer())
        return min(connect, left), min(read, left)

    def deadline_text(self) -> str:
        """The words of an attempt that timed out because the deadline cut its timeout."""
        return f"the request's {format_duration(self.timeout)} deadline (LB_TIMEOUT) ran out"

    def start(self) -> Backend:
        """The first attempt's backend. Raises :class:`NoHealthyBackend` when the pool has
        none to offer."""
        # (_begin, inlined: once per request; positional arguments cost less than keywords)
        now = self._now
        if now is None:
            completion = self._balancer.begin(self.key, (), self.prefer)
        else:
            completion = self._balancer.begin(self.key, (), self.prefer, now)
        self._current = completion
        backend = completion.backend
        self.tried.append(backend)
        return backend

    def retry(self, outcome: Outcome, *, replayable: bool = True,
              now: float | None = None) -> Backend | None:
        """The current attempt failed with ``outcome``: the next attempt's backend, or
        ``None`` when none follows (the rule says no, or every backend was tried).

        ``replayable``: the request's body can be sent again. A failure without a response
        is reported now; one with a response is reported once the next backend is picked,
        and otherwise stays open for :meth:`end` (the client gets that response). An
        attempt already ended (:meth:`end`: a byte of its response may have reached the
        client; :meth:`release`) is never retried.

        After the rule: no retry once the deadline has passed, nor when the retry budget is
        spent (the balancer's :meth:`spend_retry`), nor when the time left is shorter than
        the next backend's usual time to answer (that pick is released).

        ``now``: ``timer``'s reading, taken by the front-end when the attempt failed (see the
        class); None reads it where needed.
        """
        current = self.completion
        if current.ended:
            # its answer reached the client (or it was given up): never again
            self._log(outcome, "not retried: the attempt had already ended (its answer went "
                               "to the client, or it was given up)")
            return None
        if outcome.status is None:
            current.done(outcome, now=now)
        if not self.rule.allows(self.method, outcome, attempts=len(self.tried),
                                replayable=replayable):
            if logger.isEnabledFor(logging.INFO):
                why = self.rule.why_not(self.method, outcome, attempts=len(self.tried),
                                        replayable=replayable)
                self._log(outcome, f"not retried: {why or 'the retry rule says no'}")
            return None
        deadline = self.deadline
        if deadline is not None and deadline - (
                self._timer() if now is None else now) < MIN_TIME_LEFT:
            self._log(outcome, f"not retried: the request's {format_duration(self.timeout)} "
                               f"deadline (LB_TIMEOUT) has passed")
            return None
        balancer = self._balancer
        spent = False
        try:
            if not balancer.spend_retry(self.tried):
                self._log(outcome, "not retried: the retry budget is spent (LB_RETRY_BUDGET: "
                                   "retries may add only a share of the requests)")
                return None
            spent = True
            if now is None:
                following = balancer.begin(self.key, exclude=self.tried)
            else:
                following = balancer.begin(self.key, exclude=self.tried, now=now)
        except NoHealthyBackend:
            if spent:
                balancer.refund_retry()
            self._log(outcome, "not retried: every backend was tried")
            return None
        if deadline is not None:
            left = deadline - (self._timer() if now is None else now)
            usual = balancer.usual_latency(following.backend)
            if usual is not None and left < usual:
                following.release()
                balancer.refund_retry(picked=True)
                spare = format_duration(max(0.0, left), digits=3)
                self._log(outcome, f"not retried: {spare} left of "
                                   f"the {format_duration(self.timeout)} deadline "
                                   f"(LB_TIMEOUT), less than {following.backend.url}'s usual "
                                   f"{format_duration(usual, digits=3)}")
                return None
        current.done(outcome, now=now)      # ignored if already reported above
        self._log(outcome, f"retrying on {following.backend.url}")
        return self._begin(following)

    def _log(self, outcome: Outcome, then: str) -> None:
        """The failed attempt's line: the method, which attempt on which backend, how it
        failed and what follows."""
        if not outcome.ok and logger.isEnabledFor(logging.INFO):
            logger.info("%s attempt %d on %s failed: %s; %s", self.method, len(self.tried),
                        self.tried[-1].url, failure_reason(outcome), then)

    # -- what every front-end does around the loop, in one wording ------------------------

    def failed(self, failure: Failure, latency: float | None, words: str) -> Outcome:
        """The outcome of an attempt that failed without a response (refused, reset, timed
        out): ``failure``'s fields, ``latency`` (seconds since the attempt was sent) and
        ``words``, the front-end's for the failure ("connection refused"), unless the
        request's deadline cut its timeout (then :meth:`deadline_text`). Give it to
        :meth:`retry`."""
        # (ok, latency, sent, timeout, status, bytes_sent, bytes_received, error)
        return _new_outcome(Outcome, (False, latency, failure.sent, failure.timeout, None,
                                      failure.bytes_sent, 0,
                                      self.deadline_text() if failure.deadline else words))

    @staticmethod
    def answer_status(outcome: Outcome) -> int:
        """The status of the proxy's own answer when the last attempt (``outcome``) failed
        without a response the client can get: 504 when it timed out, else 502
        (:data:`NO_BACKEND_STATUS` when there was nothing to try)."""
        return 504 if outcome.timeout else 502

    def delivered(self, answered: Outcome, received: int, *, bytes_sent: int | None = None,
                  now: float | None = None) -> None:
        """The answered attempt's response reached the client whole: end it with
        ``answered`` (its outcome when the head came) and the body bytes passed on
        (``received``); ``bytes_sent``: the request body's bytes when more went up after the
        head (a streamed upload), else ``answered``'s. ``now`` as for :meth:`end`."""
        current = self._current
        if current is not None:
            # (done() of that outcome, without building it: once per request)
            current._report(answered.ok, answered.latency,
                            answered.bytes_sent if bytes_sent is None else bytes_sent,
                            received, answered.status, now)

    def delivered_answer(self, status: int, latency: float | None, received: int,
                         bytes_sent: int, now: float | None = None) -> None:
        """:meth:`delivered` of the outcome ``rule.outcome(status, latency, bytes_sent)``
        without building it, for a front-end that keeps its answered attempt's fields rather
        than its outcome (the fast path: building an outcome and reading its fields cost more
        than the rest of this end, once per request)."""
        current = self._current
        if current is not None:
            # (ok as RetryRule.outcome has it)
            current._report(status not in self.rule.fail_statuses, latency, bytes_sent,
                            received, status, now)

    def client_left(self, answered: Outcome | None, received: int) -> None:
        """The client went away (closed, reset, timed out) before its response was whole.
        Once the response had begun (``answered``: the attempt's outcome at its head) the
        backend did its part: the attempt ends with ``answered`` and the ``received`` body
        bytes passed on; before that it is released (no outcome: nothing to learn)."""
        if answered is not None:
            self.end(answered._replace(bytes_received=received))
        else:
            self.release()

    def broke_off(self, answered: Outcome, received: int, words: str, *,
                  timeout: bool = False) -> None:
        """The response's body broke off after its head went to the client (``received``
        bytes passed on; ``words``: the front-end's for why; ``timeout``: it stopped
        coming): a failure of the backend that no retry can follow
        (:func:`broken_body`), logged as :meth:`end_failed` logs it. The front-end cuts the
        client's connection (the response cannot be completed)."""
        self.end_failed(broken_body(answered, received, words, timeout=timeout))

    def end_failed(self, outcome: Outcome, why: str = ANSWER_BEGUN, *,
                   now: float | None = None) -> None:
        """End the current attempt with ``outcome``, a failure that no retry can follow
        (``why``, for the log: by default, its response had begun to reach the client: a
        body that broke off, :func:`broken_body`), and log its failed-attempt line as
        :meth:`retry` logs the others, so every front-end says it the same way."""
        self._log(outcome, f"not retried: {why}")
        self.end(outcome, now=now)

    def end(self, outcome: Outcome, *, wait: bool = True, now: float | None = None) -> None:
        """End the current attempt with ``outcome`` (see :meth:`Completion.done`; ``now``:
        ``timer``'s reading at the end, taken by the front-end, for a balancer that takes
        it)."""
        current = self._current
        if current is not None:
            current.done(outcome, wait=wait, now=now)

    def release(self, *, wait: bool = True) -> None:
        """End the current attempt without an outcome (given up, cancelled); ``wait`` as for
        :meth:`Completion.release`."""
        if self._current is not None:
            self._current.release(wait=wait)

    @property
    def completion(self) -> Completion:
        """The current attempt's handle: to end it elsewhere (when a streamed body ends)."""
        if self._current is None:
            raise RuntimeError("no attempt yet: call start() first")
        return self._current

    def _begin(self, completion: Completion) -> Backend:
        self._current = completion
        self.tried.append(completion.backend)
        return completion.backend

    def __enter__(self) -> Attempts:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self.release(wait=not issubclass(kind, GeneratorExit))

    def __repr__(self) -> str:
        tried = ", ".join(b.url for b in self.tried)
        return f"<Attempts {self.method} key={self.key!r} tried=[{tried}] {self.rule!r}>"
