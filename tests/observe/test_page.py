"""The status page's HTML: what it is made of (a self-refreshing page for a phone, no script),
every value escaped, the charts drawn from the history, and the words for ages and times."""

from __future__ import annotations

import html
import pathlib
import re

import pytest

from lbmiddleware.core.balancer import Balancer as CoreBalancer
from lbmiddleware.observe import History, snapshot
from lbmiddleware.observe.page import age, duration, render, state_text

from ..conftest import FakeClock
from ..support.chromium import visible_text

HOSTILE = 'http://127.0.0.1:1/<script>alert("x")</script><b>bold</b>'
ERROR = "<b>refused</b> & <img src=x onerror=alert(1)>"


def page_of(pool, clock, **options):
    history = History(pool, timer=clock)
    return render(snapshot(pool, history=lambda _: history), **options)


def a_snapshot(**source):
    """A hand-made snapshot: the page is a function of it, whatever wrote it."""
    return {"schema": 1, "time": "2026-12-07T08:00:00Z", "ready": True, "pools": [{
        "name": "<i>orders</i>", "policy": "latency", "panic": False, "panic_age": None,
        "members": 1, "usable": 1, "draining": 0, "retries": 0, "health_check": False,
        "slow_start": 0,
        "sources": [{"source": "dns+http://<b>svc</b>:80", "kind": "dns", "backends": 1,
                     "last_success_ago": 2.0, "last_error": ERROR, "last_error_ago": 60.0,
                     "next_refresh_in": 3.2, "failing_for": None, "partial": None,
                     **source}],
        "backends": [{"url": HOSTILE, "state": "healthy", "weight": 1, "priority": 0,
                      "effective_weight": 1, "source": "dns+http://<b>svc</b>:80",
                      "health_check": {"status": "up", "last": ERROR, "checked_ago": 1.0},
                      "history": {"interval": 5.0, "requests_per_second": [1.0],
                                  "latency_ms": [2.0]}}]}]}


def test_a_page_that_refreshes_fits_a_phone_and_runs_no_script():
    clock = FakeClock()
    page = page_of(CoreBalancer(["http://a:1", "http://b:1"], timer=clock), clock, refresh=7.5)
    assert page.startswith("<!doctype html>")
    assert '<meta http-equiv="refresh" content="7.5">' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<script" not in page.lower() and "javascript:" not in page.lower()
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page)      # no event handler attribute
    assert "@media (max-width:760px)" in page                # the stacked layout
    assert page.count('data-label="State"') == 2             # one row per backend
    assert '<a href="status.json">' in page and '<a href="metrics">' in page


def test_a_backend_url_with_html_in_it_is_printed_as_text():
    clock = FakeClock()
    pool = CoreBalancer([HOSTILE], timer=clock)
    page = page_of(pool, clock)
    assert "<script>" not in page and "<b>bold" not in page
    assert html.escape(HOSTILE) in page


def test_names_sources_and_error_texts_are_escaped_too():
    page = render(a_snapshot())
    for text in (ERROR, "<i>orders</i>", "dns+http://<b>svc</b>:80", HOSTILE):
        assert html.escape(text) in page
    assert "<img" not in page and "<script" not in page and "<i>orders" not in page
    assert "<b>svc" not in page and "<b>refused" not in page


def test_a_failing_source_says_for_how_long_and_a_partial_failure_is_a_warning():
    page = render(a_snapshot(failing_for=75.0))
    assert "failing for 1m15s" in page
    assert "<caption>Sources</caption>" in page and "<caption>Backends</caption>" in page
    page = render(a_snapshot(partial="AAAA: timed out", last_error="AAAA: timed out"))
    assert "partly failing" in page and "AAAA: timed out" in page
    page = render(a_snapshot(last_error=None, last_error_ago=None))
    assert "answering" in page and "in 4s" in page and "2s ago" in page


def test_the_charts_are_inline_svg_with_gaps_where_a_backend_was_not_a_member():
    clock = FakeClock()
    pool = CoreBalancer(["http://a:1", "http://b:1"], timer=clock, drain_timeout=0)
    history = History(pool, timer=clock)
    for n in range(6):
        if n == 2:
            pool.update(["http://a:1"])                     # b leaves for an interval
        if n == 3:
            pool.update(["http://a:1", "http://b:1"])
        for url in ("http://a:1", "http://b:1"):
            backend = next((b for b in pool.backends if b.url == url), None)
            if backend is not None:
                pool.report(pool.pick(exclude=[x for x in pool.backends if x is not backend]),
                            latency=0.01 * (n + 1), status=200)
        if n == 4:                                          # one failure of a's: refused
            pool.report(pool.pick(exclude=[b for b in pool.backends if b.url != "http://a:1"]),
                        ok=False)
        history.sample(n * 5.0)
    page = render(snapshot(pool, history=lambda _: history))
    a_row, b_row = page.split('<tr class="state-')[1:3]
    assert a_row.count("<svg") == b_row.count("<svg") == 2  # request rate, latency
    assert a_row.count('<polyline class="req"') == 1
    assert a_row.count('<polyline class="fail"') == 1       # only where it failed: in red
    assert '<polyline class="fail"' not in b_row            # no failure, no red line
    assert b_row.count('<polyline class="req"') == 2        # split where it was gone
    assert "<span>max 60.0</span>" in a_row                 # ms: the last interval's latency
    points = re.search(r'<polyline class="req" points="([^"]+)"', a_row).group(1).split()
    assert len(points) == 5 and points[-1].startswith("4,")       # across five intervals
    assert 'aria-label="requests per second (failures in red) over the last 25s' in a_row


def test_a_backend_without_history_says_so_and_one_without_traffic_draws_flat_charts():
    clock = FakeClock()
    pool = CoreBalancer(["http://a:1"], timer=clock)
    history = History(pool, timer=clock)
    page = render(snapshot(pool, history=lambda _: history))
    assert "collecting: charts from the second sample (5s apart)" in page
    assert "<svg" not in page
    history.sample(0.0)
    history.sample(5.0)
    page = render(snapshot(pool, history=lambda _: history))
    assert page.count("<svg") == 2 and page.count("<span>none</span>") == 2
    assert '<polyline class="req"' in page                  # a flat line: no requests


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.9, "0s"), (8, "8s"), (59.9, "59s"), (60, "1m"), (192, "3m12s"),
    (599, "9m59s"), (600, "10m"), (3599, "59m"), (3600, "1h"), (7300, "2h"),
    (86400 * 3, "3d"), (None, "?"), (float("nan"), "?"), (-3, "0s")])
def test_durations_are_short(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0012345, "1.23 ms"), (0.00999999, "10.0 ms"), (0.0125, "12.5 ms"),
    (0.09996, "100 ms"), (0.2, "200 ms"), (0.9997, "1.00 s"), (2.714, "2.71 s")])
def test_latencies_keep_their_digits_at_each_step(seconds, text):
    # (a latency just below 10 ms was printed "10.00 ms" beside its neighbours' "10.0 ms")
    assert text in visible_text(backend_row(render(with_backend(latency=seconds))))


def test_time_left_rounds_up_and_ages_say_ago():
    assert duration(7.1, up=True) == "8s"
    assert age(12.7) == "12s ago" and age(200) == "3m20s ago" and age(1800) == "30m ago"
    assert age(0.2) == "just now" and age(None) == "never"


# -- what a newcomer misread (issue 11's user test) ----------------------------------------

def backend_row(page: str) -> str:
    return page.split('<tr class="state-')[1].split("</tr>")[0]


def with_backend(policy: str = "latency", **row) -> dict:
    snap = a_snapshot()
    snap["pools"][0]["policy"] = policy
    snap["pools"][0]["backends"][0].update(row)
    return snap


def test_latency_is_labelled_as_the_time_to_the_first_byte_everywhere_it_is_printed():
    page = render(with_backend(latency=0.2))
    assert "<th class=\"num\">Time to<br>first byte</th>" in page
    assert 'data-label="Time to first byte"' in page          # the phone's label
    assert ">Latency<" not in page and 'data-label="Latency"' not in page
    assert "mean time to first byte in milliseconds" in page   # the chart's label
    assert "<span>ms to 1st byte</span>" in page                # and its caption
    assert "200 ms" in backend_row(page)


def test_the_latency_policys_estimate_is_shown_under_that_policy_only_and_says_whose():
    shown = visible_text(backend_row(render(with_backend("latency", latency=0.025,
                                                        latency_estimate=0.765))))
    assert "25.0 ms policy sees 765 ms" in shown
    for policy in ("round_robin", "random", "ip_hash", "least_conn"):
        shown = visible_text(backend_row(render(with_backend(policy, latency=0.025,
                                                             latency_estimate=0.765))))
        assert "25.0 ms" in shown and "765" not in shown and "policy sees" not in shown


def test_an_ejected_backend_that_its_checks_found_down_shows_both():
    row = {"state": "ejected", "ejection_left": 20.2,
           "health_check": {"status": "down", "rise": 0, "passes_to_up": 2}}
    assert state_text(row) == ("ejected 21s left · DOWN", "bad")
    row["health_check"] = {"status": "down", "rise": 1, "passes_to_up": 1}
    assert state_text(row) == ("ejected 21s left · DOWN 1/2", "bad")
    row["health_check"] = {"status": "up", "fall": 0, "fails_to_down": 3}
    assert state_text(row) == ("ejected 21s left", "bad")     # its checks pass: ejected only
    page = render(with_backend(**{**row, "health_check": {
        "status": "down", "rise": 0, "passes_to_up": 2, "last": "connection refused"}}))
    assert "ejected 21s left · DOWN" in visible_text(backend_row(page))


def test_the_changed_cell_says_what_it_has_been_for_how_long():
    for state, extra, text in (
            ("healthy", {}, "up for 55s"), ("ejected", {"ejection_left": 3.0}, "ejected for 55s"),
            ("down", {}, "down for 55s"), ("probation", {}, "probation for 55s"),
            ("slow_start", {"ramp": 0.5}, "slow start for 55s"),
            ("draining", {"drain_left": 3.0}, "draining for 55s")):
        shown = backend_row(render(with_backend(state=state, state_age=55.2, **extra)))
        assert f'data-label="Changed">{text}</td>' in shown, (state, shown)


def test_a_legend_explains_the_words_the_weight_the_ages_and_the_charts_without_script():
    page = render(a_snapshot())
    legend = page[page.index("<details"):page.index("</details>")]
    assert "<summary>" in legend and "<script" not in legend.lower()
    text = re.sub(r"<[^>]+>", " ", legend)
    for words in ("UP 1/3 failing", "DOWN 1/2", "probation", "slow start 35%",
                  "draining, 12s left", "ejected 8s left", "Tier", "0.53 of 1", "Changed",
                  "up for 55s", "since it joined", "Time to first byte", "policy sees",
                  "req/s", "failures", "ms to 1st byte", "so far"):
        assert words in html.unescape(text), words
    assert page.index("<details") > page.rindex("</section>")   # under the pools


# -- issue 12: the retry budget, bounded load, the bandwidth policy -----------------------

BUDGET = {"ratio": 0.2, "min_per_second": 10.0, "ttl": 10.0, "requests": 812, "retries": 9,
          "available": 37.8, "exhausted_total": 3}


def with_pool(**fields) -> dict:
    snap = a_snapshot()
    snap["pools"][0].update(fields)
    return snap


def facts(page: str) -> str:
    """The pool's head and facts as rendered text."""
    return visible_text(page[page.index('<div class="pool-head">'):page.index("</dl>")])


def test_the_retry_budget_shows_what_is_left_what_it_refused_and_its_rule():
    shown = facts(render(with_pool(retry_budget=BUDGET)))
    assert "retry budget 37 left · 3 refused (20% + 10/s over 10s)" in shown
    assert "spent" not in shown
    shown = facts(render(with_pool(retry_budget={**BUDGET, "available": 0.6, "ratio": 0.05,
                                                 "min_per_second": 0.5, "ttl": 60.0})))
    assert "retry budget spent" in shown                        # beside the pool's name
    assert "retry budget 0 left · 3 refused (5% + 0.5/s over 1m)" in shown
    assert "retry budget off" in facts(render(with_pool(retry_budget=None)))
    assert "retry budget" not in facts(render(a_snapshot()))    # a snapshot without it


def test_bounded_load_is_shown_where_a_factor_acts_with_its_overflows():
    shown = facts(render(with_pool(policy="ip_hash", hash_balance_factor=125,
                                   hash_overflows_total=1742)))
    assert "bounded load 125% · 1,742 overflows" in shown
    for factor in (0, None):
        shown = facts(render(with_pool(policy="ip_hash", hash_balance_factor=factor,
                                       hash_overflows_total=0)))
        assert "bounded load" not in shown and "overflow" not in shown


def test_a_pool_of_issue_12_renders_from_a_real_snapshot():
    clock = FakeClock()
    pool = CoreBalancer(["http://a:1", "http://b:1"], "ip_hash", timer=clock,
                        hash_balance_factor=150, retry_budget=0, retry_budget_min_per_second=0)
    pool.report(pool.pick(key="k"), latency=0.01, status=200)
    assert pool.spend_retry() is False
    shown = facts(page_of(pool, clock))
    assert "retry budget spent" in shown and "0 left · 1 refused (0% + 0/s over 10s)" in shown
    assert "bounded load 150% · 0 overflows" in shown and "policy ip_hash" in shown


def test_the_bandwidth_policy_shows_the_bytes_per_second_it_balances():
    clock = FakeClock()
    pool = CoreBalancer(["http://a:1", "http://b:1"], "bandwidth", timer=clock)
    history = History(pool, timer=clock)
    history.sample(0.0)
    for backend in pool.backends * 2:
        pool.report(backend, latency=0.02, status=200, bytes_sent=10, bytes_received=15590)
    history.sample(5.0)
    page = render(snapshot(pool, history=lambda _: history))
    assert "policy bandwidth" in facts(page) and "bounded load" not in facts(page)
    shown = [visible_text(row.split("</tr>")[0]) for row in page.split('<tr class="state-')[1:]]
    assert all("0.4/s 6.2 kB/s" in row for row in shown), shown   # 2 x 15,600 B in 5 s each
    assert not any("policy sees" in row for row in shown)
    for policy in ("round_robin", "latency", "least_conn"):
        assert "B/s" not in visible_text(backend_row(render(with_backend(
            policy, bytes_per_second=6240.0))))


@pytest.mark.parametrize(("rate", "text"), [
    (0, "0 B/s"), (830.4, "830 B/s"), (12_400, "12.4 kB/s"), (3_100_000, "3.1 MB/s"),
    (250_000_000, "250 MB/s"), (1.2e9, "1.2 GB/s")])
def test_bytes_per_second_in_si_units(rate, text):
    shown = visible_text(backend_row(render(with_backend("bandwidth", bytes_per_second=rate))))
    assert text in shown


def test_the_legend_explains_the_retry_budget_and_bounded_load():
    page = render(a_snapshot())
    legend = html.unescape(re.sub(r"<[^>]+>", " ", page[page.index("<details"):]))
    for words in ("retry budget", "37 left · 3 refused", "retry budget spent", "bounded load",
                  "125% · 17 overflows", "fair share"):
        assert words in legend, words


def history_of_samples(count: int, **rate) -> dict:
    """A backend's history after ``count`` samples 5 s apart (one value fewer)."""
    values = [float(rate.get("requests", 2.0))] * max(count - 1, 0)
    return {"interval": 5.0, "requests_per_second": values,
            "failures_per_second": [0.0] * len(values), "latency_ms": [12.0] * len(values)}


def spark_points(row: str, css: str) -> list[tuple[float, float]]:
    found = re.search(rf'<polyline class="{css}" points="([^"]+)"', row)
    assert found, row
    return [tuple(map(float, point.split(","))) for point in found.group(1).split()]


def test_charts_say_collecting_before_two_samples_and_span_their_width_from_two_on():
    for count in (0, 1):
        shown = backend_row(render(with_backend(history=history_of_samples(count))))
        assert "collecting" in shown and "<svg" not in shown
    for count, so_far in ((2, "5s"), (3, "10s"), (13, "1m")):
        shown = backend_row(render(with_backend(history=history_of_samples(count))))
        width = float(re.search(r'viewBox="0 0 ([\d.]+) ', shown).group(1))
        for css in ("req", "lat"):
            xs = [x for x, _ in spark_points(shown, css)]
            assert xs[0] == 0 and xs[-1] == width, (count, css, xs)   # across the chart
        assert f"{so_far} so far" in shown
    full = backend_row(render(with_backend(history=history_of_samples(121))))
    assert "so far" not in full and spark_points(full, "req")[-1][0] == 119


def test_docs_status_md_names_every_column_of_the_page_as_the_page_does():
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "status.md").read_text(
        encoding="utf-8")
    table = doc[doc.index("| column | what it shows |"):]
    table = table[:table.index("\n\n")]
    named = {name.strip() for line in table.splitlines()[2:]
             for name in line.split("|")[1].split(",")}
    page = render(a_snapshot())
    heads = {visible_text(head) for head in re.findall(r"<th[^>]*>(.*?)</th>",
                                                       page.split('class="backends"')[1])}
    assert heads == named
    assert "response's head" in doc and "`policy sees`" in doc and "so far`" in doc
