"""The backend TLS settings (issue 14, item 5) in the proxies' upstream client, against real
https backends on loopback with certificates a private CA made in the test: ``LB_BACKEND_CA``
(that CA trusted, the system's store not used), ``LB_BACKEND_VERIFY=false`` (a WARNING once),
``LB_BACKEND_CLIENT_CERT`` / ``LB_BACKEND_CLIENT_KEY`` (mutual TLS, TLS 1.2 and 1.3), one
context per pool's settings, and a failed handshake as a connect failure whose words name the
problem, under asyncio and uvloop. Then through the ASGI middleware: 502 and the failed
attempt's line, a POST retried on another backend."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import uvloop

import lbmiddleware as lb
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.upstream import Upstream, UpstreamError
from lbmiddleware.upstream.errors import ConnectError, TLSError, failure_text
from lbmiddleware.upstream.tls import (
    backend_ssl_context,
    backend_verify_cert,
    new_backend_ssl_context,
    system_ssl_context,
)

from ..support.asgi_client import Call
from ..support.servers import BackendServer
from ..support.tls import SERVER_NAME, TLSBackendServer

UNKNOWN_ISSUER = "TLS: certificate verify failed: unable to get local issuer certificate"
LOOPS = ["asyncio", "uvloop"]


def run(loop: str, coroutine):
    return uvloop.run(coroutine) if loop == "uvloop" else asyncio.run(coroutine)


def get(loop: str, backend: lb.Backend, context: ssl.SSLContext | None,
        method: bytes = b"GET", body: bytes = b""):
    """One request on a fresh pool: ``(status, body)``, or the UpstreamError and the text
    the ASGI side logs for it (``failure_text``)."""
    async def scenario():
        upstream = Upstream(connect_timeout=5.0, read_timeout=5.0, ssl=context)
        pool = upstream.pool(backend)
        try:
            response = await pool.request(method, b"/x", [], body)
            data = response.take()
            while chunk := await response.read():
                data += chunk
            return response.status, data
        except UpstreamError as exc:
            return exc, failure_text(exc, pool)
        finally:
            upstream.close()
    return run(loop, scenario())


def settings(url: str = "https://127.0.0.1:1", **tls) -> lb.Settings:
    return lb.Settings(backends=url, **tls)


# -- LB_BACKEND_CA --------------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_a_private_ca_is_trusted_with_backend_ca_and_not_without(loop, pki, https_backend):
    url = https_backend.url
    status, body = get(loop, lb.Backend(url), backend_ssl_context(
        settings(url, backend_ca=pki.ca)))
    assert status == 200 and b'"server": "a"' in body
    # Without it, the system's store does not know the CA: a connect failure, nothing sent.
    error, text = get(loop, lb.Backend(url), backend_ssl_context(settings(url)))
    assert isinstance(error, TLSError) and isinstance(error, ConnectError)
    assert error.sent is False and error.timeout is False
    assert str(error) == text == UNKNOWN_ISSUER
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    # Nor does a pool given no context at all (the system's store, as before).
    error, text = get(loop, lb.Backend(url), None)
    assert text == UNKNOWN_ISSUER
    assert https_backend.requests == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_the_name_checked_is_the_backends_server_name(loop, pki, https_backend):
    context = backend_ssl_context(settings(backend_ca=pki.ca))
    named = lb.Backend(https_backend.url, server_name=SERVER_NAME)
    assert get(loop, named, context)[0] == 200
    other = lb.Backend(https_backend.url, server_name="other.lbmiddleware.test")
    error, text = get(loop, other, context)
    assert isinstance(error, TLSError)
    assert text == ("TLS: certificate verify failed: Hostname mismatch, certificate is not "
                    "valid for 'other.lbmiddleware.test'.")


def test_a_post_that_failed_its_handshake_was_not_sent(pki, https_backend):
    error, _ = get("asyncio", lb.Backend(https_backend.url),
                   backend_ssl_context(settings()), method=b"POST", body=b"x" * 100)
    assert isinstance(error, TLSError) and error.sent is False and error.bytes_sent == 0
    assert https_backend.requests == 0


def test_an_http_port_behind_an_https_url_says_so():
    with BackendServer("plain") as plain:
        error, text = get("asyncio", lb.Backend(f"https://127.0.0.1:{plain.port}"), None)
    assert isinstance(error, TLSError) and error.sent is False
    assert text.startswith("TLS: ") and "(_ssl.c" not in text and "[SSL" not in text


# -- LB_BACKEND_VERIFY=false ------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_verification_off_takes_any_certificate_and_name_with_one_warning(
        loop, https_backend, caplog):
    unverified = settings(https_backend.url, backend_verify=False)
    with caplog.at_level(logging.WARNING, logger="lbmiddleware"):
        context = backend_ssl_context(unverified)
        assert backend_ssl_context(unverified) is context
        assert backend_verify_cert(unverified) == (False, None)
        other = lb.Backend(https_backend.url, server_name="other.lbmiddleware.test")
        assert get(loop, lb.Backend(https_backend.url), context)[0] == 200
        assert get(loop, other, context)[0] == 200
    warnings = [r for r in caplog.records if "LB_BACKEND_VERIFY" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert warnings[0].getMessage() == (
        f"LB_BACKEND_VERIFY is false: the certificates and names of https backends are not "
        f"verified ({https_backend.url}); for tests only")


# -- LB_BACKEND_CLIENT_CERT / LB_BACKEND_CLIENT_KEY ---------------------------------------------

@pytest.fixture(params=["TLSv1_2", "TLSv1_3"])
def mutual_backend(request, pki):
    """A backend asking for a client certificate the CA signed, speaking at most TLS 1.2
    (the verdict comes in the handshake) or 1.3 (it comes after the client's side of the
    handshake ended, in place of the first answer)."""
    context = pki.server_context(client_certificate=True)
    context.maximum_version = getattr(ssl.TLSVersion, request.param)
    with TLSBackendServer("m", context) as backend:
        yield backend


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_certificate_is_sent_to_a_backend_that_asks(loop, pki, mutual_backend):
    url = mutual_backend.url
    separate = settings(url, backend_ca=pki.ca, backend_client_cert=pki.client_cert,
                        backend_client_key=pki.client_key)
    together = settings(url, backend_ca=pki.ca, backend_client_cert=pki.client_both)
    for tls in (separate, together):
        assert get(loop, lb.Backend(url), backend_ssl_context(tls))[0] == 200
    assert mutual_backend.requests == 2


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_no_client_certificate_is_a_failed_handshake(loop, method, pki, mutual_backend):
    url = mutual_backend.url
    error, text = get(loop, lb.Backend(url), backend_ssl_context(
        settings(url, backend_ca=pki.ca)), method=method, body=b"b" * 10)
    assert isinstance(error, TLSError) and error.sent is False, repr(error)
    assert str(error) == text
    assert text in ("TLS: tlsv13 alert certificate required",       # TLS 1.3
                    "TLS: sslv3 alert handshake failure")           # TLS 1.2
    assert mutual_backend.requests == 0


# -- one context per pool ------------------------------------------------------------------

def test_one_context_per_pools_settings_shared_by_its_connections(pki, https_backend):
    private = settings(backend_ca=pki.ca)
    context = backend_ssl_context(private)
    assert backend_ssl_context(private) is context
    assert backend_ssl_context(settings(backend_ca=pki.ca)) is context     # equal settings
    assert backend_ssl_context(settings(backend_ca=pki.ca, max_fails=7)) is not context
    assert backend_ssl_context(settings()) is system_ssl_context()
    fresh = new_backend_ssl_context(private, alpn=["h2", "http/1.1"])
    assert fresh is not context and fresh.verify_mode == ssl.CERT_REQUIRED

    upstream = Upstream(ssl=context)
    pools = [upstream.pool(lb.Backend(https_backend.url)),
             upstream.pool(lb.Backend(f"https://localhost:{https_backend.port}"))]
    assert [pool.ssl for pool in pools] == [context, context]
    # the server name SNI and the certificate check use, public (the WebSocket client's too)
    assert [pool.server_hostname for pool in pools] == ["127.0.0.1", "localhost"]
    plain = upstream.pool(lb.Backend("http://127.0.0.1:1"))
    assert plain.ssl is None and plain.server_hostname is None
    named = Upstream(ssl=context).pool(lb.Backend(f"https://127.0.0.1:{https_backend.port}",
                                                  server_name=SERVER_NAME))
    assert named.server_hostname == SERVER_NAME and named.ssl is context
    for name in ("ssl", "server_hostname"):
        with pytest.raises(AttributeError):
            setattr(pools[0], name, None)           # read-only: every connection's
    # Connections: each pool opens its own, all with the one context.
    async def two_each():
        for pool in pools:
            for _ in range(2):
                response = await pool.request(b"GET", b"/", [], None)
                while await response.read():
                    pass
        upstream.close()
    asyncio.run(two_each())
    assert [pool.opened for pool in pools] == [1, 1]


def test_the_shared_context_speaks_http_1_1_only(pki):
    """The shared context offers ALPN http/1.1: the upstream client speaks nothing else,
    and a backend that would choose h2 must not."""
    server = pki.server_context()
    server.set_alpn_protocols(["h2", "http/1.1"])
    chosen = []

    class Recording(TLSBackendServer):
        def start(self):
            super().start()
            original = self._server.get_request

            def get_request():
                conn, addr = original()
                chosen.append(conn.selected_alpn_protocol())
                return conn, addr
            self._server.get_request = get_request
            return self

    with Recording("alpn", server) as backend:
        assert get("asyncio", lb.Backend(backend.url),
                   backend_ssl_context(settings(backend_ca=pki.ca)))[0] == 200
    assert chosen == ["http/1.1"]


# -- requests' verify= and cert= -------------------------------------------------------------

def test_verify_and_cert_for_requests(pki):
    assert backend_verify_cert(settings()) == (True, None)
    assert backend_verify_cert(settings(backend_ca=pki.ca)) == (pki.ca, None)
    assert backend_verify_cert(settings(backend_client_cert=pki.client_both)) == (
        True, pki.client_both)
    assert backend_verify_cert(settings(backend_client_cert=pki.client_cert,
                                        backend_client_key=pki.client_key)) == (
        True, (pki.client_cert, pki.client_key))


# -- files that cannot be loaded ---------------------------------------------------------------

def test_files_that_cannot_be_loaded_name_their_variable(pki, tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82 not PEM")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                         "-----END ENCRYPTED PRIVATE KEY-----\n")
    cases = [
        (dict(backend_ca=str(not_pem)),
         r"^LB_BACKEND_CA has value '.*ca.der': no PEM certificate in it"),
        (dict(backend_client_cert=str(not_pem)),
         r"^LB_BACKEND_CLIENT_CERT has value '.*ca.der': no PEM certificate in it"),
        (dict(backend_client_cert=pki.client_cert),
         r"^LB_BACKEND_CLIENT_CERT has value .*: no PEM private key in it \(set "
         r"LB_BACKEND_CLIENT_KEY to the key's file\)$"),
        (dict(backend_client_cert=pki.client_cert, backend_client_key=str(encrypted)),
         r"^LB_BACKEND_CLIENT_KEY has value .*: the key is encrypted"),
        (dict(backend_client_cert=pki.client_cert, backend_client_key=pki.server_key),
         r"^LB_BACKEND_CLIENT_CERT \(.*\) and its key \(.*\): the key is not the "
         r"certificate's$"),
    ]
    for tls, words in cases:
        with pytest.raises(lb.ConfigError, match=words):
            backend_ssl_context(settings(**tls))


# -- through the ASGI middleware -------------------------------------------------------------

def middleware(backends: str, **tls) -> LoadBalancerMiddleware:
    """The ASGI middleware on a pool with ``tls`` settings, its upstream client given that
    pool's context."""
    balancer = lb.Balancer(backends=backends, **tls)
    return LoadBalancerMiddleware(balancer=balancer, retries=1,
                                  upstream=Upstream(ssl=backend_ssl_context(balancer.settings)))


def test_through_the_middleware_an_untrusted_backend_is_a_502_naming_the_problem(
        pki, https_backend, caplog):
    async def scenario(app):
        return await Call(app, "GET", "/x").run()

    with caplog.at_level(logging.INFO, logger="lbmiddleware.attempts"):
        call = asyncio.run(scenario(middleware(https_backend.url)))
    assert call.status == 502
    (line,) = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    assert line == (f"GET attempt 1 on {https_backend.url} failed: {UNKNOWN_ISSUER}; "
                    f"not retried: every backend was tried"), line
    call = asyncio.run(scenario(middleware(https_backend.url, backend_ca=pki.ca)))
    assert call.status == 200
    assert https_backend.requests == 1


def test_through_the_middleware_a_post_whose_handshake_failed_is_retried(pki, mutual_backend):
    """A failed handshake is a connect failure: the POST never reached the backend, so it
    goes to the next one (a POST that may have been sent is not retried)."""
    with TLSBackendServer("b", pki.server_context()) as other:
        app = middleware(f"{mutual_backend.url}, {other.url}", policy="round_robin",
                         backend_ca=pki.ca)

        async def posts():
            return [await Call(app, "POST", "/p", body=b"payload").run() for _ in range(2)]
        calls = asyncio.run(posts())
    assert [call.status for call in calls] == [200, 200]
    assert mutual_backend.requests == 0 and other.requests == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_a_verdict_that_arrives_before_the_request_is_written_fails_it_at_once(loop, pki):
    """Under TLS 1.3 the backend's alert may be read before the request is written (the
    connect returns, the loop turns): the request then fails with it at once, not after
    the read timeout on a connection that is gone."""
    context = backend_ssl_context(settings(backend_ca=pki.ca))

    async def scenario(url):
        pool = Upstream(ssl=context, read_timeout=30.0).pool(lb.Backend(url))
        connection = await pool._connect(asyncio.get_running_loop())
        for _ in range(500):
            if connection.closed:
                break
            await asyncio.sleep(0.01)
        assert connection.closed, "the backend's alert never came"
        try:
            await asyncio.wait_for(
                connection.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, 0, False, 30.0),
                10.0)
        except UpstreamError as exc:
            return exc
        raise AssertionError("the request did not fail")

    with TLSBackendServer("m", pki.server_context(client_certificate=True)) as backend:
        error = run(loop, scenario(backend.url))
    assert isinstance(error, TLSError) and error.sent is False
    assert str(error) == "TLS: tlsv13 alert certificate required"
