"""The README's "Operating it" section run as written, against loopback backends: the logging
block (nothing without it, the gateway's format with it), the access log's parser on the
README's own lines and on hostile paths, the metrics table against the families an exposition
writes, the register block, the stats() block, and the FastAPI mount with the scrape
configuration and the PromQL queries in a real Prometheus beside the real gateway."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import FastAPI

import lbmiddleware as lb
from lbmiddleware.observe.metrics import exposition
from lbmiddleware.proxy.access import access_line

from ..support.asgi_server import ServerThread
from ..support.gateway import GatewayProcess
from ..support.ports import restartable_port
from ..support.prometheus import Prometheus
from ..support.servers import refused_url
from ..support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIELDS = ["client", "method", "path", "status", "backend", "attempts", "duration_ms"]


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Operating it\n")
    return text[start:text.index("\n## ", start + 1)]


def blocks(language: str) -> list[str]:
    """The section's fenced blocks in ``language`` ("" for the plain ones: output, logs)."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", section(), re.S | re.M)
            if lang == language]


def block(language: str, containing: str) -> str:
    [found] = [b for b in blocks(language) if containing in b]
    return found


def with_urls(code: str, first: str, second: str) -> str:
    """The block with the README's two backend addresses swapped for the test's."""
    return code.replace("http://127.0.0.1:8001", first).replace("http://127.0.0.1:8002", second)


def run_program(code: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=environ)


# -- logs ---------------------------------------------------------------------------------

TRAFFIC = """
import requests
import lbmiddleware as lb
session = requests.Session()
session.mount("http://orders/", lb.LoadBalancingAdapter([{up!r}, {dead!r}], max_fails=2))
for i in range(4):
    assert session.get(f"http://orders/api/items/{{i}}", timeout=5).status_code == 200
"""


def test_without_the_logging_block_a_program_prints_nothing(backends):
    program = TRAFFIC.format(up=backends[0].url, dead=refused_url())
    done = run_program(program)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""                  # not even the ejection: the NullHandler


def test_the_logging_block_prints_the_ejection_in_the_gateways_format_without_attempts(
        backends):
    dead = refused_url()
    program = block("python", "logging.basicConfig") + TRAFFIC.format(up=backends[0].url,
                                                                       dead=dead)
    done = run_program(program)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "lbmiddleware.attempts" in line] == []
    [ejected] = [line for line in lines if "ejected backend" in line]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING lbmiddleware: ejected "
                        rf"backend {re.escape(dead)} for 10s: 2 consecutive failures "
                        r"\(ejection 1 in a row\)", ejected), ejected


# -- the access log -----------------------------------------------------------------------

def access_fields() -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(block("python", "def access_fields"), "README.md", "exec"), namespace)
    return namespace["access_fields"]


def test_the_access_parser_reads_the_readmes_lines():
    parse = access_fields()
    lines = [line for b in blocks("") for line in b.splitlines()
             if " INFO lbmiddleware.access: " in line]
    assert len(lines) == 4
    parsed = [parse(line) for line in lines]
    assert all(list(fields) == FIELDS for fields in parsed)
    assert parsed[1]["path"] == "/api/a b"
    assert (parsed[2]["status"], parsed[2]["attempts"]) == ("503", "3")


@pytest.mark.parametrize("path", ["/a b", '/say "hi"', "/x=1", "/back\\slash", "/new\nline",
                                  "/nul\x00", "/emoji\U0001f600", "", '" fake=1 status=200 "'])
def test_the_access_parser_reads_back_any_path(path):
    line = ("2026-12-07 08:16:07,184 INFO lbmiddleware.access: "
            + access_line("10.0.0.1", "GET", path, 200, "http://b:1", 2, 0.25))
    fields = access_fields()(line)
    assert list(fields) == FIELDS
    assert fields["path"] == path and fields["status"] == "200"


# -- metrics ------------------------------------------------------------------------------

def metrics_table() -> dict[str, tuple[str, set[str]]]:
    """The README's metric rows: name -> (type, its extra labels, their values left out)."""
    text = section()
    start = text.index("| metric | type | extra labels | what |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        # (split on every bar: an empty labels cell, " | | ", is a cell of its own)
        name, kind, labels = (cell.strip() for cell in line.strip().strip("|").split("|")[:3])
        names = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels)))
        rows[name.strip("`")] = (kind, names)
    return rows


def written_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """An exposition's families: name -> (type, the label names of its samples)."""
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels: dict[str, set[str]] = {name: set() for name in kinds}
    for sample, inside in re.findall(r"^(\w+)\{(.*?)\} ", text, re.M):
        family = sample if sample in kinds else re.sub(r"_(bucket|sum|count)$", "", sample)
        labels[family] |= set(re.findall(r'(\w+)="', inside))
    return {name: (kinds[name], labels[name]) for name in kinds}


def test_the_metrics_table_is_what_an_exposition_writes(backends):
    source = refused_url().replace("http://", "etcd://") + "/services/orders"   # failures
    with lb.Balancer([backends[0].url, backends[1].url, source], health_check="/healthz",
                     health_check_interval="200ms") as pool, \
            lb.Balancer([backends[2].url], policy="ip_hash", hash_balance_factor=125) as hashed:
        assert wait_for(lambda: all(row["health_check"]["passes_total"] for row in pool.stats()))
        with pool.attempt() as backend:
            assert backend.url in (backends[0].url, backends[1].url)
        text = exposition({"orders": pool, "sessions": hashed})[0].decode()
    written = written_families(text)
    for family, (_kind, labels) in written.items():
        assert "pool" in labels, f"{family} wrote no sample with a pool label"
    expected = {name: (kind, labels | {"pool"} | ({"backend"} if "_backend_" in name else set()))
                for name, (kind, labels) in metrics_table().items()}
    assert {name: (kind, labels - {"le"}) for name, (kind, labels) in written.items()} == expected


def test_the_register_block_serves_the_pool_on_prometheus_client(backends):
    port = restartable_port()
    code = block("python", "lb.metrics.register(").replace("9100", str(port))
    program = (f"import lbmiddleware as lb\npool = lb.Balancer([{backends[0].url!r}])\n"
               + code + textwrap.dedent(f"""
               import urllib.request
               print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())
               try:
                   lb.metrics.register(lb.Balancer([{backends[1].url!r}]), name="orders")
               except lb.ConfigError as exc:
                   print("ConfigError:", exc)
               """))
    done = run_program(program)
    assert done.returncode == 0, done.stderr
    assert (f'lbmiddleware_backend_up{{backend="{backends[0].url}",pool="orders"}} 1.0'
            in done.stdout)
    assert "ConfigError: a pool named 'orders' is already registered" in done.stdout


# -- stats() ------------------------------------------------------------------------------

def test_the_stats_block_prints_ages_of_an_ejected_and_down_backend(backends):
    dead = refused_url()
    # The second of two members is first probed half an interval after the start (the
    # prober's spread), so the six requests come first and eject it; then its check fails.
    with lb.Balancer([backends[0].url, dead], health_check="/healthz",
                     health_check_interval="2s") as pool:
        session = requests.Session()
        session.mount("http://orders/", lb.LoadBalancingAdapter(balancer=pool))
        for i in range(6):
            assert session.get(f"http://orders/api/items/{i}", timeout=5).status_code == 200
        assert wait_for(lambda: pool.stats()[1]["health_check"]["status"] == "down")
        out = io.StringIO()
        with redirect_stdout(out):
            exec(compile(block("python", "row = pool.stats()[1]"), "README.md", "exec"),
                 {"pool": pool})
    state, check, totals = out.getvalue().splitlines()
    kind, state_age, ejection_left, latency, estimate = state.split()
    assert kind == "ejected" and latency == "None"
    assert 0 <= float(state_age) < 10 and 0 < float(ejection_left) <= 10
    assert float(estimate) > 1                     # the failures' penalties: seconds
    assert check.startswith("down connection refused ")
    assert check.endswith(" 2")                    # passes_to_up: rise
    assert "'usable': 1" in totals and "'retries': 3" in totals


# -- the status page, the scrape configuration and the queries ------------------------------

@pytest.mark.prometheus
def test_the_fastapi_mount_and_the_gateway_scraped_as_the_readme_configures(tmp_path, backends):
    namespace: dict[str, Any] = {"FastAPI": FastAPI, "lb": lb}
    code = with_urls(block("python", 'app.mount("/admin"'), backends[0].url, backends[1].url)
    exec(compile(code, "README.md", "exec"), namespace)
    app, pool = namespace["app"], namespace["pool"]
    environ = {"LB_BACKENDS": backends[2].url, "LB_ADMIN_LISTEN": "127.0.0.1:0"}
    with ServerThread(app) as server, GatewayProcess(environ) as gateway:
        for i in range(6):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/x{i}") as answer:
                assert answer.status == 200
            with urllib.request.urlopen(f"{gateway.url}/x{i}") as answer:
                assert answer.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/admin/ready") as answer:
            assert answer.read() == b"ready\n"
        config = (block("yaml", "scrape_configs:")
                  .replace("127.0.0.1:9901", f"127.0.0.1:{gateway.admin_port}")
                  .replace("127.0.0.1:8080", f"127.0.0.1:{server.port}"))
        prometheus = Prometheus(tmp_path / "prometheus", targets=[])
        prometheus.config_file.write_text("global:\n  scrape_interval: 1s\n" + config)
        with prometheus:
            def scraped() -> set[tuple[str, str]]:
                rows = prometheus.query("lbmiddleware_backend_requests_total")
                return {(row["metric"]["job"], row["metric"]["pool"]) for row in rows}

            deadline = time.monotonic() + 30
            while scraped() != {("lbmiddleware-gateway", "default"), ("orders-app", "orders")}:
                assert time.monotonic() < deadline, (scraped(), prometheus.targets())
                time.sleep(0.25)
            assert {t["health"] for t in prometheus.targets()} == {"up"}
            queries = [q.strip() for q in re.split(r"\n\s*\n|\n(?=\S)", "\n".join(
                line for line in block("promql", "histogram_quantile").splitlines()
                if not line.startswith("#")).strip()) if q.strip()]
            assert len(queries) == 4
            for query in queries:
                prometheus.query(query)           # raises unless Prometheus accepts it
            assert prometheus.query("lbmiddleware_panic == 1") == []
    pool.close()
