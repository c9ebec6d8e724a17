"""The demo: real backends in child processes, the real gateway, a small request count."""

from __future__ import annotations

import http.client
import io
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

import lbmiddleware
from lbmiddleware.demo import runner as demo
from lbmiddleware.demo.backends import FLAKY_FAILURE_RATE, SLOW_DELAY
from lbmiddleware.demo.glossary import explained
from lbmiddleware.demo.notes import gateway_view

from .helpers import ROOT, children, refused

SVG = "{http://www.w3.org/2000/svg}"


def _demo_children() -> list[int]:
    """Processes of ours still running a demo backend."""
    return children(os.getpid(), b"lbmiddleware.demo.backends")


def _command(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)


def format_policy_of(text: str, policy: str) -> str:
    """The table a run printed for ``policy``, its notes included, as one line."""
    table = text.split(f"\n{policy}: ", 1)[1].split("\n\n", 1)[0]
    return " ".join(table.split())


def test_every_policy_gets_a_table_and_clients_see_no_get_errors_after_the_kill(tmp_path):
    out = io.StringIO()
    results = demo.run_demo(requests=150, out=out, progress=demo.Progress(enabled=False),
                            report=str(tmp_path / "report.html"))
    text = out.getvalue()

    assert [r.policy for r in results] == list(lbmiddleware.POLICIES)
    for result in results:
        assert f"\n{result.policy}: 150 GET requests" in text
        assert result.requests == 150
        assert result.requests_after_kill > 0
        assert (result.errors, result.errors_after_kill) == (0, 0), result.error_kinds
        assert [row.name for row in result.rows] == ["fast", "slow", "flaky"]
        assert sum(row.served for row in result.rows) == 150
    total = 150 * len(lbmiddleware.POLICIES)
    assert f"GET errors seen by clients: 0 of {total} (0 of " in text

    by_policy = {r.policy: r for r in results}
    flaky = by_policy["round_robin"].rows[2]
    assert flaky.failures >= 3 and flaky.ejections >= 1      # the kill ejected it
    assert flaky.killed and gateway_view(flaky).startswith("killed, ")
    assert not any(row.killed for result in results for row in result.rows[:2])
    # Each ejection is recorded when it happened, in seconds into the run (the notes' times),
    # and one before the kill is said under the table.
    for result in results:
        for row in result.rows:
            times = result.ejected_at.get(row.name, [])
            assert len(times) == row.ejections, (result.policy, row.name, times)
            assert all(0 < at < result.seconds + 1 for at in times), times
        early = any(at < result.killed_at for at in result.ejected_at.get("flaky", []))
        table = format_policy_of(text, result.policy)
        assert ("flaky was ejected before the kill" in table) == early, table
        # a killed backend still healthy to the gateway says why (the latency run's, often)
        still_healthy = result.rows[2].state == "healthy"
        assert ("flaky was killed but" in table) == still_healthy, table
        assert ("killed, still healthy" in table) == still_healthy, table
    kept, steady, moved = by_policy["ip_hash"].sticky
    assert steady > 0 and moved > 0 and kept == steady        # only flaky's clients moved
    assert "clients of fast and slow stayed on their backend" in text

    # Everything it started is stopped: gateways and backends no longer listen, no child left.
    for result in results:
        for url in result.urls:
            assert refused(url), url
    assert _demo_children() == []

    # The words a newcomer needs, then the report of these runs: a section per policy with
    # its two charts, the share chart marking the kill where the run's samples say it was.
    flat = " ".join(text.split())
    for term, line in explained(demo.DEMO_SETTINGS):
        assert f"{term}: {line}" in flat
    assert text.rstrip().endswith(f"open it in a browser): {tmp_path / 'report.html'}")
    document = ET.fromstring(
        (tmp_path / "report.html").read_text(encoding="utf-8").removeprefix("<!DOCTYPE html>"))
    sections = {s.get("id"): s for s in document.iter("section") if s.get("class") == "policy"}
    assert list(sections) == [f"policy-{r.policy}" for r in results]
    for result in results:
        share, latency = sections[f"policy-{result.policy}"].iter(f"{SVG}svg")
        assert [line.get("class") for line in share.iter(f"{SVG}line")
                if "kill-marker" in line.get("class", "")] == ["marker kill-marker"]
        assert 0 < result.killed_at < result.seconds
        assert {"p50", "p99"} <= {cls for line in latency.iter(f"{SVG}line")
                                  for cls in line.get("class", "").split()}


def test_the_command_line_runs_the_chosen_policies_and_exits_0(tmp_path):
    path = tmp_path / "reports" / "demo.html"
    done = _command("-m", "lbmiddleware.demo", "--requests", "100",
                    "--policies", "ip_hash,weighted", "--report", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"open it in a browser): {path}")
    assert 'id="policy-ip_hash"' in path.read_text(encoding="utf-8")
    assert "\nip_hash: 100 GET requests" in done.stdout
    assert "\nround_robin: 100 GET requests" in done.stdout
    assert "\nlatency:" not in done.stdout
    assert "GET errors seen by clients: 0 of 200" in done.stdout
    assert "Traceback" not in done.stderr


def test_python_m_lbmiddleware_demo_passes_its_options_on(capsys):
    from lbmiddleware.__main__ import main

    assert main(["demo", "--requests", "60", "--policies", "random"]) == 0
    out = capsys.readouterr().out
    assert "\nrandom: 60 GET requests" in out
    assert "\nround_robin:" not in out
    # Without --report, the report goes to a new temporary folder, named at the end.
    path = pathlib.Path(out.rstrip().rsplit("open it in a browser): ", 1)[1])
    try:
        assert path.name == "report.html" and path.parent.name.startswith("lbmiddleware-demo-")
        assert 'id="policy-random"' in path.read_text(encoding="utf-8")
    finally:
        shutil.rmtree(path.parent)


@pytest.mark.parametrize("argv, message", [
    (["--policies", "fastest"], "unknown policy 'fastest'"),
    (["--requests", "0"], "'0' is not a positive integer"),
    (["--concurrency", "many"], "'many' is not a positive integer"),
    (["--serve", "--rate", "-1"], "'-1' is not a rate from 0 to 1000 requests a second"),
    (["--serve", "--rate", "fast"], "'fast' is not a rate from 0 to 1000 requests a second"),
])
def test_bad_options_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_backends_only_prints_lb_backends_serves_them_and_stops_on_ctrl_c():
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, "-m", "lbmiddleware.demo", "--backends-only"],
                               stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        lines = []
        while not (lines and lines[-1].startswith("LB_BACKENDS=")):
            line = process.stdout.readline()
            assert line, "the backends exited before printing LB_BACKENDS"
            lines.append(line.strip())
        urls = lines[-1].removeprefix("LB_BACKENDS=").split(",")
        assert len(urls) == 3
        names = []
        for url in urls:
            host, port = url.removeprefix("http://").split(":")
            for _ in range(20):          # the flaky one fails now and then
                connection = http.client.HTTPConnection(host, int(port), timeout=5)
                try:
                    connection.request("GET", "/x")
                    response = connection.getresponse()
                    response.read()
                except (http.client.HTTPException, OSError):
                    continue
                finally:
                    connection.close()
                if response.status == 200:
                    names.append(response.getheader("X-Backend"))
                    break
        assert names == ["fast", "slow", "flaky"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        for url in urls:
            assert refused(url)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_the_backends_have_their_personalities():
    backends = {name: demo.BackendProcess(name).start() for name in ("fast", "slow", "flaky")}
    try:
        outcomes: dict[str, list] = {name: [] for name in backends}
        for name, backend in backends.items():
            connection = None
            for _ in range(200 if name == "flaky" else 5):
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
                start = time.perf_counter()
                try:
                    connection.request("GET", "/", headers={"X-Forwarded-For": "198.51.100.1"})
                    response = connection.getresponse()
                    response.read()
                    outcomes[name].append((response.status, time.perf_counter() - start))
                except (http.client.HTTPException, OSError):
                    outcomes[name].append(("dropped", time.perf_counter() - start))
                    connection.close()
                    connection = None
            if connection is not None:
                connection.close()
        assert all(status == 200 for status, _ in outcomes["fast"] + outcomes["slow"])
        assert min(t for _, t in outcomes["slow"]) >= SLOW_DELAY
        flaky = [status for status, _ in outcomes["flaky"]]
        failed = sum(1 for status in flaky if status != 200)
        assert 0.5 * FLAKY_FAILURE_RATE * 200 <= failed <= 1.5 * FLAKY_FAILURE_RATE * 200
        assert 503 in flaky and "dropped" in flaky
    finally:
        for backend in backends.values():
            backend.stop()
    assert _demo_children() == []


def test_progress_bar_draws_on_its_stream_and_stays_quiet_when_disabled():
    stream = io.StringIO()
    progress = demo.Progress(stream, enabled=True)
    progress.start("ip_hash", 10)
    progress.update(5, "flaky killed")
    progress.finish()
    text = stream.getvalue()
    assert "ip_hash" in text and "[" + "#" * 15 + "." * 15 + "] 5/10 flaky killed" in text
    assert text.endswith("\r")
    quiet = io.StringIO()
    silent = demo.Progress(quiet, enabled=False)
    silent.start("ip_hash", 10)
    silent.update(5)
    silent.finish()
    assert quiet.getvalue() == ""


def test_a_run_stops_at_its_share_of_the_time_budget(monkeypatch):
    monkeypatch.setattr(demo, "TIME_BUDGET", 1.0)
    out = io.StringIO()
    started = time.monotonic()
    [result] = demo.run_demo(requests=1_000_000, policies=["round_robin"], out=out,
                             progress=demo.Progress(enabled=False))
    assert time.monotonic() - started < 5
    assert 0 < result.requests < 1_000_000 and result.errors == 0
    assert "stopped at its time limit, 1000000 planned" in out.getvalue()
    for url in result.urls:
        assert refused(url)


def test_without_uvicorn_the_demo_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "uvicorn" else real(name, *args))
    assert demo.main(["--requests", "10"]) == 2
    assert "needs uvicorn: pip install 'lbmiddleware[gateway]'" in capsys.readouterr().err
