"""TLS in the gateway process (issue 14, item 5): ``LB_TLS_CERT`` / ``LB_TLS_KEY`` make it
serve https under granian and under uvicorn, with a certificate a private CA made in the
test signed; a pair that cannot serve is refused at the start."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

from ..support.gateway import GATEWAY_SERVERS, GatewayProcess
from ..support.servers import BackendServer
from ..support.tls import PKI, TLSBackendServer, make_pki


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


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
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


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
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


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
@pytest.mark.parametrize("case", ["ca_not_pem", "client_key_mismatch", "ca_unused"])
def test_backend_tls_files_that_cannot_be_loaded_are_refused_before_the_banner(
        server, case, pki, tmp_path):
    """Found before the server starts (not after the banner under uvicorn, nor as a
    traceback in granian's worker): the usual error, exit 2."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    environ = {"LB_SERVER": server, "LB_BACKENDS": "https://127.0.0.1:9"}
    if case == "client_key_mismatch":
        environ.update(LB_BACKEND_CLIENT_CERT=pki.client_cert,
                       LB_BACKEND_CLIENT_KEY=pki.server_key)
        words = r"LB_BACKEND_CLIENT_CERT \(.*\) and its key \(.*\): the key is not the cert"
    else:
        environ["LB_BACKEND_CA"] = str(not_pem)
        words = r"LB_BACKEND_CA has value .*not.pem': no PEM certificate in it"
    if case == "ca_unused":     # verification off: the CA file is not used, nor checked
        environ["LB_BACKEND_VERIFY"] = "false"
        with TLSGateway(environ) as gateway:
            assert "listening on" in gateway.banner
        return
    done = subprocess.run([sys.executable, "-m", "lbmiddleware", "serve"],
                          env=GatewayProcess(environ).environ,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert re.search(r"python -m lbmiddleware serve: error: " + words, done.stderr), \
        done.stderr
    assert "Traceback" not in done.stderr and "listening on" not in done.stdout


# -- the gateway's https backends: LB_BACKEND_CA, LB_BACKEND_VERIFY, client certificates ------

def attempt_lines(output: str) -> list[str]:
    return [line.split(" lbmiddleware.attempts: ", 1)[1].rstrip("\n")
            for line in output.splitlines() if " lbmiddleware.attempts: " in line]


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_an_https_backend_signed_by_a_private_ca(server, pki):
    with TLSBackendServer("a", pki.server_context()) as backend:
        environ = {"LB_SERVER": server, "LB_BACKENDS": backend.url}
        with GatewayProcess({**environ, "LB_BACKEND_CA": pki.ca}) as gateway:
            response = requests.get(f"{gateway.url}/x", timeout=5)
            assert (response.status_code, response.json()["server"]) == (200, "a")
        # Without the CA: the system's store does not know it, a 502 naming the problem.
        with GatewayProcess(environ) as gateway:
            assert requests.get(f"{gateway.url}/x", timeout=5).status_code == 502
            gateway.wait_for_output(" lbmiddleware.attempts: ")
            output = gateway.stop()
        assert attempt_lines(output) == [
            f"GET attempt 1 on {backend.url} failed: TLS: certificate verify failed: unable "
            f"to get local issuer certificate; not retried: every backend was tried"]
        # Verification off: it answers, and the gateway said once that nothing is verified.
        with GatewayProcess({**environ, "LB_BACKEND_VERIFY": "false"}) as gateway:
            for _ in range(3):
                assert requests.get(f"{gateway.url}/x", timeout=5).status_code == 200
            output = gateway.stop()
        warnings = [line for line in output.splitlines() if "LB_BACKEND_VERIFY" in line]
        assert len(warnings) == 1 and " WARNING lbmiddleware: " in warnings[0]
        assert backend.requests == 4


@pytest.mark.parametrize("server", GATEWAY_SERVERS)
def test_a_backend_asking_for_a_client_certificate(server, pki):
    with TLSBackendServer("m", pki.server_context(client_certificate=True)) as mutual, \
            TLSBackendServer("a", pki.server_context()) as other:
        with GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": mutual.url,
                             "LB_BACKEND_CA": pki.ca, "LB_BACKEND_CLIENT_CERT": pki.client_cert,
                             "LB_BACKEND_CLIENT_KEY": pki.client_key}) as gateway:
            response = requests.post(f"{gateway.url}/p", data=b"body", timeout=5)
            assert (response.status_code, response.json()["server"]) == (200, "m")
        # Without one: the handshake fails, a connect failure, so even a POST goes on to
        # the next backend.
        with GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": f"{mutual.url}, {other.url}",
                             "LB_BACKEND_CA": pki.ca, "LB_POLICY": "round_robin"}) as gateway:
            answers = [requests.post(f"{gateway.url}/p", data=b"body", timeout=5)
                       for _ in range(2)]
            assert [(r.status_code, r.json()["server"]) for r in answers] == [(200, "a")] * 2
            gateway.wait_for_output(" lbmiddleware.attempts: ")
            output = gateway.stop()
        assert f"POST attempt 1 on {mutual.url} failed: TLS: tlsv13 alert certificate " \
               f"required; retrying on {other.url}" in attempt_lines(output)
        assert (mutual.requests, other.requests) == (1, 2)
