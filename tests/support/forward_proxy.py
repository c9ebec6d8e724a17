"""A forward HTTP proxy on loopback (what ``HTTP_PROXY`` names), small and real: it takes a
request in absolute form (``GET http://127.0.0.1:8001/x HTTP/1.1``), sends it on to that
origin over a connection of its own, and passes the answer back; ``forwarded`` lists the URLs
it forwarded, in order, so a test sees which requests went through it. It adds ``Via:
1.1 test-proxy`` to each request it forwards (as RFC 9110 section 7.6.3 asks), drops the
hop-by-hop headers and ``Proxy-*``, and answers ``502`` when the origin cannot be reached.
A context manager (``url``, ``port``).
"""

from __future__ import annotations

import http.client
import http.server
import urllib.parse

from .servers import HandlerServer, OwnedHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OwnedHTTPServer

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        owner: ForwardProxy = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "absolute http:// URLs only")
            return
        with owner.lock:
            owner.forwarded.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in _HOP_BY_HOP}
        headers["Via"] = "1.1 test-proxy"
        target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        origin = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        try:
            origin.request(self.command, target, body=body, headers=headers)
            answer = origin.getresponse()
            data = answer.read()
        except OSError as exc:
            self.send_error(502, f"cannot reach {url.netloc}: {exc}")
            return
        finally:
            origin.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


class ForwardProxy(HandlerServer):
    """The proxy (see the module doc) on a port of 127.0.0.1 the OS chooses."""

    handler = _Handler

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        super().__init__()
