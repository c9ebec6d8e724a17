"""TLS in the gateway process (issue 14, item 5): ``LB_TLS_CERT`` / ``LB_TLS_KEY`` make it
serve https under granian and under uvicorn, with a certificate a private CA made in the
test signed; a pair that cannot serve is refused at the start."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

from ..support.gateway import GatewayProcess
from ..support.servers import BackendServer
from ..support.tls import PKI, make_pki

SERVERS = ["granian", "uvicorn"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TLSGateway(GatewayProcess):
    """A :class:`GatewayProcess` serving https: its banner may say ``http://`` or
    ``https://`` (the banner is another part's), its :attr:`url` is https."""

    def read_banner(self, line: str) -> bool:
        match = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", line)
        if not match:
            return False
        self.banner, self.port = line, int(match.group(1))
        return True

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.mark.parametrize("server", SERVERS)
def test_the_gateway_terminates_tls(server, pki):
    with BackendServer("a") as backend, TLSGateway({
            "LB_SERVER": server, "LB_BACKENDS": backend.url,
            "LB_TLS_CERT": pki.server_cert, "LB_TLS_KEY": pki.server_key}) as gateway:
        response = requests.get(f"{gateway.url}/x?y=1", verify=pki.ca, timeout=5)
        assert response.status_code == 200
        echo = response.json()
        assert (echo["server"], echo["path"]) == ("a", "/x?y=1")
        assert echo["headers"]["X-Forwarded-Proto"] == "https"
        # A second request on the same TLS connection (keep-alive through the session).
        # (verify= on each call: REQUESTS_CA_BUNDLE, when set, wins over Session.verify)
        with requests.Session() as session:
            assert [session.get(f"{gateway.url}/{n}", verify=pki.ca, timeout=5).json()["path"]
                    for n in range(3)] == ["/0", "/1", "/2"]
        # A client that does not trust the private CA refuses the certificate...
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{gateway.url}/x", timeout=5)
        # ... and plain http to the https port gets no answer.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{gateway.port}/x", timeout=5)
        # Neither reached the backend.
        assert backend.requests == 4


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", ["mismatch", "not_pem", "encrypted"])
def test_a_certificate_and_key_that_cannot_serve_are_refused_at_the_start(
        server, case, pki, tmp_path):
    cert, key = pki.server_cert, pki.server_key
    if case == "mismatch":
        key, words = pki.client_key, "LB_TLS_KEY (.*): the key is not the certificate's"
    elif case == "not_pem":
        cert = str(tmp_path / "cert.der")
        with open(cert, "wb") as file:
            file.write(b"\x30\x82\x01\x0a not a PEM file")
        words = "LB_TLS_CERT has value .*cert.der': no PEM certificate in it"
    else:
        key = str(tmp_path / "encrypted.pem")
        with open(key, "w") as file:
            file.write("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                       "-----END ENCRYPTED PRIVATE KEY-----\n")
        words = "LB_TLS_KEY has value .*encrypted.pem': the key is encrypted"
    environ = GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": "http://127.0.0.1:9",
                              "LB_TLS_CERT": cert, "LB_TLS_KEY": key}).environ
    done = subprocess.run([sys.executable, "-m", "lbmiddleware", "serve"], env=environ,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert re.search(words, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
