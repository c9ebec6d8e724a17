"""What in a run's results would puzzle someone who has never run a load balancer, said in a
sentence under the run's chart and table, on the terminal and in the HTML report alike.

Two things did puzzle a newcomer: the flaky backend's share falling to 0 *before* the kill
(its own failures, 20% of its requests, came three in a row and got it ejected), and a killed
backend that the gateway still counts healthy (the latency policy stopped sending to it after
a failure, so it never failed enough times in a row to be ejected: passive health only learns
from requests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backends import FLAKY_FAILURE_RATE
from .results import BackendRow, PolicyResult

__all__ = ["gateway_view", "chart_notes", "table_notes"]


def gateway_view(row: BackendRow) -> str:
    """The table's last column: the gateway's state of the backend at the end, after
    "killed, " for the killed one ("still healthy": the gateway never found out)."""
    if not row.killed:
        return row.state
    return "killed, " + ("still healthy" if row.state == "healthy" else row.state)


def chart_notes(result: PolicyResult, settings: Mapping[str, Any]) -> list[str]:
    """Under the share chart: why a backend's share fell to 0 before the kill (ejected by
    its own failures: the times come from the balancer's events, not from the chart)."""
    max_fails = settings["max_fails"]
    found = []
    kill = result.killed_at
    for row in result.rows:
        early = [at for at in result.ejected_at.get(row.name, ()) if kill is not None
                 and at < kill]
        if early:
            why = (f"{FLAKY_FAILURE_RATE:.0%} of its requests fail, and {max_fails} failures "
                   "in a row eject a backend" if row.name == "flaky" else
                   f"{max_fails} of its requests failed in a row, which ejects a backend")
            found.append(f"{row.name} was ejected before the kill ({_times(early)} into the "
                         f"run): {why}, so its share falls to 0 for a while")
    return found


def table_notes(result: PolicyResult, settings: Mapping[str, Any]) -> list[str]:
    """Under the table: why the killed backend is still healthy to the gateway."""
    max_fails = settings["max_fails"]
    found = []
    for row in result.rows:
        if row.killed and row.state == "healthy":
            why = ("the latency policy stopped sending to it after a failure (a failure counts "
                   "as a 5 s sample), before it failed" if result.policy == "latency" else
                   "after the kill it was not sent enough requests to fail")
            ejected = "never ejected" if not row.ejections else "not ejected after it"
            found.append(f"{row.name} was killed but {ejected}: {why} {max_fails} times in a "
                         "row, so the gateway never learned it was dead; active health checks "
                         "(LB_HEALTH_CHECK) would have marked it DOWN")
    return found


def _times(seconds: list[float]) -> str:
    """``0.42 s``, ``0.42 s and 0.81 s``, ``0.42 s, 0.81 s and 3 more``."""
    shown = [f"{at:.2f} s" for at in seconds[:2]]
    if len(seconds) > 2:
        return f"{shown[0]}, {shown[1]} and {len(seconds) - 2} more"
    return " and ".join(shown)
