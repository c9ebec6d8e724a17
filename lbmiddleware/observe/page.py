"""The status page: HTML for people, drawn from a :func:`~.snapshot.snapshot`.

One table per pool, a row per backend, as HAProxy's stats page and Envoy's ``/clusters`` show
them: the state in words with its progress ("DOWN 1/2", "ejected 8s left", "slow start 35%"),
the counters and their rates, and two small charts of the last minutes (request rate, failures
in red, and the mean time to the first byte) as inline SVG, drawn across their width from the
second sample on. A legend under the pools (a ``<details>`` block) says what the words and
charts mean. It refreshes itself with a ``<meta>`` refresh and has no JavaScript; on a narrow
screen (a phone) each row becomes a card.

Latency here is always the time to the response head (the histogram's, what ``latency`` and
the charts measure), never the whole response, and is labelled so: an access log's duration
includes the body and is longer. The latency policy's own estimate is shown only under that
policy, where it is what the picks compare.

Every value printed goes through :func:`html.escape`: backend URLs, source names and error
texts come from configuration and from the network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .history import INTERVAL, KEEP

__all__ = ["render", "state_text", "age", "duration"]


def render(snap: Mapping[str, Any], *, refresh: float = 5.0) -> str:
    """The page for ``snap`` (a snapshot), refreshing every ``refresh`` seconds."""
    ready = snap.get("ready")
    pools = snap.get("pools", [])
    title = "lbmiddleware status" if ready else "NOT READY · lbmiddleware status"
    body = "".join(_pool(pool) for pool in pools)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{_e(_seconds_attr(refresh))}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
        "<body><header>"
        '<div class="title"><h1>lbmiddleware</h1>'
        + (_chip("ready", "ok") if ready else _chip("not ready", "bad"))
        + "</div>"
        f'<p class="meta">{_e(_when(snap.get("time")))} · refreshes every '
        f"{_e(duration(refresh))} · "
        '<a href="status.json">status.json</a> · <a href="metrics">metrics</a></p>'
        f"{_worker(snap.get('worker'))}"
        f"</header>\n<main>{body}{_LEGEND}</main></body></html>\n")


def _worker(worker: object) -> str:
    """Which of the gateway's workers answered, and what that means for this page."""
    if not isinstance(worker, Mapping):
        return ""
    return (f'<p class="meta worker">answered by worker {_e(worker.get("index"))} of '
            f'{_e(worker.get("count"))} (pid {_e(worker.get("pid"))}). Each worker has its '
            "own pools: the health, latency and counters here are this worker's alone, and "
            "another load of this page may come from another worker; /metrics has every "
            "worker's, labelled worker.</p>")


# -- a pool --------------------------------------------------------------------------------

def _pool(pool: Mapping[str, Any]) -> str:
    alarms = ""         # chips beside the pool's name: what needs a look now
    if pool.get("panic"):
        since = pool.get("panic_age")
        alarms = _chip("panic" + (f" for {duration(since)}" if since is not None else ""),
                       "bad", "every backend is unusable: picking among all of them")
    budget = pool.get("retry_budget")
    if isinstance(budget, Mapping) and _spent(budget):
        alarms += _chip("retry budget spent", "warn", _SPENT_TIP)
    facts = [
        ("policy", str(pool.get("policy", "?"))),
        ("usable", f"{_count(pool.get('usable'))} of {_count(pool.get('members'))}"),
        ("draining", _count(pool.get("draining"))),
        ("retries", _count(pool.get("retries"))),
    ]
    if "retry_budget" in pool:
        facts.append(("retry budget", _budget(budget)))
    factor = pool.get("hash_balance_factor")
    if factor:
        facts.append(("bounded load", f"{_count(factor)}% · "
                                      f"{_count(pool.get('hash_overflows_total'))} overflows"))
    facts.append(("health checks", "on" if pool.get("health_check") else "off"))
    if pool.get("slow_start"):
        facts.append(("slow start", duration(pool["slow_start"])))
    facts_html = "".join(
        f"<div><dt>{_e(name)}</dt><dd>{_fact(value)}</dd></div>" for name, value in facts)
    sources = pool.get("sources") or []
    backends = pool.get("backends") or []
    rows = "".join(_backend(row, pool.get("policy")) for row in backends)
    if not rows:
        rows = f'<tr><td class="empty" colspan="{len(_COLUMNS)}">no backends</td></tr>'
    return (
        '<section class="pool">'
        f'<div class="pool-head"><h2>{_e(pool.get("name", ""))}</h2>{alarms}</div>'
        f'<dl class="facts">{facts_html}</dl>'
        + (_sources(sources) if sources else "")
        + '<div class="scroll"><table class="backends">'
        + ("<caption>Backends</caption>" if sources else "")     # (told apart from sources)
        + "<thead><tr>"
        + "".join(f'<th{_class(css)}>{_HEADS.get(name, _e(name))}</th>'
                  for name, css in _COLUMNS)
        + f"</tr></thead><tbody>{rows}</tbody></table></div></section>\n")


_SPENT_TIP = ("retries are refused (each client gets the failure it had) until new requests "
              "add to the budget or old retries leave its window")


def _spent(budget: Mapping[str, Any]) -> bool:
    """The budget holds no whole retry now: the next retry is refused."""
    left = budget.get("available")
    return isinstance(left, (int, float)) and left < 1


def _fact(value: str) -> str:
    """A fact's value; a part in brackets at its end (a rule: "(20% + 10/s over 10s)") in
    grey, kept on one line, so that a narrow screen breaks before it, not inside it."""
    main, bracket, rule = value.partition(" (")
    if not bracket or not rule.endswith(")"):
        return _e(value)
    return f'{_e(main)} <span class="rule">({_e(rule)}</span>'


def _budget(budget: object) -> str:
    """The retry budget in a few words: "37 left · 3 refused (20% + 10/s over 10s)"."""
    if not isinstance(budget, Mapping):
        return "off"
    left = budget.get("available")
    shown = (f"{math.floor(left):,}" if isinstance(left, (int, float)) and math.isfinite(left)
             else "?")
    ratio, floor, ttl = (budget.get(k) for k in ("ratio", "min_per_second", "ttl"))
    rule = ""
    if isinstance(ratio, (int, float)) and isinstance(floor, (int, float)):
        rule = f" ({ratio * 100:g}% + {floor:g}/s over {duration(ttl)})"
    return f"{shown} left · {_count(budget.get('exhausted_total'))} refused{rule}"


#: What the page calls latency: the time to the response head, not to the body's end.
_LATENCY = "Time to first byte"
_ESTIMATE = "policy sees"
_ESTIMATE_TIP = ("what the latency policy compares: a peak-weighted average of the time to "
                 "first byte that jumps on a slow answer and counts a failure as very slow")

_HEADS = {_LATENCY: "Time to<br>first byte"}      # a header on two lines (a narrow column)

_COLUMNS = (("Backend", ""), ("State", ""), ("Tier", "num"), ("Weight", "num"),
            ("In flight", "num"), ("Requests", "num"), ("Failures", "num"),
            ("Ejections", "num"), (_LATENCY, "num"), ("Changed", ""), ("Check", ""),
            ("Last 10 minutes", ""))


def _sources(sources: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for row in sources:
        error = row.get("last_error")
        partial = row.get("partial")
        if row.get("failing_for") is not None:
            status = _chip(f"failing for {duration(row['failing_for'])}", "bad")
        elif partial:
            status = _chip("partly failing", "warn")
        elif row.get("last_success_ago") is not None:
            status = _chip("answering", "ok")
        else:
            status = _chip("no answer yet", "idle")
        problem = partial or error
        problem_html = "—"
        if problem:
            when = row.get("last_error_ago")
            problem_html = (f'<span class="error">{_e(problem)}</span>'
                            + (f"<small>{_e(age(when))}</small>" if when is not None
                               and not partial else ""))
        rows.append(
            "<tr>"
            f'<td data-label="Source"><span class="url">{_e(row.get("source", ""))}</span>'
            f'<small>{_e(row.get("kind", ""))}</small></td>'
            f'<td class="wide" data-label="Status">{status}</td>'
            f'<td class="num" data-label="Backends">{_e(_count(row.get("backends")))}</td>'
            f'<td data-label="Last success">{_e(age(row.get("last_success_ago")))}</td>'
            f'<td data-label="Next refresh">{_e(_in(row.get("next_refresh_in")))}</td>'
            f'<td class="full" data-label="Last error">{problem_html}</td>'
            "</tr>")
    head = "".join(f"<th{_class(css)}>{name}</th>" for name, css in (
        ("Source", ""), ("Status", ""), ("Backends", "num"), ("Last success", ""),
        ("Next refresh", ""), ("Last error", "")))
    return ('<div class="scroll"><table class="sources"><caption>Sources</caption>'
            f"<thead><tr>{head}</tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table></div>')


# -- a backend -----------------------------------------------------------------------------

def _backend(row: Mapping[str, Any], policy: object) -> str:
    """A backend's row. What the pool's ``policy`` weighs is shown under that policy only
    (under another nothing reads it): the latency policy's estimate, the bandwidth policy's
    bytes per second."""
    text, kind = state_text(row)
    source = row.get("source")
    weight, effective = row.get("weight"), row.get("effective_weight")
    weight_html = _e(_number(weight))
    if effective is not None and effective != weight:
        weight_html = (f'{_e(_number(effective))}<small>of {_e(_number(weight))}</small>')
    latency = row.get("latency")
    estimate = row.get("latency_estimate")
    latency_html = _e(_ms(latency)) if latency is not None else "—"
    if estimate is not None and policy == "latency":
        latency_html += (f'<small title="{_e(_ESTIMATE_TIP)}">'     # (two lines at most)
                         f"{_e(_nowrap(_ESTIMATE))} {_e(_nowrap(_ms(estimate)))}</small>")
    history = row.get("history") or {}
    cells = [
        ("Backend", "", f'<span class="url">{_e(row.get("url", ""))}</span>'
                        + (f"<small>from {_e(source)}</small>" if source else "")),
        ("State", "state", _chip(text, kind)),
        ("Tier", "num", _e(_count(row.get("priority")))),
        ("Weight", "num", weight_html),
        ("In flight", "num", _e(_count(row.get("in_flight")))),
        ("Requests", "num", _e(_count(row.get("requests")))
         + _rate_html(row.get("requests_per_second"))
         + (_bytes_html(row.get("bytes_per_second")) if policy == "bandwidth" else "")),
        ("Failures", "num", _e(_count(row.get("failures")))
         + _rate_html(row.get("failures_per_second"))),
        ("Ejections", "num", _e(_count(row.get("ejections")))),
        (_LATENCY, "num", latency_html),
        ("Changed", "age", _e(_in_state_for(row))),
        ("Check", "check", _check(row.get("health_check"))),
        ("Last 10 minutes", "trend", _charts(history)),
    ]
    return (f'<tr class="{_e("state-" + str(row.get("state", "")))}">'
            + "".join(f'<td{_class(css)} data-label="{_e(label)}">{content}</td>'
                      for label, css, content in cells)
            + "</tr>")


def state_text(row: Mapping[str, Any]) -> tuple[str, str]:
    """A backend's state in words, HAProxy style, and its colour: ``("DOWN 1/2", "bad")``,
    ``("ejected 8s left", "bad")``, ``("slow start 35%", "info")``, ``("UP", "ok")``..."""
    state = row.get("state")
    check = row.get("health_check")
    check = check if isinstance(check, Mapping) else {}
    if state == "ejected":
        left = row.get("ejection_left")
        text = "ejected" + (f" {duration(left, up=True)} left" if left is not None else "")
        if check.get("status") == "down":       # its checks failed too: both, or it looks
            text += f" · {_down(check)}"          # ready once its ejection ends
        return text, "bad"
    if state == "down":
        if check.get("status") == "pending":
            return "waiting for a first check", "idle"
        return _down(check), "bad"
    if state == "draining":
        left = row.get("drain_left")
        return ("draining" + (f", {duration(left, up=True)} left" if left is not None
                              else ""), "drain")
    if state == "slow_start":
        ramp = row.get("ramp")
        return ("slow start" + (f" {math.floor(ramp * 100)}%" if ramp is not None else ""),
                "info")
    if state == "probation":
        return "probation", "warn"
    if state == "healthy":
        fall = check.get("fall") or 0
        to_go = check.get("fails_to_down")
        if fall and isinstance(to_go, int):
            return f"UP {fall}/{fall + to_go} failing", "warn"
        return "UP", "ok"
    return str(state), "idle"


def _down(check: Mapping[str, Any]) -> str:
    """DOWN, with the passes so far of those that bring it up once one has passed."""
    rise = check.get("rise") or 0
    to_go = check.get("passes_to_up")
    if rise and isinstance(to_go, int):
        return f"DOWN {rise}/{rise + to_go}"
    return "DOWN"


# A state in the words of the Changed cell ("up for 55s"): the state held since its last
# change, or since it joined when it never changed, so the cell never claims a change.
_STATE_WORDS = {"healthy": "up", "probation": "probation", "ejected": "ejected",
                "down": "down", "draining": "draining", "slow_start": "slow start"}


def _in_state_for(row: Mapping[str, Any]) -> str:
    state = row.get("state")
    since = row.get("state_age")
    if since is None:
        return "—"
    return f"{_STATE_WORDS.get(str(state), str(state))} for {duration(since)}"


def _check(check: object) -> str:
    if not isinstance(check, Mapping):
        return '<span class="muted">off</span>'
    last = check.get("last")
    if last is None:
        return '<span class="muted">not checked yet</span>'
    when = check.get("checked_ago")
    status = check.get("status")
    css = "ok" if status == "up" else "error"
    return (f'<span class="{css}">{_e(last)}</span>'
            + (f"<small>{_e(age(when))}</small>" if when is not None else ""))


def _rate_html(rate: object) -> str:
    return f"<small>{_e(_rate(rate))}</small>" if isinstance(rate, (int, float)) else ""


_BYTES_TIP = ("body bytes sent and received per second over the last 5 s, counted as each "
              "request ends: what the bandwidth policy balances (per unit of weight)")


def _bytes_html(rate: object) -> str:
    if not isinstance(rate, (int, float)):
        return ""
    return f'<small title="{_e(_BYTES_TIP)}">{_e(_nowrap(_bytes_rate(rate)))}</small>'


# -- charts --------------------------------------------------------------------------------

_HEIGHT = 26      # the view box's height; its width is the number of points less one


def _charts(history: Mapping[str, Any]) -> str:
    """Request rate and time to first byte over what the history holds. The x axis spans
    the samples kept so far, 10 minutes once full (drawn on ten minutes from the start, a
    young history was a dot at the right edge for its first minute)."""
    interval = history.get("interval")
    interval = interval if isinstance(interval, (int, float)) and interval > 0 else INTERVAL
    requests = _values(history.get("requests_per_second"))
    if not requests:        # fewer than two samples yet (the app has just started)
        return (f'<span class="muted">collecting: charts from the second sample '
                f"({_e(duration(interval))} apart)</span>")
    # (failures drawn only where there were some: a red line along zero reads as an alarm)
    failures = [v or None for v in _values(history.get("failures_per_second"))]
    latency = _values(history.get("latency_ms"))
    count = max(len(requests), len(latency))
    covered = count * interval
    if count == 1:          # one interval: its value held from its start to its end
        requests, failures, latency = ([*series, *series] for series in
                                       (requests, failures, latency))
    slots = max(count, 2)
    span = f"the last {duration(covered)}"
    top_rate = _top(requests + failures)
    top_ms = _top(latency)
    rate_peak = f"max {_short(top_rate)}" if top_rate else "none"
    ms_peak = f"max {_short(top_ms)}" if top_ms else "none"
    rate_svg = _spark([("req", requests), ("fail", failures)], slots, top_rate,
                      f"requests per second (failures in red) over {span}: {rate_peak}")
    ms_svg = _spark([("lat", latency)], slots, top_ms,
                    f"mean time to first byte in milliseconds over {span}: {ms_peak}")
    return (f'<div class="charts"><figure>{rate_svg}<figcaption><span>req/s</span>'
            f"<span>{_e(rate_peak)}</span></figcaption></figure>"
            f'<figure>{ms_svg}<figcaption><span>ms to 1st byte</span>'
            f"<span>{_e(ms_peak)}</span></figcaption></figure></div>"
            + (f'<small class="so-far">{_e(duration(covered))} so far</small>'
               if covered < KEEP else ""))


def _values(series: object) -> list[float | None]:
    if not isinstance(series, Sequence):
        return []
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
            for v in series]


def _top(values: Sequence[float | None]) -> float:
    return max((v for v in values if v is not None), default=0.0)


def _spark(lines: Sequence[tuple[str, Sequence[float | None]]], slots: int, top: float,
           label: str) -> str:
    """Polylines (with an area under the first) of ``lines`` right-aligned in ``slots``
    points across, 0 at the bottom and ``top`` at the top; a gap where a value is None.
    One unit of the view box across per point, so x is a whole number (a short page)."""
    width = max(slots - 1, 1)
    parts = [f'<line class="base" x1="0" y1="{_HEIGHT - 0.5}" x2="{width}" '
             f'y2="{_HEIGHT - 0.5}"/>']
    scale = (_HEIGHT - 3) / top if top > 0 else 0.0
    for index, (css, values) in enumerate(lines):
        offset = slots - len(values)
        for run in _runs(values):
            points: list[tuple[float, float]] = [
                (offset + i, _HEIGHT - 1 - value * scale) for i, value in run]
            alone = len(points) == 1            # a dash where it stands, no area under it
            if alone:
                x, y = points[0]
                points = [(max(x - 0.5, 0), y), (min(x + 0.5, width), y)]
            coords = " ".join(f"{x:g},{y:.1f}" for x, y in points)
            if index == 0 and not alone:
                first, last = points[0][0], points[-1][0]
                parts.append(f'<polygon class="{css}-area" points="{first:g},{_HEIGHT} '
                             f'{coords} {last:g},{_HEIGHT}"/>')
            parts.append(f'<polyline class="{css}" points="{coords}"/>')
    return (f'<svg class="spark" viewBox="0 0 {width} {_HEIGHT}" preserveAspectRatio="none" '
            f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
            + "".join(parts) + "</svg>")


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of ``values`` without a None, each as (index, value) pairs."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((index, value))
    if current:
        runs.append(current)
    return runs


# -- words and numbers ---------------------------------------------------------------------

def duration(seconds: object, *, up: bool = False) -> str:
    """``seconds`` in a few characters: ``"8s"``, ``"3m"``, ``"3m12s"`` (under 10 minutes),
    ``"2h"``, ``"4d"``; rounded down (``up``: up, for time left). ``"?"`` for no number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(
            seconds):
        return "?"
    whole = math.ceil(seconds) if up else math.floor(seconds)
    whole = max(whole, 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        return f"{whole // 3600}h"
    return f"{whole // 86400}d"


def age(seconds: object) -> str:
    """An age: ``"12s ago"``, ``"3m ago"``; ``"never"`` for None."""
    if seconds is None:
        return "never"
    text = duration(seconds)
    return "just now" if text == "0s" else f"{text} ago"


def _in(seconds: object) -> str:
    if seconds is None:
        return "—"
    return f"in {duration(seconds, up=True)}"


def _when(time: object) -> str:
    if not isinstance(time, str):
        return ""
    return time.replace("T", " ").replace("Z", " UTC")


def _count(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else _number(value)


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return _count(value)


def _rate(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value == 0:
        return "0/s"
    if value < 0.1:
        return f"{value:.2f}/s"
    if value < 100:
        return f"{value:.1f}/s"
    return f"{value:,.0f}/s"


def _bytes_rate(value: float) -> str:
    """Bytes per second in SI units: "0 B/s", "830 B/s", "12.4 kB/s", "3.1 MB/s"."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f} {unit}/s" if scaled < 100 else f"{scaled:,.0f} {unit}/s"
    return f"{value:.0f} B/s"


def _ms(seconds: object) -> str:
    """A latency in seconds, printed in milliseconds (seconds from 1 s)."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    ms = seconds * 1000
    # (the digits chosen by the value as rounded: 9.999 ms is "10.0 ms", not "10.00 ms")
    for digits, below in ((2, 10), (1, 100), (0, 1000)):
        if round(ms, digits) < below:
            return f"{ms:.{digits}f} ms"
    return f"{seconds:.2f} s"


def _short(value: float) -> str:
    """A chart's top: three digits at most ("24.5", "183", "1.2k")."""
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _seconds_attr(seconds: float) -> str:
    return f"{seconds:g}"


def _chip(text: str, kind: str, title: str = "") -> str:
    """A coloured label; its parts (" · " between them) may go on lines of their own, so
    "ejected 21s left · DOWN" does not widen a narrow column."""
    tip = f' title="{_e(title)}"' if title else ""
    first, *more = text.split(" · ")
    return (f'<span class="chip {_e(kind)}"{tip}><span>{_e(first)}</span>'
            + "".join(f"<span>· {_e(part)}</span>" for part in more) + "</span>")


def _nowrap(text: str) -> str:
    return text.replace(" ", "\u00a0")


def _class(css: str) -> str:
    return f' class="{css}"' if css else ""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


# -- the legend ----------------------------------------------------------------------------

# (term, what it means) under the pools: the words a newcomer asked about, in a <details>
# block, so it takes one line until opened and needs no script.
_EXPLAINED = (
    ("UP", "in rotation; UP 1/3 failing: still up, 1 failed active check of the 3 that take "
           "it down"),
    ("DOWN", "its active health checks failed: it gets no requests; DOWN 1/2: 1 passed check "
             "of the 2 that bring it back"),
    ("ejected 8s left", "requests to it failed several times in a row (passive health): it "
                        "gets none for 8 more seconds; · DOWN: its active checks fail too, "
                        "and it returns once they pass"),
    ("probation", "back from an ejection: its next failure ejects it again, a success ends "
                  "the probation"),
    ("slow start 35%", "it joined or came back and gets 35% of its weight, growing to 100%"),
    ("draining, 12s left", "leaving the pool: no new requests; those in flight have 12 more "
                           "seconds to finish"),
    ("retry budget", "37 left · 3 refused (20% + 10/s over 10s): retries the pool may make "
                     "now, of 20% of its requests plus 10 a second over the last 10s, and the "
                     "retries refused since the start (their clients got the failure they "
                     "had); retry budget spent: none left now"),
    ("bounded load", "125% · 17 overflows: under ip_hash a backend holds at most 125% of its "
                     "fair share of the requests in flight; an overflow is a pick that went "
                     "past its key's full backend to the key's next one"),
    ("Tier", "0 takes the traffic; a higher tier (a backup) only when tier 0 cannot"),
    ("Weight", "its share of the traffic against the others'; 0.53 of 1: slow start gives "
               "it 0.53 of its weight of 1 for now"),
    (_LATENCY, "mean time from sending a request to receiving the response's head (status "
               "and headers), over about the last 10 s; the body's time is not in it, so an "
               "access log's duration is longer"),
    (_ESTIMATE, "under the latency policy only: " + _ESTIMATE_TIP),
    ("kB/s", "under the bandwidth policy only, beside the request rate: the " + _BYTES_TIP),
    ("Changed", "how long it has been in its state (up for 55s): since its state last "
                "changed, or since it joined if it never changed"),
    ("Charts", "a point per 5 s over the last 10 minutes: req/s with failures in red, and "
               "the mean ms to 1st byte of the answers in each 5 s; max: the chart's top. "
               "Until 10 minutes are collected a chart spans what there is (5s so far)"),
)

_LEGEND = ('<details class="legend"><summary>What the page shows</summary><dl>'
           + "".join(f"<div><dt>{_e(term)}</dt><dd>{_e(text)}</dd></div>"
                     for term, text in _EXPLAINED)
           + "</dl></details>")


_STYLE = """
:root{--bg:#f5f6f8;--card:#fff;--line:#e2e5ea;--text:#1d2530;--muted:#667181;
--ok:#1f7a3a;--ok-bg:#e2f4e7;--warn:#8a5800;--warn-bg:#fdf1d3;--bad:#a8201a;--bad-bg:#fbe3e1;
--info:#1d5594;--info-bg:#e1edfb;--drain:#5d3f98;--drain-bg:#ece5f8;--idle:#5c6675;
--idle-bg:#eceef1;--req:#2f6fbf;--fail:#c8352b;--lat:#b26b00;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#15181d;--card:#1d2128;--line:#2e343d;
--text:#e4e7ec;--muted:#98a1ae;--ok:#7fd69a;--ok-bg:#1d3a27;--warn:#f1c66b;--warn-bg:#3d3119;
--bad:#ff9a91;--bad-bg:#46201d;--info:#8dbdf5;--info-bg:#1c3150;--drain:#c2a9f0;
--drain-bg:#33284a;--idle:#a6afbb;--idle-bg:#2a2f37;--req:#6aa6ef;--fail:#ff7b70;
--lat:#f0a84a}}
*{box-sizing:border-box}
body{margin:0;padding:16px;background:var(--bg);color:var(--text);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main{max-width:1400px;margin:0 auto}
header{margin-bottom:12px}
.title{display:flex;align-items:center;gap:10px}
h1{font-size:20px;font-weight:600;margin:0}
h2{font-size:16px;font-weight:600;margin:0}
.meta{margin:4px 0 0;color:var(--muted);font-size:13px}
a{color:var(--info)}
.pool{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:14px 16px;margin-bottom:16px}
.pool-head{display:flex;align-items:center;gap:10px;flex-wrap:wrap}
.facts{display:flex;flex-wrap:wrap;gap:4px 22px;margin:8px 0 12px}
.facts div{display:flex;gap:6px}
.facts dt{color:var(--muted);white-space:nowrap}
.facts dd{margin:0;font-weight:500}
.facts .rule{color:var(--muted);font-weight:400;white-space:nowrap}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th{font-size:12px;font-weight:600;color:var(--muted);text-align:left;white-space:nowrap;
padding:6px 8px;border-bottom:1px solid var(--line)}
td{padding:8px;border-bottom:1px solid var(--line);vertical-align:top}
td.age{white-space:nowrap}
td.num small{white-space:normal}
tr:last-child td{border-bottom:0}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td small{display:block;color:var(--muted);font-size:12px}
.url{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;
display:inline-block;min-width:22ch;max-width:34ch;overflow-wrap:anywhere}
td.check{min-width:7em;max-width:16em}
.muted{color:var(--muted)}
.ok{color:var(--ok)}
.error{color:var(--bad);overflow-wrap:break-word}
.empty{color:var(--muted);text-align:center}
table.sources{margin-bottom:18px}
caption{text-align:left;font-size:12px;font-weight:600;color:var(--muted);
text-transform:uppercase;letter-spacing:.04em;padding:0 8px 4px}
.chip{display:inline-flex;flex-wrap:wrap;align-items:center;gap:0 6px;white-space:nowrap;
border-radius:11px;
padding:1px 10px 1px 8px;font-size:12px;font-weight:600;color:var(--idle);
background:var(--idle-bg)}
.chip>span:first-child{display:inline-flex;align-items:center;gap:6px}
.chip>span:first-child::before{content:"";width:7px;height:7px;border-radius:50%;
background:currentColor}
.chip.ok{color:var(--ok);background:var(--ok-bg)}
.chip.warn{color:var(--warn);background:var(--warn-bg)}
.chip.bad{color:var(--bad);background:var(--bad-bg)}
.chip.info{color:var(--info);background:var(--info-bg)}
.chip.drain{color:var(--drain);background:var(--drain-bg)}
.charts{display:flex;gap:8px}
figure{margin:0}
figcaption{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0 4px;
color:var(--muted);
font-size:11px;white-space:nowrap}
.spark{display:block;width:110px;height:26px;overflow:visible}
.spark .base{stroke:var(--line);stroke-width:1}
.spark polyline{fill:none;stroke-width:1.5;stroke-linejoin:round;
vector-effect:non-scaling-stroke}
.spark .req{stroke:var(--req)}.spark .req-area{fill:var(--req);opacity:.12}
.spark .fail{stroke:var(--fail)}
.spark .lat{stroke:var(--lat)}.spark .lat-area{fill:var(--lat);opacity:.12}
.legend{max-width:1400px;margin:0 auto;background:var(--card);border:1px solid var(--line);
border-radius:10px;padding:10px 16px;font-size:13px}
.legend summary{cursor:pointer;font-weight:600}
.legend dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:4px 14px;
margin:8px 0 2px}
.legend dl div{display:contents}
.legend dt{font-weight:600;white-space:nowrap}
.legend dd{margin:0}
@media (max-width:1400px) and (min-width:761px){.charts{flex-direction:column;gap:6px}}
@media (max-width:760px){
body{padding:10px}
.pool{padding:12px}
table.backends thead,table.sources thead{display:none}
caption{display:block;padding:0 0 2px}
table.backends,table.backends tbody,table.sources,table.sources tbody{display:block}
table.backends tr,table.sources tr{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));
gap:4px 12px;padding:10px 0;border-bottom:1px solid var(--line)}
table.backends tr:last-child,table.sources tr:last-child{border-bottom:0}
table.backends td,table.sources td{display:block;border:0;padding:2px 0;text-align:left;
min-width:0}
table.backends td::before,table.sources td::before{content:attr(data-label);display:block;
color:var(--muted);font-size:11px}
table.backends td:first-child,table.sources td:first-child,td.trend{grid-column:1/-1}
td.state,td.check,table.sources td.wide{grid-column:span 2}
table.sources td.full{grid-column:1/-1}
.url{min-width:0;max-width:none}
td.check{min-width:0;max-width:none}
td.age{white-space:normal}
table.backends td:first-child::before,table.sources td:first-child::before{display:none}
.charts{flex-wrap:wrap}
.charts figure{flex:1 1 140px;min-width:0}
.spark{width:100%}
.legend{padding:10px 12px}
.legend dl{grid-template-columns:minmax(0,1fr);gap:0}
.legend dd{margin-bottom:6px}
}
""".replace("\n", "")
