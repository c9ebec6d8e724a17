"""The status page's HTML: what it is made of (a self-refreshing page for a phone, no script),
every value escaped, the charts drawn from the history, and the words for ages and times."""

from __future__ import annotations

import html
import re

import pytest

from lbmiddleware.core.balancer import Balancer as CoreBalancer
from lbmiddleware.observe import History, snapshot
from lbmiddleware.observe.page import age, duration, render

from ..conftest import FakeClock

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
    assert len(points) == 5 and points[-1].startswith("119,")     # the newest at the right
    assert 'aria-label="requests per second (failures in red) over the last minutes' in a_row


def test_a_backend_without_history_says_so_and_one_without_traffic_draws_empty_charts():
    clock = FakeClock()
    pool = CoreBalancer(["http://a:1"], timer=clock)
    history = History(pool, timer=clock)
    page = render(snapshot(pool, history=lambda _: history))
    assert "no samples yet" in page and "<svg" not in page
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


def test_time_left_rounds_up_and_ages_say_ago():
    assert duration(7.1, up=True) == "8s"
    assert age(12.7) == "12s ago" and age(200) == "3m20s ago" and age(1800) == "30m ago"
    assert age(0.2) == "just now" and age(None) == "never"
