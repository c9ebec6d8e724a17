"""The demo's words for someone who has never run a load balancer: one line per idea, printed
on the terminal and in the HTML report alike, so both say the same thing."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from .backends import FLAKY_FAILURE_RATE, SLOW_DELAY

__all__ = ["explained", "wrapped", "terminal_lines", "WHAT_TO_SEE", "BACKENDS_EXPLAINED"]

TERMINAL_WIDTH = 100             # the demo's printed lines wrap here


def explained(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(term, one line) for p50/p99, ejection and the latency policy, quoting the demo's
    ``max_fails`` and ``fail_timeout``."""
    return [
        ("p50 / p99",
         "half of the requests were answered faster than the p50, and 99 in 100 faster than "
         "the p99 (the slowest 1% waited longer: what your unluckiest users feel)"),
        ("ejection",
         f"after {settings['max_fails']} failures in a row the balancer sends a backend "
         f"nothing for a while ({settings['fail_timeout']:g} s here, longer if it fails "
         "again), then tries it again; the failed request is retried on another backend"),
        ("latency policy",
         "each request goes to the backend expected to answer soonest (its recent response "
         "times x the requests it already has), so the fast one gets most and a failing one "
         "counts as very slow"),
    ]


def wrapped(label: str, text: str, width: int) -> str:
    """``  label:   text`` wrapped at TERMINAL_WIDTH under a column ``width`` wide."""
    return textwrap.fill(text, TERMINAL_WIDTH, initial_indent=f"  {label + ':':<{width}}",
                         subsequent_indent=" " * (width + 2))


def terminal_lines(settings: Mapping[str, Any]) -> list[str]:
    """:func:`explained` for the terminal, under a ``words:`` heading."""
    return ["  words:", *(wrapped(term, line, 16) for term, line in explained(settings))]


BACKENDS_EXPLAINED = (
    f"fast answers at once; slow waits {SLOW_DELAY * 1000:.0f} ms; flaky fails "
    f"{FLAKY_FAILURE_RATE:.0%} of its requests (a 503 or a dropped connection) and is killed "
    "(SIGKILL) halfway through each run, as a crashed server would be")

WHAT_TO_SEE = {
    "round_robin": "equal turns; the flaky backend's turns go to the others while it is ejected",
    "random": "weighted random: about equal shares, like round_robin, without the order",
    "ip_hash": "each client address sticks to one backend; only the flaky backend's clients move",
    "latency": "the fast backend wins; a failure counts as a 5 s sample, so flaky is avoided",
    "least_conn": "the slow backend holds its connections longer, so it gets fewer requests",
    "bandwidth": "bytes moved per backend over 14 s, two drawn and the lighter wins: these "
                 "backends all send the same small answers, so shares stay even, as with "
                 "round_robin (it tells backends apart by the bytes they move, not their speed)",
}
