"""What the gateway logs: ``python -m lbmiddleware serve`` under each of its servers in a
subprocess, real loopback backends, its stderr read line by line.

Every line has a time, a level, a logger and a message (``LB_LOG_LEVEL`` [info]); the pool's
events (an ejection and its return), each failed attempt, and with ``LB_ACCESS_LOG`` one
logfmt line per request, whose fields are parsed back here.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
import requests

from lbmiddleware.gateway import RefusalWarnings, logging_config
from lbmiddleware.gateway_settings import LOG_LEVELS

from ..proxy.test_access import parse_logfmt
from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.servers import refused_url
from ..support.waiting import until

ACCESS_LOGGER = "lbmiddleware.access"

# "2026-12-07 08:00:00,123 WARNING lbmiddleware: ejected backend ..."
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.+)$")


def log_lines(output: str) -> list[tuple[str, str, str]]:
    """``(level, logger, message)`` of each line; fails on a line without them."""
    lines = []
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, f"a line without time, level and logger: {line!r}"
        lines.append(match.groups())
    return lines


def access_lines(output: str) -> list[dict[str, str]]:
    return [parse_logfmt(message) for level, logger, message in log_lines(output)
            if logger == "lbmiddleware.access" and level == "INFO"]


def gateway(server: str, backends: str, **settings: str) -> GatewayProcess:
    return GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": backends, **settings})


# -- the format and the level -------------------------------------------------------------

@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_every_line_has_time_level_logger_and_message(server, servers):
    b = servers("b")
    dead = refused_url()
    with gateway(server, f"{dead}, {b.url}", LB_MAX_FAILS="1", LB_ACCESS_LOG="1") as process:
        assert requests.get(f"{process.url}/x", timeout=5).status_code == 200
        process.wait_for_output(r" lbmiddleware\.access: ")
        output = process.stop()
    lines = log_lines(output)
    seen = {(level, logger) for level, logger, _ in lines}
    assert ("WARNING", "lbmiddleware") in seen          # the ejection of the dead backend
    assert ("INFO", "lbmiddleware.access") in seen
    # the servers' own INFO lines (start-up, connections) stay out
    assert not [line for line in lines if line[1].startswith(("uvicorn", "granian", "_granian"))]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_log_level_warning_hides_info_lines_but_not_the_access_log_asked_for(server, servers):
    """``LB_LOG_LEVEL=warning`` keeps the failed attempts' and the pool's INFO lines out; the
    access log is a setting of its own (``LB_ACCESS_LOG``): each request still gets its line."""
    b = servers("b")
    dead = refused_url()
    with gateway(server, f"{dead}, {b.url}", LB_MAX_FAILS="1", LB_ACCESS_LOG="1",
                 LB_LOG_LEVEL="warning") as process:
        assert requests.get(f"{process.url}/x", timeout=5).status_code == 200
        process.wait_for_output(rf"WARNING lbmiddleware: ejected backend {re.escape(dead)}")
        assert requests.get(f"{process.url}/y", timeout=5).status_code == 200
        until(lambda: len(access_lines(process.output())) == 2, 10, "two access lines")
        output = process.stop()
    lines = log_lines(output)
    others = {level for level, logger, _ in lines if logger != "lbmiddleware.access"}
    assert others == {"WARNING"}        # no failed attempt, no membership line (INFO)
    assert [(line["path"], line["status"]) for line in access_lines(output)] == [
        ("/x", "200"), ("/y", "200")]


def test_the_access_logger_is_at_info_whatever_the_level_when_the_access_log_is_on():
    for level in LOG_LEVELS:
        loggers = logging_config(level, access_log=True)["loggers"]
        assert loggers[ACCESS_LOGGER] == {"level": "INFO"}
        assert ACCESS_LOGGER not in logging_config(level)["loggers"]


# -- the pool's events --------------------------------------------------------------------

@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_an_ejection_and_its_return_both_show(server, servers):
    """Even at ``warning``: a return is logged wherever the ejection it ends is."""
    b = servers("b")
    dead = refused_url()
    with gateway(server, f"{dead}, {b.url}", LB_MAX_FAILS="1", LB_FAIL_TIMEOUT="300ms",
                 LB_LOG_LEVEL="warning") as process:
        requests.get(f"{process.url}/x", timeout=5)
        ejected = process.wait_for_output(rf"lbmiddleware: ejected backend {re.escape(dead)}")
        # the ejection ends with time; the pool notices on a pick
        deadline = time.monotonic() + 10
        returned = None
        while returned is None and time.monotonic() < deadline:
            requests.get(f"{process.url}/x", timeout=5)
            returned = re.search(rf"lbmiddleware: backend {re.escape(dead)} returns",
                                 process.output())
            time.sleep(0.05)
        output = process.stop()
    assert returned, f"no return line in:\n{output}"
    assert LINE.match(ejected.rstrip("\n")).group(1) == "WARNING"


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_failed_attempt_is_logged_with_its_reason(server, servers):
    b = servers("b")
    dead = refused_url()
    with gateway(server, f"{dead}, {b.url}") as process:
        assert requests.get(f"{process.url}/x", timeout=5).status_code == 200
        line = process.wait_for_output(r" lbmiddleware\.attempts: ")
        process.stop()
    level, _, message = LINE.match(line.rstrip("\n")).groups()
    assert level == "INFO"
    assert dead in message and "connection refused" in message
    assert f"retrying on {b.url}" in message


def test_an_attempt_the_deadline_cut_is_logged_in_its_words(servers):
    """LB_TIMEOUT through the gateway (its default server): the failed attempt's line says
    the deadline ran out, and that no retry followed for that reason; the access line has
    the 504 after one attempt."""
    a, b = servers("a"), servers("b")
    a.behaviour = "hang"
    with GatewayProcess({"LB_BACKENDS": f"{a.url}, {b.url}", "LB_TIMEOUT": "300ms",
                         "LB_ACCESS_LOG": "1"}) as process:
        assert requests.get(f"{process.url}/x", timeout=5).status_code == 504
        process.wait_for_output(r" lbmiddleware\.access: ")
        output = process.stop()
    (attempt,) = [message for _, logger, message in log_lines(output)
                  if logger == "lbmiddleware.attempts"]
    assert attempt == (f"GET attempt 1 on {a.url} failed: the request's 300ms deadline "
                       "(LB_TIMEOUT) ran out; not retried: the request's 300ms deadline "
                       "(LB_TIMEOUT) has passed")
    (line,) = access_lines(output)
    assert (line["status"], line["attempts"], line["backend"]) == ("504", "1", a.url)
    assert b.requests == 0


# -- the access log -------------------------------------------------------------------------

@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_access_lines_for_a_success_a_retry_and_odd_paths(server, servers):
    b = servers("b")
    dead = refused_url()
    with gateway(server, f"{dead}, {b.url}", LB_MAX_FAILS="1", LB_ACCESS_LOG="1",
                 LB_PREFIX="/api", LB_TRUSTED_PROXIES="127.0.0.1/32") as process:
        with requests.Session() as session:
            # round robin starts on the dead backend: refused, retried on b (then it is
            # ejected, and b answers the rest at the first attempt)
            assert session.get(f"{process.url}/api/first", timeout=5).status_code == 200
            assert session.get(f"{process.url}/api/x?token=s3cret&page=2",
                               timeout=5).status_code == 200
            assert session.get(f"{process.url}/api/a%20b%22c%3D%5C", timeout=5,
                               headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
            assert session.post(f"{process.url}/api/form", data=b"x" * 10,
                                timeout=5).status_code == 200
            assert session.get(f"{process.url}/elsewhere", timeout=5).status_code == 404
        # (each line is written once its response has gone: wait for the last)
        until(lambda: len(access_lines(process.output())) == 5, 10, "five access lines")
        output = process.stop()
    lines = {line["path"]: line for line in access_lines(output)}
    assert len(lines) == 5, output
    first, query, odd, post, outside = (lines[path] for path in (
        "/api/first", "/api/x", '/api/a b"c=\\', "/api/form", "/elsewhere"))
    assert first["client"] == "127.0.0.1" and first["method"] == "GET"
    assert (first["path"], first["status"], first["backend"], first["attempts"]) == (
        "/api/first", "200", b.url, "2")
    assert float(first["duration_ms"]) > 0
    assert (query["path"], query["attempts"], query["backend"]) == ("/api/x", "1", b.url)
    assert "s3cret" not in output and "page" not in output
    # decoded, then quoted and escaped: parsed back whole; the client from the trusted hop
    assert odd["path"] == '/api/a b"c=\\' and odd["client"] == "203.0.113.9"
    assert (post["method"], post["status"]) == ("POST", "200")
    assert (outside["status"], outside["backend"], outside["attempts"]) == ("404", "-", "0")


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_access_line_of_a_502_names_the_last_backend_tried(server):
    first, second = refused_url(), refused_url()
    with gateway(server, f"{first}, {second}", LB_RETRIES="1", LB_ACCESS_LOG="1") as process:
        assert requests.get(f"{process.url}/x", timeout=5).status_code == 502
        process.wait_for_output(r" lbmiddleware\.access: ")
        output = process.stop()
    (line,) = access_lines(output)
    assert (line["status"], line["attempts"], line["backend"]) == ("502", "2", second)


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_the_access_log_is_off_by_default(server, servers):
    b = servers("b")
    with gateway(server, b.url) as process:
        for _ in range(3):
            assert requests.get(f"{process.url}/x", timeout=5).status_code == 200
        output = process.stop()
    assert "lbmiddleware.access" not in output and "/x" not in output


# Not granian: it leaves a connection beyond the limit in the listen backlog, unanswered
# (tests/gateway/test_gateway_server.py).
@pytest.mark.parametrize("server", ["fast", "uvicorn"])
def test_a_503_for_too_many_connections_gets_an_access_line_and_a_warning(server, servers):
    """Under uvicorn and the fast server a connection beyond ``LB_MAX_CONNECTIONS`` is
    answered 503 and closed before any request is read: the client got a 503, so the access
    log says so (no method or path: ``-``), and the shedding shows as a WARNING, one for the
    three refused here."""
    b = servers("b")
    with gateway(server, b.url, LB_ACCESS_LOG="1", LB_MAX_CONNECTIONS="1") as process:
        address = ("127.0.0.1", process.port)
        with socket.create_connection(address, timeout=5):         # holds the one slot
            answers = []
            for _ in range(3):
                with socket.create_connection(address, timeout=5) as refused:
                    answers.append(refused.makefile("rb").readline())
        until(lambda: len(access_lines(process.output())) == 3, 10, "three access lines")
        output = process.stop()
    assert answers == [b"HTTP/1.1 503 Service Unavailable\r\n"] * 3
    for line in access_lines(output):
        assert line == {"client": "127.0.0.1", "method": "-", "path": "-", "status": "503",
                        "backend": "-", "attempts": "0", "duration_ms": "0.0"}
    warnings = [(logger, message) for level, logger, message in log_lines(output)
                if level == "WARNING"]
    assert warnings == [("lbmiddleware.gateway", "too many connections "
                         "(LB_MAX_CONNECTIONS=1): 1 connection answered 503 and closed")]


def test_refusals_are_warned_at_most_once_an_interval_with_their_count(clock, caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware.gateway")
    refused = RefusalWarnings("too busy", "closed", interval=10.0, timer=clock)
    refused()                   # the first at once
    refused()
    clock.advance(4)
    refused()
    clock.advance(6)            # 10 s after the first line: the next, with the count since
    refused()
    clock.advance(3600)
    refused()
    assert [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.gateway"] == [
        "too busy: 1 connection closed", "too busy: 3 connections closed in the last 10 s",
        "too busy: 1 connection closed in the last 3600 s"]
