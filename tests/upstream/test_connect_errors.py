"""The one table from a failed connect to the upstream errors (:func:`connect_error`), the
pool map's rule (:func:`pool_for`, :func:`forget_pools`), and the coroutine client's connect
failures through them on real loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

import lbmiddleware as lb
from lbmiddleware.upstream import Upstream
from lbmiddleware.upstream.errors import (
    CONNECT_FAILURES,
    ConnectError,
    ConnectTimeout,
    TLSError,
    UpstreamError,
    connect_error,
    failure_text,
)
from lbmiddleware.upstream.pool import forget_pools, pool_for

from ..support.servers import refused_url, unaccepting_url

BACKEND = lb.Backend("http://10.0.0.1:8001")


def verify_failed() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


# (raised, class, words, its deadline)
TABLE = [
    pytest.param(asyncio.TimeoutError(), ConnectTimeout,
                 "connecting to http://10.0.0.1:8001 timed out", False, id="timeout"),
    pytest.param(verify_failed(), TLSError,
                 "TLS: certificate verify failed: unable to get local issuer certificate", False,
                 id="tls"),
    pytest.param(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ConnectError,
                 "cannot connect to http://10.0.0.1:8001: Connection refused", False,
                 id="refused"),
    pytest.param(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), ConnectError,
                 "cannot connect to http://10.0.0.1:8001: Name or service not known", False,
                 id="name-not-resolved"),
    pytest.param(OSError("Multiple exceptions: ..."), ConnectError,
                 "cannot connect to http://10.0.0.1:8001: Multiple exceptions: ...", False,
                 id="no-strerror"),
]


@pytest.mark.parametrize(("raised", "kind", "words", "deadline"), TABLE)
def test_a_connect_failure_becomes_its_rows_error(raised, kind, words, deadline):
    assert isinstance(raised, CONNECT_FAILURES)
    error = connect_error(raised, BACKEND)
    assert type(error) is kind
    assert (str(error), error.deadline, error.sent) == (words, deadline, False)


def test_a_timeout_cut_by_the_deadline_says_so():
    assert connect_error(asyncio.TimeoutError(), BACKEND, cut=True).deadline


def test_the_oserror_is_kept_for_its_errno_and_the_sslerror_only_as_the_cause():
    """failure_text reads the errno of a ConnectError's context: the OSError's is a system
    error's; an SSLError's (1) is not, so it is the TLS error's cause alone."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.1', 8001)")
    error = connect_error(refused, BACKEND)
    assert error.__context__ is refused and error.__suppress_context__
    assert failure_text(error, Upstream().pool(BACKEND)) == "connection refused"
    tls = verify_failed()
    error = connect_error(tls, BACKEND)
    assert error.__cause__ is tls and error.__context__ is None


# -- the coroutine client's connects, through the table ---------------------------------------

def first_failure(url: str, connect_timeout: float = 5.0) -> UpstreamError:
    async def attempt() -> UpstreamError:
        pool = Upstream(connect_timeout=connect_timeout).pool(lb.Backend(url))
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [])
        return caught.value
    return asyncio.run(attempt())


def test_the_pool_says_a_refused_connect_in_the_tables_words():
    url = refused_url()
    error = first_failure(url)
    assert type(error) is ConnectError
    assert str(error).startswith(f"cannot connect to {url}: ")
    assert isinstance(error.__context__, ConnectionRefusedError)


def test_the_pool_says_a_connect_timeout_in_the_tables_words():
    with unaccepting_url() as url:
        error = first_failure(url, connect_timeout=0.2)
    assert type(error) is ConnectTimeout
    assert (str(error), error.deadline) == (f"connecting to {url} timed out", False)


# -- one pool per backend --------------------------------------------------------------------

class Pool:
    def __init__(self, backend: lb.Backend) -> None:
        self.backend = backend
        self.left = False

    def leave(self) -> None:
        self.left = True


def test_a_backend_keeps_its_pool_until_its_server_name_changes_or_it_leaves():
    pools: dict[str, Pool] = {}
    first = pool_for(pools, BACKEND, Pool)
    assert pool_for(pools, lb.Backend(BACKEND.url), Pool) is first
    renamed = pool_for(pools, lb.Backend(BACKEND.url, server_name="api.example"), Pool)
    assert renamed is not first and first.left and not renamed.left
    other = pool_for(pools, lb.Backend("http://10.0.0.2:8001"), Pool)
    forget_pools(pools, [BACKEND, lb.Backend("http://10.0.0.9:1")])
    assert renamed.left and not other.left and list(pools) == [other.backend.url]
    back = pool_for(pools, BACKEND, Pool)
    assert back is not renamed and not back.left
