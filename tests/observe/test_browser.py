"""The status page as a person sees it: loaded from a real server in headless Chromium after a
backend dies and after it returns, text from configuration and the network shown as text, and
screenshots (desktop and a 390 px phone) saved as test artifacts (their paths are printed)."""

from __future__ import annotations

import html
import pathlib
import random
import re

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer as CoreBalancer
from lbmiddleware.observe import History, snapshot
from lbmiddleware.observe.page import render

from ..conftest import FakeClock
from ..support import chromium
from ..support.waiting import wait_for
from .test_app import serve_asgi, serve_wsgi
from .test_snapshot import StillWatcher

pytestmark = pytest.mark.browser

CHECKS = {"health_check": "/", "health_check_interval": 0.05, "health_check_fall": 1,
          "health_check_rise": 2}
PHONE = {"width": 390, "height": 844}


def rows(dom: str) -> dict[str, str]:
    """Each backend row's text as rendered, by the backend's URL (its first cell)."""
    found = {}
    for row in re.findall(r'(?s)<tr class="state-.*?</tr>', dom):
        text = chromium.visible_text(row)
        found[text.split()[0]] = text
    return found


def state_of(pool, url: str) -> str:
    return {row["url"]: row["state"] for row in pool.stats()}[url]


def save(name: str, tmp_path: pathlib.Path, url: str) -> list[pathlib.Path]:
    """A desktop and a phone screenshot of ``url`` in the test's folder; paths printed."""
    shots = [chromium.screenshot(url, tmp_path / f"{name}-desktop.png", width=1280, height=720),
             chromium.screenshot(url, tmp_path / f"{name}-phone.png", **PHONE)]
    for shot in shots:
        assert shot.stat().st_size > 5000            # a picture, not an empty file
        print(f"screenshot: {shot}")
    return shots


def test_chromium_shows_a_killed_backend_down_and_then_back_up(servers, tmp_path):
    a, b, c = servers("a"), servers("b"), servers("c")
    with lb.Balancer([a.url, b.url, c.url], **CHECKS) as pool, \
            serve_asgi(lb.status_app({"orders": pool})) as port, requests.Session() as session:
        session.mount("http://orders/", lb.LoadBalancingAdapter(balancer=pool))
        for _ in range(30):
            assert session.get("http://orders/x", timeout=5).status_code == 200
        page = f"http://127.0.0.1:{port}/status"
        shown = rows(chromium.dump_dom(page))
        assert set(shown) == {a.url, b.url, c.url}
        assert all(" UP " in text for text in shown.values()), shown
        assert "10 " in shown[a.url]                                 # its requests

        b.stop()
        assert wait_for(lambda: state_of(pool, b.url) == "down")
        shown = rows(chromium.dump_dom(page))
        assert re.search(r"\bDOWN\b", shown[b.url]), shown[b.url]
        assert "connection refused" in shown[b.url]            # its last check
        assert " UP " in shown[a.url] and " UP " in shown[c.url]
        save("killed", tmp_path, page)

        b.start()                                   # back on its port
        assert wait_for(lambda: state_of(pool, b.url) == "healthy")
        shown = rows(chromium.dump_dom(page))
        assert all(" UP " in text for text in shown.values()), shown
        assert "DOWN" not in shown[b.url]


def test_html_in_a_backend_url_and_a_source_error_is_shown_as_text(servers, tmp_path):
    a = servers("a")
    hostile_url = a.url + '/<script>document.title="owned"</script><b>bold</b>'
    error = '<img src=x onerror="document.title=1"><b>SERVFAIL</b> & more'
    watcher = StillWatcher("dns+http://orders.test:8080", "http://127.0.0.2:8080")
    watcher.status.last_error = error

    class Pool(lb.Balancer):
        def watcher(self, source):
            return watcher

    with Pool([hostile_url, "dns+http://orders.test:8080"]) as pool, \
            serve_wsgi(lb.status_wsgi_app(pool)) as port:
        page = f"http://127.0.0.1:{port}/status"
        dom = chromium.dump_dom(page)
        body = dom[dom.index("<body"):]
        assert "<script" not in dom and "<img" not in dom and "<b>" not in body
        assert "<title>lbmiddleware status</title>" in dom     # no script ran
        text = chromium.visible_text(dom)
        assert hostile_url in text                              # printed as it is
        assert error in text
        assert html.escape(hostile_url, quote=False) in dom     # as text in the DOM
        save("escaped", tmp_path, page)


def realistic_pool() -> tuple[CoreBalancer, History]:
    """Ten minutes of a pool of three, on a fake clock: :8081 steady; :8082 slowing down from
    minute 6, then refusing connections (ejected, its checks failing); :8083 down for 40 s at
    minute 8, back and in slow start. The picture in docs/status.png (loopback addresses,
    as everything this project runs; nothing listens on them: the clock and the results are
    made up)."""
    clock = FakeClock(0.0)
    noise = random.Random(7)
    a, b, c = "http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083"
    pool = CoreBalancer([a, b, c], "latency", timer=clock, rng=random.Random(1),
                        health_check="/healthz", slow_start=120.0, max_fails=3,
                        fail_timeout=30.0)
    history = History(pool, timer=clock)
    for step in range(121):
        t = step * 5.0
        for second in range(5):
            for url in (a, b, c):
                down = (url == c and 500 <= t < 540) or (url == b and t >= 585)
                pool.report_probe(url, not down, "connection refused" if down else "status 200")
            if t == 585 and second == 0:        # b refuses three in a row: ejected
                for _ in range(3):
                    pool.report(pool.pick(exclude=[a, c]), ok=False)
            for _ in range(24):
                backend = pool.pick()
                if backend.url == a:
                    pool.report(backend, latency=noise.gauss(0.012, 0.002), status=200)
                elif backend.url == b:
                    slow = 0.016 + min(max(t - 380, 0), 150) / 150 * 0.03
                    if t >= 540 and noise.random() < 0.15:
                        pool.report(backend, ok=False, latency=slow, status=503)
                    else:
                        pool.report(backend, latency=abs(noise.gauss(slow, slow / 5)),
                                    status=200)
                elif 495 <= t < 540:
                    pool.report(backend, ok=False)
                else:
                    pool.report(backend, latency=abs(noise.gauss(0.014, 0.003)), status=200)
            clock.advance(1.0)
        history.sample(clock.now)
    return pool, history


def test_a_realistic_pool_reads_well_on_a_desktop_and_a_phone(tmp_path):
    pool, history = realistic_pool()
    file = tmp_path / "status.html"
    file.write_text(render(snapshot({"orders": pool}, history=lambda _: history)))
    text = chromium.visible_text(chromium.dump_dom(file.as_uri()))
    assert re.search(r"http://127\.0\.0\.1:8082 ejected 1\ds left · DOWN ", text), text
    assert re.search(r"http://127\.0\.0\.1:8083 slow start \d\d%", text), text
    assert re.search(r"http://127\.0\.0\.1:8081 UP", text), text
    assert "usable 2 of 3" in text and "connection refused" in text
    # the budget's window: 9 whole seconds of 24 new requests and the current one, empty yet;
    # 20% of 216, and 10 a second over 10 s
    assert "retry budget 143 left · 0 refused (20% + 10/s over 10s)" in text
    assert "What the page shows" in text and "policy sees" in text
    save("realistic", tmp_path, file.as_uri())
    # docs/status.png: this page at 1280 px, twice the pixels for a sharp picture
    shot = chromium.screenshot(file.as_uri(), tmp_path / "status.png", width=1280, height=670,
                               scale=2)
    print(f"screenshot: {shot} (docs/status.png)")


def test_a_phone_never_scrolls_the_page_or_a_table_sideways():
    pool, history = realistic_pool()
    page = render(snapshot({"orders": pool}, history=lambda _: history))
    assert chromium.sideways_overflow(page, PHONE["width"]) == 0
    assert chromium.sideways_overflow(page, 1280) == 0              # nor a laptop
    opened = page.replace('<details class="legend">', '<details class="legend" open>')
    assert opened != page                                           # with the legend open
    assert chromium.sideways_overflow(opened, PHONE["width"]) == 0
    assert chromium.sideways_overflow(opened, 1280) == 0
    long_url = "http://127.0.0.1:8081/" + "a-long-path-segment/" * 6   # wraps, both widths
    long = opened.replace("http://127.0.0.1:8081", long_url)
    assert long_url in long
    assert chromium.sideways_overflow(long, PHONE["width"]) == 0
    assert chromium.sideways_overflow(long, 1280) == 0
    # without the phone's layout the table would scroll: the measure sees it
    desktop_only = page.replace("@media (max-width:760px)", "@media (max-width:1px)")
    assert chromium.sideways_overflow(desktop_only, PHONE["width"]) > 300
