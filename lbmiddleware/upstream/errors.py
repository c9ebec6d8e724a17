"""The upstream client's errors: one hierarchy that says what a retry rule needs to know.

``sent``: may the request have reached the backend? (``False``: a connect failure, safe
to retry for any method.) ``timeout``: was it a timeout (a 504 rather than a 502)?
``deadline``: the timeout that ran out was the caller's ``head_timeout`` (a request's
deadline across its attempts), not the pool's own connect or read timeout. ``bytes_sent``:
the request body bytes written before the failure.
"""

from __future__ import annotations

__all__ = [
    "UpstreamError", "ConnectError", "ConnectTimeout", "TLSError", "ReadTimeout",
    "ProtocolError", "StaleConnection",
]


class UpstreamError(Exception):
    """An attempt failed. ``sent``: the request may have reached the backend."""

    sent = True
    timeout = False
    deadline = False        # set on an instance: the caller's head_timeout ran out
    bytes_sent = 0          # set on an instance: request body bytes written before it


class ConnectError(UpstreamError):
    """The connection could not be opened: nothing was sent."""

    sent = False


class ConnectTimeout(ConnectError):
    """Opening the connection took longer than ``connect_timeout``."""

    timeout = True


class TLSError(ConnectError):
    """The TLS handshake failed: a certificate refused by either side (the backend's not
    verified, ours not accepted), or no protocol in common. The request never reached the
    backend's application, whatever bytes were written (under TLS 1.3 the backend's verdict
    on a client certificate comes after the client has sent its request: it is still a
    failed handshake). Its text names the problem (``TLS: certificate verify failed: ...``)."""


class ReadTimeout(UpstreamError):
    """No response head (or no next body bytes) within ``read_timeout``."""

    timeout = True


class ProtocolError(UpstreamError):
    """The connection closed or broke, or the backend sent something that is not HTTP/1.x."""


class StaleConnection(ProtocolError):
    """A reused keep-alive connection closed before any response byte arrived: the pool
    may send the request again on a fresh connection (the backend never saw it)."""
