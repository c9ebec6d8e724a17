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

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def as_dict(self) -> dict[str, Any]:
        """A copy as a plain dict (the ``source_stats()`` row)."""
        return dataclasses.asdict(self)
