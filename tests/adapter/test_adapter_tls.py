"""The pool's backend TLS settings in the requests adapter (issue 14, item 5):
``backend_ca`` / ``LB_BACKEND_CA``, ``backend_verify``, ``backend_client_cert`` /
``backend_client_key`` become requests' ``verify=`` and ``cert=`` (upstream/tls.py's
``backend_verify_cert``, the one copy of the rule), unless the caller gave its own. Real
https backends on loopback with certificates a private CA made in the test
(tests/support/tls.py)."""

from __future__ import annotations

import logging
import ssl

import pytest
import requests
import trustme

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.wsgi import WSGILoadBalancer

from ..support.tls import PKI, TLSBackendServer
from ..support.wsgi_client import call, environ_for

VHOST = "https://svc"


def session(*backends, balancer: lb.Balancer | None = None, **settings) -> requests.Session:
    client = requests.Session()
    if balancer is not None:
        client.mount(f"{VHOST}/", LoadBalancingAdapter(balancer=balancer))
    else:
        client.mount(f"{VHOST}/", LoadBalancingAdapter([b.url for b in backends], **settings))
    return client


def test_a_private_ca_is_trusted_with_backend_ca(pki, https_backend):
    with session(https_backend, backend_ca=pki.ca) as client:
        answer = client.get(f"{VHOST}/x", timeout=5)
    assert answer.status_code == 200 and answer.json()["server"] == "a"


def test_without_it_the_certificate_is_refused_naming_why(https_backend):
    with session(https_backend, retries=0) as client:
        with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
            client.get(f"{VHOST}/x", timeout=5)
        adapter = client.get_adapter(f"{VHOST}/x")
        row = adapter.balancer.stats()[0]
        assert (row["requests"], row["failures"]) == (1, 1)     # the backend's failure
    assert https_backend.requests == 0


def test_a_failed_handshake_is_retried_on_another_backend_for_a_post(pki, https_backend):
    """A TLS failure is a connect failure: the request never reached the backend, so even a
    POST goes to the next one."""
    with TLSBackendServer("o", pki.server_context()) as trusted:
        with TLSBackendServer("x", _wrong_server_context(pki)) as untrusted:
            with session(untrusted, trusted, backend_ca=pki.ca) as client:
                answer = client.post(f"{VHOST}/x", data=b"body", timeout=5)
            assert answer.json()["server"] == "o" and answer.json()["body"] == "body"
            assert untrusted.requests == 0


def _wrong_server_context(pki: PKI) -> ssl.SSLContext:
    """A server context whose certificate another CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_the_failed_attempt_says_the_certificate_problem_in_the_proxies_words(
        https_backend, caplog):
    caplog.set_level(logging.INFO, logger="lbmiddleware.attempts")
    with session(https_backend, retries=0) as client:
        with pytest.raises(requests.exceptions.SSLError):
            client.get(f"{VHOST}/x", timeout=5)
    [line] = [r.getMessage() for r in caplog.records if r.name == "lbmiddleware.attempts"]
    # (tests/upstream/test_tls.py: the ASGI middleware's words)
    assert f"on {https_backend.url} failed: TLS: certificate verify failed: unable to get " \
           "local issuer certificate;" in line


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_off_reaches_an_untrusted_backend_and_warns_once(https_backend, caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    with session(https_backend, backend_verify=False) as client:
        for _ in range(3):
            assert client.get(f"{VHOST}/x", timeout=5).status_code == 200
    warnings = [r for r in caplog.records if "LB_BACKEND_VERIFY is false" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("in_one_file", [False, True])
def test_a_client_certificate_for_a_backend_that_asks_for_one(pki, mutual_backend,
                                                              in_one_file):
    tls = ({"backend_client_cert": pki.client_both} if in_one_file else
           {"backend_client_cert": pki.client_cert, "backend_client_key": pki.client_key})
    with session(mutual_backend, backend_ca=pki.ca, **tls) as client:
        assert client.get(f"{VHOST}/x", timeout=5).json()["server"] == "m"
    with session(mutual_backend, backend_ca=pki.ca, retries=0) as client:
        with pytest.raises(requests.exceptions.RequestException):
            client.get(f"{VHOST}/x", timeout=5)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_the_callers_own_verify_and_cert_win(pki, other_pki, https_backend, mutual_backend):
    with session(https_backend, backend_ca=pki.ca, retries=0) as client:
        with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
            client.get(f"{VHOST}/x", timeout=5, verify=other_pki.ca)
        assert client.get(f"{VHOST}/x", timeout=5, verify=pki.ca).status_code == 200
    with session(https_backend, retries=0) as client:      # the pool's: the library's store
        assert client.get(f"{VHOST}/x", timeout=5, verify=False).status_code == 200
    with session(mutual_backend, backend_ca=pki.ca, backend_client_cert=other_pki.client_cert,
                 backend_client_key=other_pki.client_key, retries=0) as client:
        answer = client.get(f"{VHOST}/x", timeout=5, cert=(pki.client_cert, pki.client_key))
        assert answer.status_code == 200


def test_the_environments_ca_bundle_is_not_the_callers_choice(pki, other_pki, https_backend,
                                                              monkeypatch):
    """requests puts REQUESTS_CA_BUNDLE in ``verify`` when the caller gave none: the pool's
    own CA, set for these backends, is more particular than a process-wide bundle."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", other_pki.ca)
    with session(https_backend, backend_ca=pki.ca) as client:
        assert client.get(f"{VHOST}/x", timeout=5).status_code == 200


def test_a_shared_balancers_settings_are_the_pools(pki, https_backend):
    pool = lb.Balancer([https_backend.url], backend_ca=pki.ca)
    try:
        with session(balancer=pool) as client:
            assert client.get(f"{VHOST}/x", timeout=5).status_code == 200
    finally:
        pool.close()


def test_the_wsgi_middleware_reaches_https_backends_with_the_pools_settings(pki,
                                                                           mutual_backend):
    middleware = WSGILoadBalancer(None, backends=[mutual_backend.url], backend_ca=pki.ca,
                                  backend_client_cert=pki.client_cert,
                                  backend_client_key=pki.client_key)
    try:
        result = call(middleware, environ_for("GET", "/x"))
    finally:
        middleware.close()
    assert result.code == 200 and result.json()["server"] == "m"
