"""How the adapter words a failed attempt (adapter/errors.py's describe(), the Outcome's
``error``), read from the failed attempt's log line, against real loopback backends that
refuse, hang, hang up, cut a body short or answer something that is not HTTP."""

from __future__ import annotations

import logging

import pytest
import requests

from lbmiddleware.adapter import LoadBalancingAdapter

from ..support.raw_backends import CLOSE, OK
from ..support.servers import refused_url

VHOST = "http://svc"


def failed_once(url: str, caplog, **options) -> str:
    """The reason in the one attempt line of a GET to ``url`` (no retry), after the error."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    session = requests.Session()
    session.mount(VHOST + "/", LoadBalancingAdapter([url], retries=0, **options))
    with session, pytest.raises(requests.RequestException):
        session.get(f"{VHOST}/")
    [line] = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    prefix, suffix = f"GET attempt 1 on {url} failed: ", "; not retried: no retries left (0 used)"
    assert line.startswith(prefix) and line.endswith(suffix), line
    return line[len(prefix):-len(suffix)]


def test_a_refused_connection(caplog):
    assert failed_once(refused_url(), caplog) == "connection refused"


def test_a_read_timeout_names_its_limit_as_the_asgi_side_does(raw_backend, caplog):
    # the words of tests/asgi/test_asgi_failure_text.py (core.casts.format_duration)
    backend = raw_backend([1.0, OK])
    assert failed_once(backend.url, caplog, read_timeout=0.2) == "read timed out after 200ms"


def test_a_backend_that_hangs_up_without_an_answer(scripted, caplog):
    backend = scripted([CLOSE])
    assert failed_once(backend.url, caplog) == "the connection was closed without a response"


def test_an_answer_that_is_not_http(scripted, caplog):
    backend = scripted([[b"garbage\r\n\r\n", CLOSE]])
    assert failed_once(backend.url, caplog) == (
        "not an HTTP response (status line 'garbage')")


def test_a_body_cut_short(scripted, caplog):
    backend = scripted([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", CLOSE]])
    assert failed_once(backend.url, caplog) == (
        "the response ended early (3 bytes read, 97 more expected)")
