"""Certificates made in the test, and https backends that use them.

:func:`make_pki` writes, with trustme (a private CA in memory, leaf certificates with the
extensions real ones have: subjectAltName, serverAuth and clientAuth usages), the PEM files
of :class:`PKI`: a private CA nobody's trust store knows, a server certificate it signed for
``127.0.0.1``, ``localhost`` and :data:`SERVER_NAME`, and a client certificate it signed.
Making them costs milliseconds, so each test module makes its own in a temporary folder.

:class:`TLSBackendServer` is the echo :class:`~.servers.BackendServer` behind TLS, optionally
asking for a client certificate the CA signed (mutual TLS).

The fixtures the https tests share (tests/conftest.py registers them): ``pki`` and
``other_pki`` (one per test module), ``https_backend`` and ``mutual_backend``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from .servers import BackendServer

__all__ = ["PKI", "make_pki", "TLSBackendServer", "SERVER_NAME",
           "pki", "other_pki", "https_backend", "mutual_backend"]

# The DNS name on the server certificate beside 127.0.0.1 (a backend reached by address
# whose server name is on its certificate).
SERVER_NAME = "backend.lbmiddleware.test"


@dataclasses.dataclass(frozen=True)
class PKI:
    """PEM files: ``ca`` (the private CA's certificate), ``server_cert`` / ``server_key``,
    ``client_cert`` / ``client_key``, and ``client_both`` (the client certificate followed
    by its key, in one file)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_both: str

    def server_context(self, *, client_certificate: bool = False) -> ssl.SSLContext:
        """A server's context with the server certificate; ``client_certificate``: the
        client must present one the CA signed."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def make_pki(folder: pathlib.Path) -> PKI:
    """A private CA, a server certificate and a client certificate, written in ``folder``."""
    ca = trustme.CA(organization_name="lbmiddleware tests")
    server = ca.issue_cert("127.0.0.1", "localhost", SERVER_NAME)
    client = ca.issue_cert("client.lbmiddleware.test")
    paths = {name: str(folder / f"{name}.pem") for name in (
        "ca", "server_cert", "server_key", "client_cert", "client_key", "client_both")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["server_key"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["server_cert"], append=True)
    client.private_key_pem.write_to_path(paths["client_key"])
    for blob in client.cert_chain_pems:
        blob.write_to_path(paths["client_cert"], append=True)
        blob.write_to_path(paths["client_both"], append=True)
    client.private_key_pem.write_to_path(paths["client_both"], append=True)
    return PKI(**paths)


class TLSBackendServer(BackendServer):
    """The echo backend behind TLS (``https://127.0.0.1:PORT``) with ``context`` (a server
    context: :meth:`PKI.server_context`). The handshake is made as a connection is accepted
    (``connections`` counts those that succeeded); one that fails (the client refused the
    certificate, or sent none when asked) is dropped without a request (``requests`` stays
    0), closed as careful servers close (nginx's lingering close): what the client sent is
    read and dropped until it closes, so that the alert reaches it, not a reset (a socket
    closed with unread bytes sends a reset, which the client may see before the alert:
    its next write fails with ``ECONNRESET``).
    """

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        super().__init__(name)
        self.context = context

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _prepare(self, server: Any) -> None:
        # Before the server's loop starts: wrapping detaches the plain socket (its fileno
        # becomes -1), and a loop registering it meanwhile failed ("Invalid file
        # descriptor: -1": the backend never served, once in a loaded CI run).
        server.socket = _Handshaking(self.context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Another private CA: its files are valid, and trust nothing the backends show."""
    return make_pki(tmp_path_factory.mktemp("other"))


@pytest.fixture
def https_backend(pki: PKI) -> Iterator[TLSBackendServer]:
    with TLSBackendServer("a", pki.server_context()) as backend:
        yield backend


@pytest.fixture
def mutual_backend(pki: PKI) -> Iterator[TLSBackendServer]:
    """An https backend that asks for a client certificate the CA signed."""
    with TLSBackendServer("m", pki.server_context(client_certificate=True)) as backend:
        yield backend


class _Handshaking:
    """A listening TLS socket whose ``accept`` makes the handshake, and closes a connection
    whose handshake failed with a lingering close."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock

    def accept(self) -> tuple[ssl.SSLSocket, Any]:
        conn, address = self._sock.accept()
        try:
            conn.settimeout(5.0)
            conn.do_handshake()
            conn.settimeout(None)
        except OSError:
            _linger(conn)
            raise
        return conn, address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _linger(conn: ssl.SSLSocket) -> None:
    """Shut the sending side, read and drop what comes until the client closes (at most
    2 s), then close."""
    try:
        conn.settimeout(2.0)
        conn.shutdown(socket.SHUT_WR)       # (the TLS layer dropped: a plain socket now)
        while conn.recv(65536):
            pass
    except OSError:
        pass
    finally:
        conn.close()
