"""Active health checks of https backends (issue 14, item 5): the pool's own probes (the
fleet's Balancer with ``health_check`` set) reach its backends with the backend TLS settings,
as the proxies do: a backend whose certificate a private CA signed comes up with
``LB_BACKEND_CA``, stays down without it (the reason names the certificate problem), comes up
with ``LB_BACKEND_VERIFY=false``; a backend asking for a client certificate comes up with
``LB_BACKEND_CLIENT_CERT`` / ``LB_BACKEND_CLIENT_KEY`` only."""

from __future__ import annotations

import functools

import lbmiddleware as lb

from ..support import waiting
from ..support.tls import TLSBackendServer

until = functools.partial(waiting.until, limit=5.0)

UNKNOWN_ISSUER = "TLS: certificate verify failed: unable to get local issuer certificate"


def health(url: str, probes: int = 2, **tls) -> dict:
    """The health_check row of ``url`` in a pool probing it every 50 ms, once ``probes``
    probes ended (a static backend starts up: the first failure takes it down, a pass
    keeps it up; ``last`` is the last probe's result)."""
    pool = lb.Balancer(backends=url, health_check="/healthz", health_check_interval="50ms",
                       health_check_timeout="2s", health_check_rise=1, **tls)
    seen: list[dict] = []

    def checked() -> bool:
        row = pool.stats()[0]["health_check"]
        seen.append(row)
        return row["passes_total"] + row["fails_total"] >= probes
    try:
        until(checked, what=f"{probes} probes of {url}")
    finally:
        pool.close()
    return seen[-1]


def test_a_private_ca_brings_an_https_backend_up_and_its_absence_keeps_it_down(pki):
    with TLSBackendServer("a", pki.server_context()) as backend:
        row = health(backend.url, backend_ca=pki.ca)
        assert (row["status"], row["last"], row["fails_total"]) == ("up", "status 200", 0)
        row = health(backend.url)
        assert (row["status"], row["last"], row["passes_total"]) == ("down", UNKNOWN_ISSUER, 0)
        row = health(backend.url, backend_verify=False)
        assert (row["status"], row["last"], row["fails_total"]) == ("up", "status 200", 0)
        # the probes that passed reached it (one kept connection per pool), the others not
        assert backend.connections == 2
        assert {path for _, path, _, _ in backend.received} == {"/healthz"}


def test_a_client_certificate_is_sent_by_the_probes(pki):
    with TLSBackendServer("m", pki.server_context(client_certificate=True)) as backend:
        row = health(backend.url, backend_ca=pki.ca)
        assert (row["status"], row["last"], row["passes_total"]) == (
            "down", "TLS: tlsv13 alert certificate required", 0)
        assert backend.requests == 0
        row = health(backend.url, backend_ca=pki.ca, backend_client_cert=pki.client_cert,
                     backend_client_key=pki.client_key)
        assert (row["status"], row["last"], row["fails_total"]) == ("up", "status 200", 0)
        assert backend.requests >= 2
