"""What a source did last: the row a pool's ``source_stats()`` shows for each source."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["SourceStatus"]


@dataclasses.dataclass(slots=True)
class SourceStatus:
    """The state of one source, kept up to date by its watcher (on the watcher's loop) and read
    by ``source_stats()`` from any thread: each field is replaced whole, so a reader sees each
    value as it was at some moment (not necessarily all from the same moment).

    Times are readings of the watcher's ``timer`` (monotonic by default), None until it
    happens.
    """

    source: str                       # the entry's text, as ``Source.url`` normalises it
    kind: str                         # "dns" | "srv" | "etcd"
    backends: int = 0                 # members in the last good set
    last_success: float | None = None     # when the source last answered
    last_error: str | None = None         # what went wrong the last time it failed
    last_error_at: float | None = None
    next_refresh: float | None = None     # when the watcher asks next (None while it waits
                                          # on a stream, as etcd's watch does)
    failing_since: float | None = None    # start of the current outage; None while answering
    failures: int = 0                     # failed attempts in the current outage
    partial: str | None = None            # a part that fails while the source answers (a
                                          # DNS name's AAAA question, say: dns.py); else None
    updates_total: int = 0                # answers ever (metrics' discovery_updates_total)
    failures_total: int = 0               # failed asks ever (never reset, unlike failures)

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def as_dict(self) -> dict[str, Any]:
        """A copy as a plain dict (the ``source_stats()`` row)."""
        return dataclasses.asdict(self)

    def ages(self, now: float) -> dict[str, float | None]:
        """The times as a person reads them, at ``now`` (a reading of the same timer):
        ``last_success_ago``, ``last_error_ago``, ``next_refresh_in`` (0 when due) and
        ``failing_for`` (seconds; None when it has not happened or does not apply)."""
        last_success, last_error_at = self.last_success, self.last_error_at
        next_refresh, failing_since = self.next_refresh, self.failing_since
        return {
            "last_success_ago": None if last_success is None else max(0.0, now - last_success),
            "last_error_ago": None if last_error_at is None else max(0.0, now - last_error_at),
            "next_refresh_in": None if next_refresh is None else max(0.0, next_refresh - now),
            "failing_for": None if failing_since is None else max(0.0, now - failing_since),
        }
