"""source_stats() rows read as a person reads them: ages beside the monotonic readings, and
the lifetime counters that metrics' discovery_updates_total reads (issue 11)."""

from __future__ import annotations

import time

from .test_pool import SOURCE, SetsWatcher, pool_of


def test_source_stats_rows_carry_ages_and_lifetime_counters():
    watcher = SetsWatcher(SOURCE, "http://127.0.0.2:8080")
    with pool_of([watcher]) as pool:
        status = watcher.status
        now = time.monotonic()
        status.last_success = now - 30.0
        status.last_error, status.last_error_at = "SERVFAIL", now - 12.0
        status.failing_since = now - 12.0
        status.next_refresh = now + 600.0
        status.updates_total, status.failures_total = 7, 4
        [row] = pool.source_stats()
        assert 30.0 <= row["last_success_ago"] < 90.0      # bounds: a slow machine's delay
        assert 12.0 <= row["last_error_ago"] < 72.0
        assert 12.0 <= row["failing_for"] < 72.0
        assert 540.0 < row["next_refresh_in"] <= 600.0
        assert (row["updates_total"], row["failures_total"]) == (7, 4)
        assert row["last_success"] == status.last_success   # the old keys stay
        status.failing_since = status.next_refresh = None
        [row] = pool.source_stats()
        assert (row["failing_for"], row["next_refresh_in"]) == (None, None)
