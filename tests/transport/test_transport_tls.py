"""The pool's backend TLS settings in the httpx transports (issue 14, item 5): the default
inner transports reach https backends with ``backend_ca`` / ``LB_BACKEND_CA``,
``backend_verify``, ``backend_client_cert`` / ``backend_client_key`` (a context from
upstream/tls.py's ``new_backend_ssl_context``, the one copy of the rule), unless the user gave
``verify=`` / ``cert=`` or an ``inner_transport``; requests to other origins keep httpx's own
verification. Real https backends on loopback, certificates from a private CA made in the
test (tests/support/tls.py); the sync and the async transport alike."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import httpx
import pytest
import trustme

import lbmiddleware as lb
from lbmiddleware.transport import AsyncLoadBalancingTransport, LoadBalancingTransport

from ..support.h2_server import H2Server
from ..support.tls import TLSBackendServer

VHOST = "https://svc"
KINDS = ["sync", "async"]


def get(kind: str, urls: list[str], target: str = f"{VHOST}/x", method: str = "GET",
        **options: Any) -> httpx.Response | httpx.HTTPError:
    """One request through a new transport of ``kind`` over ``urls`` (``options``: its
    keywords): the response read, or the httpx error it raised."""
    options.setdefault("origin", VHOST)
    if kind == "sync":
        with httpx.Client(transport=LoadBalancingTransport(urls, **options)) as client:
            try:
                response = client.request(method, target, content=b"body" if method ==
                                          "POST" else None)
                response.read()
                return response
            except httpx.HTTPError as exc:
                return exc

    async def call() -> httpx.Response | httpx.HTTPError:
        async with httpx.AsyncClient(
                transport=AsyncLoadBalancingTransport(urls, **options)) as client:
            try:
                response = await client.request(method, target, content=b"body" if method ==
                                                "POST" else None)
                await response.aread()
                return response
            except httpx.HTTPError as exc:
                return exc

    return asyncio.run(call())


def served_by(answer: httpx.Response | httpx.HTTPError) -> str:
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200
    return str(answer.json()["server"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_private_ca_is_trusted_with_backend_ca_and_not_without(kind, pki, https_backend):
    assert served_by(get(kind, [https_backend.url], backend_ca=pki.ca)) == "a"
    refused = get(kind, [https_backend.url], retries=0)
    assert isinstance(refused, httpx.ConnectError)
    assert "certificate verify failed" in str(refused)
    assert https_backend.requests == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_handshake_sends_even_a_post_to_another_backend(kind, pki, https_backend):
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(stranger)
    with TLSBackendServer("x", stranger) as untrusted:
        answer = get(kind, [untrusted.url, https_backend.url], method="POST",
                     backend_ca=pki.ca)
        assert served_by(answer) == "a" and untrusted.requests == 0


@pytest.mark.parametrize("kind", KINDS)
def test_verify_off_reaches_an_untrusted_backend(kind, https_backend):
    assert served_by(get(kind, [https_backend.url], backend_verify=False)) == "a"


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_certificate_for_a_backend_that_asks_for_one(kind, pki, mutual_backend):
    assert served_by(get(kind, [mutual_backend.url], backend_ca=pki.ca,
                         backend_client_cert=pki.client_cert,
                         backend_client_key=pki.client_key)) == "m"
    assert served_by(get(kind, [mutual_backend.url], backend_ca=pki.ca,
                         backend_client_cert=pki.client_both)) == "m"
    refused = get(kind, [mutual_backend.url], backend_ca=pki.ca, retries=0)
    assert isinstance(refused, httpx.TransportError)


@pytest.mark.parametrize("kind", KINDS)
def test_the_users_verify_cert_and_inner_transport_win(kind, pki, other_pki, https_backend,
                                                       mutual_backend):
    others = ssl.create_default_context(cafile=other_pki.ca)
    refused = get(kind, [https_backend.url], backend_ca=pki.ca, verify=others, retries=0)
    assert isinstance(refused, httpx.ConnectError)
    ours = ssl.create_default_context(cafile=pki.ca)
    assert served_by(get(kind, [https_backend.url], backend_ca=other_pki.ca,
                         verify=ours)) == "a"
    ours_with_cert = ssl.create_default_context(cafile=pki.ca)
    ours_with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    assert served_by(get(kind, [mutual_backend.url], verify=ours_with_cert)) == "m"
    inner = (httpx.HTTPTransport if kind == "sync" else httpx.AsyncHTTPTransport)
    assert served_by(get(kind, [https_backend.url], backend_ca=other_pki.ca,
                         inner_transport=lambda backend: inner(verify=ours))) == "a"


@pytest.mark.parametrize("kind", KINDS)
def test_other_origins_keep_httpxs_own_verification(kind, pki, https_backend):
    """The pool's CA is trusted for its backends only: a request to another origin through
    the same client (a redirect to a CDN, another service) is verified as plain httpx
    verifies it."""
    with TLSBackendServer("o", pki.server_context()) as elsewhere:
        assert served_by(get(kind, [https_backend.url], backend_ca=pki.ca)) == "a"
        refused = get(kind, [https_backend.url], target=f"{elsewhere.url}/y",
                      backend_ca=pki.ca)
        assert isinstance(refused, httpx.ConnectError)
        assert "certificate verify failed" in str(refused)
        assert elsewhere.requests == 0


def test_a_shared_balancers_settings_are_the_pools(pki, https_backend):
    pool = lb.Balancer([https_backend.url], backend_ca=pki.ca)
    try:
        with httpx.Client(transport=LoadBalancingTransport(balancer=pool)) as client:
            assert client.get(f"{VHOST}/x").json()["server"] == "a"
    finally:
        pool.close()


def test_http2_over_tls_with_the_pools_ca(pki):
    """httpcore sets its ALPN on the context it is given: the transport's is its own, so
    HTTP/2 is offered to the backend and not to the proxies' upstream client."""
    server = H2Server("h2", (pki.server_cert, pki.server_key)).start()
    try:
        answer = get("sync", [server.url], backend_ca=pki.ca, http2=True)
        assert isinstance(answer, httpx.Response) and answer.json()["http_version"] == "2"
    finally:
        server.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_client_certificate_is_a_connect_failure_in_the_proxies_words(
        kind, pki, mutual_backend, https_backend, caplog):
    """Under TLS 1.3 the backend refuses a missing client certificate after the client's
    side of the handshake ended, on the first read: the request never reached its
    application, so even a POST goes to the next backend; the failed attempt says why as
    the proxies say it (the async transport used to let the raw ssl.SSLError through)."""
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    answer = get(kind, [mutual_backend.url, https_backend.url], method="POST",
                 backend_ca=pki.ca)
    assert served_by(answer) == "a"
    [line] = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    assert f"POST attempt 1 on {mutual_backend.url} failed: TLS: tlsv13 alert certificate " \
           "required;" in line
