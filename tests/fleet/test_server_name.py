"""A backend reached by address that answers to a name (``Backend.server_name``, set by DNS
sources): every front-end sends ``Host: backend.authority`` (unless ``preserve_host``), and
over TLS sends the name as SNI and verifies the certificate against it, not the address.

The backend is a real TLS server on 127.0.0.1 with the test certificate, which names
:data:`CERTIFICATE_NAME` as well as the address; it records each request head and the SNI
it was given."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter
from lbmiddleware.asgi import LoadBalancerMiddleware
from lbmiddleware.upstream import Upstream
from lbmiddleware.wsgi import WSGILoadBalancer

from ..conftest import CERTIFICATE_NAME
from ..support import asgi_client, wsgi_client
from ..support.raw_backends import ok

VHOST = "http://orders"
NOT_ON_CERTIFICATE = "other.lbmiddleware.test"


def through_adapter(backend: lb.Backend, cert: str, **options) -> tuple[int, str | None]:
    session = requests.Session()
    session.mount(f"{VHOST}/", LoadBalancingAdapter([backend], retries=0, **options))
    try:
        response = session.get(f"{VHOST}/x", verify=cert, timeout=5)
    except requests.RequestException as exc:
        return 502, type(exc).__name__
    finally:
        session.close()
    return response.status_code, None


def through_asgi(backend: lb.Backend, cert: str, **options) -> tuple[int, str | None]:
    upstream = Upstream(ssl=ssl.create_default_context(cafile=cert))
    app = LoadBalancerMiddleware(None, backends=[backend], upstream=upstream, **options)

    async def run() -> int | None:
        call = await asgi_client.Call(app, "GET", "/x", host="front.example").run()
        upstream.close()
        return call.status

    return asyncio.run(run()) or 0, None


def through_wsgi(backend: lb.Backend, cert: str, **options) -> tuple[int, str | None]:
    app = WSGILoadBalancer(None, backends=[backend], verify=cert, **options)
    try:
        environ = wsgi_client.environ_for("GET", "/x", HTTP_HOST="front.example")
        result = wsgi_client.call(app, environ, validate=False)    # (a bare raw answer)
    finally:
        app.close()
    return result.code, None


FRONT_ENDS = {"adapter": through_adapter, "asgi": through_asgi, "wsgi": through_wsgi}


@pytest.fixture
def tls_backend(raw_backend, certificate):
    """A TLS backend on 127.0.0.1 answering 200 to everything; ``.sni`` records the names
    clients sent."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    backend = raw_backend(*([ok(b"fine")] for _ in range(8)), tls=context)
    backend.sni = names
    return backend


def host_of(head: bytes) -> str:
    [host] = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
              if line.lower().startswith(b"host:")]
    return host


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_tls_names_the_server_and_host_is_its_authority(front_end, tls_backend, certificate):
    backend = lb.Backend(tls_backend.url, server_name=CERTIFICATE_NAME)
    assert backend.host == "127.0.0.1"
    assert FRONT_ENDS[front_end](backend, certificate[0]) == (200, None)
    assert tls_backend.sni == [CERTIFICATE_NAME]
    assert host_of(tls_backend.heads[0]) == f"{CERTIFICATE_NAME}:{tls_backend.port}"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_the_certificate_is_verified_against_the_server_name(front_end, tls_backend,
                                                              certificate):
    """The certificate is valid for 127.0.0.1 (the address connected to) but not for the
    server name: the name is what counts, so no request reaches the backend."""
    backend = lb.Backend(tls_backend.url, server_name=NOT_ON_CERTIFICATE)
    status, _ = FRONT_ENDS[front_end](backend, certificate[0])
    assert status == 502
    assert tls_backend.sni[:1] == [NOT_ON_CERTIFICATE]
    assert tls_backend.heads == []


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_without_a_server_name_the_address_is_verified_as_before(front_end, tls_backend,
                                                                  certificate):
    backend = lb.Backend(tls_backend.url)
    assert FRONT_ENDS[front_end](backend, certificate[0]) == (200, None)
    assert host_of(tls_backend.heads[0]) == f"127.0.0.1:{tls_backend.port}"


@pytest.mark.parametrize("front_end", ["asgi", "wsgi"])
def test_preserve_host_keeps_the_clients_host(front_end, tls_backend, certificate):
    backend = lb.Backend(tls_backend.url, server_name=CERTIFICATE_NAME)
    assert FRONT_ENDS[front_end](backend, certificate[0], preserve_host=True) == (200, None)
    assert host_of(tls_backend.heads[0]) == "front.example"
    assert tls_backend.sni == [CERTIFICATE_NAME]        # TLS still names the server


def test_the_adapter_with_preserve_host_sends_the_virtual_host(tls_backend, certificate):
    backend = lb.Backend(tls_backend.url, server_name=CERTIFICATE_NAME)
    assert through_adapter(backend, certificate[0], preserve_host=True) == (200, None)
    assert host_of(tls_backend.heads[0]) == "orders"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_plain_http_sends_the_server_name_as_host(front_end, raw_backend):
    backend = raw_backend([ok(b"fine")])
    named = lb.Backend(backend.url, server_name="orders.internal")
    assert FRONT_ENDS[front_end](named, "")[0] == 200
    assert host_of(backend.heads[0]) == f"orders.internal:{backend.port}"
