"""What the adapter reports of a response body: its bytes (``bytes_received`` in stats(), the
metrics' ``lbmiddleware_backend_received_bytes_total``) as they came from the backend,
undecoded and without chunked framing, with ``stream=False`` and ``stream=True`` alike; and a
streamed body that breaks off, a failure of its backend that no retry can follow, with the
failed-attempt line every front-end logs. A streamed body is counted as the caller reads it
and reported once, when it ends."""

from __future__ import annotations

import gzip
import logging

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter

from ..support.raw_backends import CLOSE, ok

VHOST = "http://svc"
SIZE = 300_000


def mounted(adapter: LoadBalancingAdapter) -> requests.Session:
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    return session


def received(pool: lb.Balancer) -> int:
    (row,) = pool.stats()
    assert (row["requests"], row["in_flight"]) == (1, 0)
    return int(row["bytes_received"])


def chunked(body: bytes, size: int) -> bytes:
    """A 200 whose ``body`` comes chunked, in chunks of ``size`` bytes."""
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
            + b"0\r\n\r\n")


def gzipped(body: bytes) -> bytes:
    data = gzip.compress(body)
    return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_body_bytes_are_counted_whether_read_inside_the_attempt_or_by_the_caller(
        servers, stream):
    backend = servers("a")
    backend.body_size = SIZE
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session, \
            session.get(f"{VHOST}/x", stream=stream, timeout=5) as response:
        assert len(response.content) == SIZE
    assert received(pool) == SIZE


@pytest.mark.parametrize("read", ["content", "iter_content", "raw.read", "raw.stream"])
def test_a_streamed_chunked_body_is_counted_without_its_framing(raw_backend, read):
    body = bytes(range(256)) * 400                  # 102,400 bytes in 25 chunks
    backend = raw_backend([chunked(body, 4096)])
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session, \
            session.get(f"{VHOST}/x", stream=True, timeout=5) as response:
        if read == "content":
            got = response.content
        elif read == "iter_content":
            got = b"".join(response.iter_content(1000))
        elif read == "raw.read":
            got = response.raw.read()
        else:
            got = b"".join(response.raw.stream(1000))
        assert got == body
    assert received(pool) == len(body)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_encoded_body_counts_the_bytes_that_came_not_the_decoded_ones(raw_backend, stream):
    body = b"lbmiddleware " * 20_000
    answer = gzipped(body)
    backend = raw_backend([answer])
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session, \
            session.get(f"{VHOST}/x", stream=stream, timeout=5) as response:
        assert response.content == body
    assert received(pool) == len(gzip.compress(body)) < len(body)


def test_a_streamed_body_closed_part_read_counts_what_was_read(raw_backend):
    body = b"x" * 1_000_000
    backend = raw_backend([ok(body)])
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session:
        response = session.get(f"{VHOST}/x", stream=True, timeout=5)
        first = response.raw.read(10_000)
        response.close()
    assert len(first) == 10_000
    assert received(pool) == 10_000


def test_a_streamed_body_dropped_unread_is_reported_once_when_collected(raw_backend):
    backend = raw_backend([ok(b"y" * 50_000)])
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session:
        response = session.get(f"{VHOST}/x", stream=True, timeout=5)
        assert response.raw.read(1_000) == b"y" * 1_000
        del response                                # neither read to the end nor closed
        pool.stats()                                # (a later call applies the report)
    assert received(pool) == 1_000


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def attempt_lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "lbmiddleware.attempts"]


@pytest.mark.parametrize(("answer", "came", "why"), [
    (HEAD + b"x" * 40_000, 40_000, "the response ended early (40000 bytes read, 60000 more "
                                   "expected)"),
    (CHUNKED + b"4000\r\n" + b"x" * 0x4000 + b"\r\n", 0x4000, "response ended prematurely"),
    (CHUNKED + b"4000\r\n" + b"x" * 1000, 1000, "the response ended early"),
], ids=["length", "chunked-between-chunks", "chunked-in-a-chunk"])
def test_a_streamed_body_that_breaks_off_is_a_failure_with_its_line(scripted, caplog, answer,
                                                                    came, why):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    backend = scripted([[answer, CLOSE]])
    pool = lb.Balancer([backend.url], max_fails=0)
    with mounted(LoadBalancingAdapter(balancer=pool)) as session, \
            session.get(f"{VHOST}/x", stream=True, timeout=5) as response:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(response.iter_content(4096))
    (row,) = pool.stats()
    assert (row["requests"], row["failures"], row["in_flight"]) == (1, 1, 0)
    assert row["bytes_received"] == came
    (line,) = attempt_lines(caplog)
    assert line[0] == logging.INFO
    assert line[1].startswith(f"GET attempt 1 on {backend.url} failed: the response body broke "
                              f"off after {came} bytes (")
    assert why in line[1].lower()
    assert line[1].endswith("; not retried: its response had begun to reach the client")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_streamed_body_the_caller_closes_early_is_no_failure(raw_backend, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware")
    backend = raw_backend([ok(b"z" * 100_000)])
    pool = lb.Balancer([backend.url])
    with mounted(LoadBalancingAdapter(balancer=pool)) as session:
        response = session.get(f"{VHOST}/x", stream=True, timeout=5)
        next(response.iter_content(1000))
        response.close()
    (row,) = pool.stats()
    assert (row["requests"], row["failures"], row["in_flight"]) == (1, 0, 0)
    assert attempt_lines(caplog) == []
