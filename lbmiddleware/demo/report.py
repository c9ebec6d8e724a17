"""The demo's HTML report: one self-contained file (inline CSS and SVG, no JavaScript, no
external assets) to open in any browser, also offline or mailed as an attachment.

Per policy: each backend's share of the answers over the run with the kill marked, the
latency distribution with p50 and p99, what to look for, and the table the terminal showed.
Above them the words a newcomer needs (:mod:`.glossary`) and the summary. Every value written
is escaped: backend names and URLs come from outside this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .charts import latency_histogram, share_chart
from .glossary import WHAT_TO_SEE, explained
from .notes import chart_notes, gateway_view, table_notes
from .results import PolicyResult, Sample

__all__ = ["render_report", "write_report", "colours_for", "NO_ANSWER"]

NO_ANSWER = "no answer"          # the series of requests that got no backend's answer
COLOURS = {"fast": "#2a9d8f", "slow": "#e9a23b", "flaky": "#d1495b", NO_ANSWER: "#8d99ae"}
PALETTE = ("#264653", "#7b2cbf", "#588157", "#bc6c25", "#457b9d")
MAX_COLUMNS = 24                 # time buckets of the share chart
MIN_PER_COLUMN = 10              # fewer buckets for a short run, so a share means something

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433;
margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px}
h1{margin:.2em 0}h2{margin:.5em 0 .3em}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:8px 18px 14px;
margin:14px 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:.5em 0}
dt{font-weight:600}dd{margin:0}
.words dt{color:#5a2a82}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:14px}
@media (max-width:820px){.charts{grid-template-columns:1fr}}
@media (max-width:600px){dl{grid-template-columns:1fr}dd{margin-bottom:.4em}
section{padding:6px 10px 10px}main{padding:8px}}
.scroll{overflow-x:auto}
figure{margin:0}figcaption{font-size:13px;color:#4a5468}
svg{width:100%;height:auto;font:12px system-ui,sans-serif;fill:#1d2433}
svg .grid{stroke:#e3e6eb}svg .axis{stroke:#6b7385}
svg .marker{stroke:#1d2433;stroke-width:1.5;stroke-dasharray:5 3}
svg .marker-label{font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #e3e6eb}
th:first-child,td:first-child{text-align:left}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}
.note{font-size:13px;background:#fff7e0;border-left:3px solid #e9a23b;padding:4px 8px;
margin:6px 0}
.see{font-style:italic}.ok{color:#1b7a43}.bad{color:#b00020}
"""


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """A colour per series: the demo's backends keep theirs, others take the palette's."""
    colours, spare = {}, iter(PALETTE * (len(names) // len(PALETTE) + 1))
    for name in names:
        colours[name] = COLOURS.get(name) or next(spare)
    return colours


def _names(result: PolicyResult) -> list[str]:
    """The result's backends in table order, then "no answer" if some requests got none."""
    names = [row.name for row in result.rows]
    if any(not s.backend for s in result.samples):
        names.append(NO_ANSWER)
    return names


def _columns(result: PolicyResult) -> list[dict[str, int]]:
    count = max(1, min(MAX_COLUMNS, len(result.samples) // MIN_PER_COLUMN))
    seconds = max(result.seconds, 1e-9)
    columns: list[dict[str, int]] = [{} for _ in range(count)]
    for sample in result.samples:
        column = columns[min(int(count * sample.at / seconds), count - 1)]
        name = sample.backend or NO_ANSWER
        column[name] = column.get(name, 0) + 1
    return columns


def _shares(samples: Sequence[Sample], names: Sequence[str]) -> str:
    """``fast 33%, slow 33%, flaky 34%``."""
    total = len(samples) or 1
    counts = {name: 0 for name in names}
    for sample in samples:
        counts[sample.backend or NO_ANSWER] = counts.get(sample.backend or NO_ANSWER, 0) + 1
    return ", ".join(f"{name} {100 * counts[name] / total:.0f}%" for name in names)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _policy_section(result: PolicyResult, low: float, high: float,
                    settings: Mapping[str, Any]) -> str:
    names = _names(result)
    colours = colours_for(names)
    policy = escape(result.policy)
    markers = ([] if result.killed_at is None
               else [(result.killed_at, "flaky killed")])
    share = share_chart(_columns(result), names, result.seconds, colours,
                        f"{result.policy}: each backend's share of the answers over time",
                        markers)
    latencies: dict[str, list[float]] = {}
    for sample in result.samples:
        latencies.setdefault(sample.backend or NO_ANSWER, []).append(sample.latency)
    percentiles = [(name, value) for name, value in (("p50", result.p50), ("p99", result.p99))
                   if value is not None]
    histogram = latency_histogram(latencies, names, colours,
                                  f"{result.policy}: latency distribution", low, high,
                                  percentiles)
    before = [s for s in result.samples if not s.after_kill]
    after = [s for s in result.samples if s.after_kill]
    bucket = result.seconds / max(len(_columns(result)), 1)
    kill_text = ("" if result.killed_at is None else
                 f" The dashed line is the moment the flaky backend was killed "
                 f"({result.killed_at:.2f} s in).")
    rows = "".join(
        f"<tr><td><span class=\"swatch\" style=\"background:{escape(colours[row.name])}\">"
        f"</span>{escape(row.name)}</td>"
        f"<td>{100 * row.served / max(result.requests, 1):.1f}%</td><td>{row.served}</td>"
        f"<td>{_ms(row.p50)}</td><td>{_ms(row.p99)}</td><td>{row.failures}</td>"
        f"<td>{row.ejections}</td><td>{escape(gateway_view(row))}</td></tr>"
        for row in result.rows)
    errors = ('<span class="ok">no errors</span>' if not result.errors else
              f'<span class="bad">{result.errors} errors</span> ('
              + escape(", ".join(f"{k}: {v}" for k, v in sorted(result.error_kinds.items())))
              + ")")
    under_chart, under_table = ("".join(f'<p class="note">{escape(note)}.</p>' for note in said)
                                for said in (chart_notes(result, settings),
                                             table_notes(result, settings)))
    sticky = ""
    if result.sticky is not None:
        kept, steady, moved = result.sticky
        sticky = (f"<p>Sticky: {kept} of {steady} clients of fast and slow stayed on their "
                  f"backend throughout; the flaky backend's {moved} clients moved when it "
                  f"failed.</p>")
    return f"""<section class="policy" id="policy-{policy}">
<h2>{policy}</h2>
<p class="see">What to see: {escape(WHAT_TO_SEE.get(result.policy, ""))}.</p>
<p>{result.requests} GET requests in {result.seconds:.1f} s, clients saw {errors}.
Shares before the kill: {escape(_shares(before, names))};
after: {escape(_shares(after, names))}.</p>
<div class="charts">
<figure>{share}<figcaption>Who answered: each column is {bucket:.2f} s of the run, split by the
backends' shares of the answers in it.{kill_text}</figcaption>{under_chart}</figure>
<figure>{histogram}<figcaption>How long the clients waited: the share of requests per latency
range, coloured by the backend that answered; the dashed lines are the p50 and the p99.
</figcaption></figure>
</div>
<div class="scroll"><table><thead><tr><th>backend</th><th>share</th><th>served</th>
<th>p50 ms</th><th>p99 ms</th>
<th>failed attempts</th><th>ejections</th><th>gateway's view at the end</th></tr></thead>
<tbody>{rows}</tbody></table></div>
{under_table}{sticky}</section>
"""


def _summary(results: Sequence[PolicyResult]) -> str:
    names = [row.name for row in results[0].rows] if results else []
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    body = []
    for r in results:
        shares = "".join(f"<td>{100 * row.served / max(r.requests, 1):.0f}%</td>"
                         for row in r.rows)
        body.append(f'<tr><td><a href="#policy-{escape(r.policy)}">{escape(r.policy)}</a></td>'
                    f"{shares}<td>{_ms(r.p50)}</td><td>{_ms(r.p99)}</td><td>{r.errors}</td>"
                    f"<td>{sum(row.ejections for row in r.rows)}</td></tr>")
    total = sum(r.requests for r in results)
    errors = sum(r.errors for r in results)
    return ('<div class="scroll"><table><thead><tr><th>policy</th>'
            f"{head}<th>p50 ms</th><th>p99 ms</th>"
            f"<th>errors</th><th>ejections</th></tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table></div><p>GET errors seen by clients: {errors} of {total}.</p>")


def render_report(results: Sequence[PolicyResult], setup: Sequence[tuple[str, str]],
                  settings: Mapping[str, Any]) -> str:
    """The report's HTML. ``setup``: (label, text) lines describing the run; ``settings``:
    the gateway's, quoted by the explanations."""
    latencies = [s.latency for r in results for s in r.samples if s.latency > 0]
    low = min(latencies, default=0.0001)
    high = max(latencies, default=1.0)
    setup_html = "".join(f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>"
                         for label, text in setup)
    words = "".join(f"<dt>{escape(term)}</dt><dd>{escape(line)}</dd>"
                    for term, line in explained(settings))
    sections = "".join(_policy_section(r, low, high, settings) for r in results)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>lbmiddleware demo report</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>lbmiddleware demo</h1>
<p>Three backends behind one load balancer (the gateway), which chooses a backend for every
request by a <em>policy</em>. Each policy had its own run, and halfway through each run one
backend was killed: the charts show who answered before and after, and how long the clients
waited.</p>
<section class="words"><h2>Words used here</h2><dl>{words}</dl></section>
<section class="setup"><h2>The run</h2><dl>{setup_html}</dl></section>
<section class="summary"><h2>Summary</h2>{_summary(results)}</section>
{sections}
</main>
</body>
</html>
"""


def write_report(results: Sequence[PolicyResult], path: str,
                 setup: Sequence[tuple[str, str]], settings: Mapping[str, Any]) -> str:
    """Write :func:`render_report` to ``path`` (its folder made if missing); returns the
    absolute path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(render_report(results, setup, settings))
    return path

