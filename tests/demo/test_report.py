"""The demo's HTML report, rendered from results made here (the demo's runs write it in
test_demo.py): self-contained, well formed, a chart per policy with the kill and the
percentiles marked, the explanations, and every name escaped."""

from __future__ import annotations

import html.parser
import re
import xml.etree.ElementTree as ET

from lbmiddleware.demo import report
from lbmiddleware.demo.charts import LEFT
from lbmiddleware.demo.glossary import explained
from lbmiddleware.demo.results import BackendRow, PolicyResult, Sample, percentile
from lbmiddleware.demo.runner import DEMO_SETTINGS, format_policy

SVG = "{http://www.w3.org/2000/svg}"
SETUP = [("backends", "fast http://127.0.0.1:1, slow http://127.0.0.1:2")]


def _result(policy: str = "round_robin", names=("fast", "slow", "flaky"),
            kill_at: float = 1.0) -> PolicyResult:
    """Two seconds of answers every 10 ms: three from the first name (in 1 ms), one from the
    second (20 ms) and, before ``kill_at``, one from the third (20 ms)."""
    samples = []
    for tick in range(200):
        at = tick / 100
        for index, name in enumerate(names):
            if index == 2 and at >= kill_at:
                continue
            for _ in range(3 if index == 0 else 1):
                samples.append(Sample("198.51.100.1", 200, name, 0.001 if index == 0 else 0.020,
                                      at >= kill_at, at))
    latencies = [s.latency for s in samples]
    rows = [BackendRow(name, sum(1 for s in samples if s.backend == name), 0.001, 0.002, 0, 0,
                       "healthy") for name in names]
    return PolicyResult(policy, len(samples), len(samples), 2.0, 0, 0,
                        sum(1 for s in samples if s.after_kill), percentile(latencies, 0.5),
                        percentile(latencies, 0.99), rows, samples=samples, killed_at=kill_at)


def _document(results) -> ET.Element:
    text = report.render_report(results, SETUP, DEMO_SETTINGS)
    assert text.startswith("<!DOCTYPE html>")
    return ET.fromstring(text.removeprefix("<!DOCTYPE html>"))


class _Balance(html.parser.HTMLParser):
    """Fails on an end tag that does not close the innermost open element."""

    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-3:])
        self.open.pop()


def _sections(document: ET.Element) -> dict[str, ET.Element]:
    return {section.get("id"): section for section in document.iter("section")
            if section.get("class") == "policy"}


def _x(line: ET.Element) -> float:
    return float(line.get("x1"))


def test_the_report_is_one_well_formed_html_file_with_nothing_to_fetch():
    text = report.render_report([_result(), _result("latency")], SETUP, DEMO_SETTINGS)
    parser = _Balance()
    parser.feed(text)
    parser.close()
    assert parser.open == [] and parser.tags[:2] == ["html", "head"]
    assert "svg" in parser.tags
    ET.fromstring(text.removeprefix("<!DOCTYPE html>"))      # strict: every element closed
    # Self-contained and static: no script, no external file (only the SVG namespace URI).
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)=["'](?!#)""", text)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg|127\.0\.0\.1)", text)


def test_each_policy_has_a_share_chart_with_the_kill_and_a_latency_chart_with_percentiles():
    sections = _sections(_document([_result("round_robin"), _result("latency", kill_at=0.5)]))
    assert list(sections) == ["policy-round_robin", "policy-latency"]
    for policy, kill_at in (("round_robin", 1.0), ("latency", 0.5)):
        share, latency = sections[f"policy-{policy}"].iter(f"{SVG}svg")
        [kill] = [line for line in share.iter(f"{SVG}line")
                  if "kill-marker" in line.get("class", "").split()]
        assert "flaky killed" in [t.text for t in share.iter(f"{SVG}text")]
        # The flaky backend's columns all end before the marker, the others' run past it.
        columns = {}
        for rect in share.iter(f"{SVG}rect"):
            title = rect.find(f"{SVG}title")
            if title is not None:
                name = title.text.split(":")[0]
                columns.setdefault(name, []).append(float(rect.get("x")) + float(rect.get("width")))
        assert max(columns["flaky"]) <= _x(kill) + 1
        assert max(columns["fast"]) > _x(kill) + 50 and max(columns["slow"]) > _x(kill) + 50
        plot_right = max(columns["fast"])
        assert abs(_x(kill) - (LEFT + (plot_right - LEFT) * kill_at / 2.0)) < 30

        lines = {cls: line for line in latency.iter(f"{SVG}line")
                 for cls in line.get("class", "").split() if cls in ("p50", "p99")}
        assert set(lines) == {"p50", "p99"}
        assert _x(lines["p50"]) < _x(lines["p99"])
        labels = [t.text for t in latency.iter(f"{SVG}text")]
        assert any(label.startswith("p50 ") for label in labels)
        assert any(label.startswith("p99 20 ms") for label in labels)


def test_the_latency_chart_puts_a_slow_backend_right_of_a_fast_one():
    [section] = _sections(_document([_result()])).values()
    _, latency = section.iter(f"{SVG}svg")
    xs: dict[str, list[float]] = {}
    for rect in latency.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is not None:
            xs.setdefault(title.text.split(":")[0], []).append(float(rect.get("x")))
    assert max(xs["fast"]) < min(xs["slow"])
    assert xs["slow"] == xs["flaky"]          # same latency, same bin, stacked


def test_the_report_explains_p50_p99_ejection_and_the_latency_policy():
    text = " ".join(report.render_report([_result()], SETUP, DEMO_SETTINGS).split())
    for term, line in explained(DEMO_SETTINGS):
        assert term in text and line in text
    assert "after 3 failures in a row" in text and "(2 s here" in text


def test_names_and_urls_are_escaped_everywhere():
    evil = '<img src=x onerror="alert(1)">&'
    result = _result(names=("fast", evil, "flaky"))
    result.error_kinds = {"<b>HTTP 502</b>": 1}
    result.errors = 1
    text = report.render_report([result], [("backends", evil)], DEMO_SETTINGS)
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in text
    ET.fromstring(text.removeprefix("<!DOCTYPE html>"))
    policy = _result(policy='"><script>x</script>')
    text = report.render_report([policy], SETUP, DEMO_SETTINGS)
    assert "<script" not in text and "&lt;script&gt;" in text
    ET.fromstring(text.removeprefix("<!DOCTYPE html>"))


def test_write_report_makes_its_folder_and_returns_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = report.write_report([_result()], "out/demo.html", SETUP, DEMO_SETTINGS)
    assert path == str(tmp_path / "out" / "demo.html")
    with open(path, encoding="utf-8") as file:
        assert file.read() == report.render_report([_result()], SETUP, DEMO_SETTINGS)


# -- what puzzled a newcomer: a share at 0 before the kill, a dead backend "healthy" -------

def _section_text(result: PolicyResult) -> str:
    [section] = _sections(_document([result])).values()
    return " ".join("".join(section.itertext()).split())


def test_an_ejection_before_the_kill_is_explained_under_the_share_chart():
    result = _result("random", kill_at=1.0)
    result.ejected_at = {"flaky": [0.42, 0.81, 1.05]}     # two of its own, then the kill's
    text = _section_text(result)
    assert ("flaky was ejected before the kill (0.42 s and 0.81 s into the run): 20% of its "
            "requests fail, and 3 failures in a row eject a backend, so its share falls to 0 "
            "for a while") in text
    [section] = _sections(_document([result])).values()
    figure = next(section.iter("figure"))
    assert "ejected before the kill" in "".join(figure.itertext())   # under the chart itself
    result.ejected_at = {"flaky": [1.05]}                  # the kill's only: nothing to explain
    assert "was ejected before the kill" not in _section_text(result)


def test_a_killed_backend_the_gateway_still_counts_healthy_is_explained():
    result = _result("latency", kill_at=1.0)
    result.rows[2] = BackendRow("flaky", 0, None, None, 1, 0, "healthy", killed=True)
    text = _section_text(result)
    assert "killed, still healthy" in text and "killed, healthy" not in text
    note = ("flaky was killed but never ejected: the latency policy stopped sending to it "
            "after a failure (a failure counts as a 5 s sample), before it failed 3 times in "
            "a row, so the gateway never learned it was dead; active health checks "
            "(LB_HEALTH_CHECK) would have marked it DOWN")
    assert note in text
    terminal = " ".join(format_policy(result).split())
    assert "killed, still healthy" in terminal and note in terminal
    result = _result("round_robin", kill_at=1.0)
    result.rows[2] = BackendRow("flaky", 10, None, None, 5, 1, "ejected", killed=True)
    assert "killed, ejected" in _section_text(result)
    assert "never ejected" not in _section_text(result) + format_policy(result)
