"""urllib3's own retries (the adapter's ``max_retries``) under the request's deadline.

``max_retries`` (a urllib3 ``Retry``) retries within one attempt, on its backend, as in a
plain ``HTTPAdapter``. Under ``LB_TIMEOUT`` each of those tries has its waits cut to the time
left (:mod:`lbmiddleware.adapter.responses`), and none starts that could not begin before the
deadline: when the wait before it (a ``Retry-After``, a back-off) leaves no time, the
``Retry`` counts as spent there, and urllib3 ends as it does when it is: the last error in a
``MaxRetryError`` (requests' ``ConnectionError``, ``ConnectTimeout``, ``RetryError``), or
the last response when ``raise_on_status`` is off. Without that, a ``Retry(read=3)`` would
wait four read timeouts, and a ``Retry-After: 30`` sleep 30 s, past a 1 s deadline.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from ..core.attempts import MIN_TIME_LEFT

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ..fleet.front_end import HeadDeadline

__all__ = ["within_deadline"]


def within_deadline(retries: Any, deadline: HeadDeadline) -> Any:
    """``retries`` (what urllib3's ``urlopen`` was given) keeping to ``deadline``: a copy
    of a ``Retry`` that may retry, of the same class; anything else as it is (a ``Retry``
    that never retries, requests' default ``Retry(0, read=False)``, costs nothing)."""
    if not isinstance(retries, Retry) or isinstance(retries, _WithinDeadline) \
            or retries.total == 0:          # (0 or False: no retry at all)
        return retries
    copy = retries.new()
    # (a class is hashable: mypy issue 11470)
    copy.__class__ = _within_deadline(type(retries))  # type: ignore[arg-type]
    bound = cast(_WithinDeadline, copy)
    bound.deadline = deadline
    return bound


class _WithinDeadline(Retry):
    """Mixin of a ``Retry`` class: the retry spent when no try could begin before
    ``deadline``."""

    deadline: HeadDeadline | None = None

    def new(self, **kw: Any) -> Self:
        following = super().new(**kw)
        following.deadline = self.deadline
        return following

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        following = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline = self.deadline
        if deadline is not None and deadline.left() - following.wait(response) < MIN_TIME_LEFT:
            reason = error or ResponseError(
                (ResponseError.SPECIFIC_ERROR.format(status_code=response.status)
                 if response is not None and response.status else ResponseError.GENERIC_ERROR)
                + " (the request's deadline, LB_TIMEOUT, leaves no time to retry)")
            # (urlopen always gives its pool: urllib3 raises the same with it)
            raise MaxRetryError(cast("ConnectionPool", _pool), url or "", reason) from reason
        return following

    def wait(self, response: BaseHTTPResponse | None) -> float:
        """The seconds :meth:`sleep` will wait before the next try (after ``response``, if
        the last try had one): its ``Retry-After``, else the back-off."""
        if self.respect_retry_after_header and response is not None:
            after = self.get_retry_after(response)
            if after:
                return after
        return self.get_backoff_time()


@functools.cache
def _within_deadline(base: type[Retry]) -> type[_WithinDeadline]:
    """``base`` (``Retry`` or the caller's subclass of it) with :class:`_WithinDeadline`."""
    if base is Retry:
        return _WithinDeadline
    return type(base.__name__, (_WithinDeadline, base), {"__module__": base.__module__})
