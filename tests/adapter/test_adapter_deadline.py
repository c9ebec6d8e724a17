"""The requests adapter's waits under urllib3: an upload the backend stops reading, and the
request's deadline (``LB_TIMEOUT``) inside urllib3 (a head over TLS, the body after a head
that took most of the deadline, the adapter's own ``max_retries``). What every client
front-end does with the deadline is the client contract (tests/contract/client_contract.py).

Real loopback backends; each duration is bounded loosely (the limit plus a second) where
the bug waited several times longer, and what happened is checked beside it.
"""

from __future__ import annotations

import ssl
import time

import pytest
import requests
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from lbmiddleware.adapter import LoadBalancingAdapter

from ..contract.client_drivers import UPLOAD, TricklingHead, UnreadUpload
from ..support.raw_backends import CLOSE, ok

VHOST = "http://svc"
DEADLINE = "the request's 500ms deadline (LB_TIMEOUT) ran out: "


def mounted(adapter: LoadBalancingAdapter) -> requests.Session:
    session = requests.Session()
    session.mount(VHOST + "/", adapter)
    return session


def counts(adapter: LoadBalancingAdapter) -> tuple[int, int, int]:
    (row,) = adapter.balancer.stats()
    return row["requests"], row["failures"], row["in_flight"]


@pytest.fixture
def unread_upload():
    server = UnreadUpload()
    yield server
    server.stop()


# -- an upload the backend stops reading -----------------------------------------------------

def test_an_upload_the_backend_stops_reading_is_a_read_timeout_after_the_read_timeout(
        unread_upload):
    """No deadline: the wait for the backend to take the body is the read timeout (0.5 s),
    not the connect timeout (5 s) urllib3 leaves on the socket while sending, and running
    out of it is requests' ReadTimeout (urllib3 would make it a ConnectionError), as the
    ASGI middleware's upstream client counts it."""
    adapter = LoadBalancingAdapter([unread_upload.url], retries=0)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout) as info:
        mounted(adapter).put(f"{VHOST}/", data=b"x" * UPLOAD, timeout=(5.0, 0.5))
    took = time.monotonic() - started
    assert took < 0.5 + 1.0, f"the 0.5 s read timeout ended the upload after {took:.2f} s"
    error = info.value.args[0]
    assert type(error) is ReadTimeoutError
    assert "the backend stopped reading the request. (read timeout=0.5)" in str(error)
    assert counts(adapter) == (1, 1, 0)


# -- the deadline inside urllib3 -------------------------------------------------------------

def test_the_deadline_bounds_a_response_head_trickling_in_over_tls(certificate):
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    trickling = TricklingHead(tls=tls)
    try:
        adapter = LoadBalancingAdapter([trickling.url], timeout=0.5, read_timeout=5)
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout) as info:
            mounted(adapter).get(f"{VHOST}/", verify=cert)
        took = time.monotonic() - started
        assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the wait after {took:.2f} s"
        assert str(info.value).startswith(DEADLINE)
        assert trickling.given_up.wait(2), "the attempt's connection is still open"
        assert counts(adapter) == (1, 1, 0)
    finally:
        trickling.stop()


def test_the_body_after_a_head_that_took_most_of_the_deadline_gets_the_read_timeout(
        raw_backend):
    """The head trickles in for 3 s of the 4 s deadline, each of its reads cut to the time
    left (the last to about 1 s); the body then pauses 1.75 s, within the 2.5 s read
    timeout its reads get back (the deadline bounds the wait for the head, not the body)."""
    head = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Padding: "] + [0.1, b"p"] * 30
    backend = raw_backend([*head, b"\r\n\r\nab", 1.75, b"cd"])
    adapter = LoadBalancingAdapter([backend.url], timeout=4.0, read_timeout=2.5)
    response = mounted(adapter).get(f"{VHOST}/")
    assert (response.status_code, response.content) == (200, b"abcd")
    assert counts(adapter) == (1, 0, 0)


def test_the_adapters_max_retries_start_no_try_past_the_deadline(backends):
    """urllib3's retries (max_retries) happen within the attempt: each try of a hanging
    backend would get the read timeout the deadline cut (0.5 s), four of them 2 s. The
    first runs out at the deadline, and no try follows: urllib3's retries end as when they
    are spent (requests' ConnectionError for read retries), naming the deadline."""
    a = backends[0]
    a.behaviour = "hang"
    retry = Retry(total=3, read=3, backoff_factor=0, allowed_methods=None)
    adapter = LoadBalancingAdapter([a.url], timeout=0.5, read_timeout=5, retries=0,
                                   max_retries=retry)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError) as info:
        mounted(adapter).get(f"{VHOST}/")
    took = time.monotonic() - started
    assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the request after {took:.2f} s"
    assert str(info.value).startswith(DEADLINE)
    error = info.value.args[0]
    assert type(error) is MaxRetryError and type(error.reason) is ReadTimeoutError
    assert a.requests == 1
    assert counts(adapter) == (1, 1, 0)


def test_a_retry_after_past_the_deadline_is_not_waited_for(backends):
    """A 503 with Retry-After: 3 under a 0.5 s deadline: urllib3 would sleep 3 s and try
    again; the Retry is spent instead, and with raise_on_status off the 503 comes back."""
    a = backends[0]
    a.status, a.extra_headers = 503, [("Retry-After", "3")]
    retry = Retry(total=3, status_forcelist=[503], raise_on_status=False)
    adapter = LoadBalancingAdapter([a.url], timeout=0.5, retries=0, max_retries=retry)
    started = time.monotonic()
    response = mounted(adapter).get(f"{VHOST}/")
    took = time.monotonic() - started
    assert took < 0.5 + 1.0, f"the 0.5 s deadline ended the request after {took:.2f} s"
    assert response.status_code == 503
    assert a.requests == 1

    retry = Retry(total=3, status_forcelist=[503])          # raise_on_status: RetryError
    adapter = LoadBalancingAdapter([a.url], timeout=0.5, retries=0, max_retries=retry)
    with pytest.raises(requests.exceptions.RetryError) as info:
        mounted(adapter).get(f"{VHOST}/")
    assert "leaves no time to retry" in str(info.value)
    assert a.requests == 2


def test_the_adapters_max_retries_still_retry_within_the_deadline(scripted):
    """The backend closes its first connection without an answer: urllib3 retries on a new
    one (a read retry), well within the 5 s deadline, and the subclass of Retry given is
    the one that decides."""
    backend = scripted([CLOSE], [ok(b"two")])
    decided = []

    class Counting(Retry):
        def increment(self, *args, **kwargs):
            decided.append(kwargs.get("error") or args[3])
            return super().increment(*args, **kwargs)

    retry = Counting(total=2, read=2, backoff_factor=0)
    adapter = LoadBalancingAdapter([backend.url], timeout=5, retries=0, max_retries=retry)
    response = mounted(adapter).get(f"{VHOST}/")
    assert (response.status_code, response.content) == (200, b"two")
    assert len(decided) == 1 and backend.connections == 2
    assert counts(adapter) == (1, 0, 0)


def test_a_response_read_under_a_deadline_still_has_its_sockets_fileno(raw_backend):
    """The head's reads went through the deadline's reader: the raw response still gives
    its socket's file descriptor (urllib3's fileno(), for a caller's select)."""
    backend = raw_backend([ok(b"hi")])
    adapter = LoadBalancingAdapter([backend.url], timeout=5)
    response = mounted(adapter).get(f"{VHOST}/", stream=True)
    assert response.raw.fileno() >= 0
    assert response.content == b"hi"
