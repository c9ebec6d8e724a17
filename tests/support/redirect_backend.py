"""A loopback backend that builds absolute URLs from the ``Host`` it got, as web frameworks
do (Starlette's ``url_for`` and slash redirects, Django's ``build_absolute_uri``): behind a
proxy that sends the backend's own address as ``Host``, its redirects name the backend
(``Location: http://127.0.0.1:PORT/api/new``).

Each answer's URLs are the request's directory (its path up to the last ``/``) on
``http://HOST``:

* ``.../old`` answers ``302 Found`` with ``Location: <dir>new`` (``?q`` kept);
* ``.../created`` answers ``201 Created`` with ``Location`` and ``Content-Location``
  ``<dir>items/7``;
* ``.../refresh`` answers ``200`` with ``Refresh: 3; url=<dir>later``;
* anything else answers ``200`` with JSON naming the server and echoing the path and
  headers, and ``X-Server: NAME``.

GET and POST alike (a POST's body is read and dropped).

``requests`` counts the requests; the server is a context manager (``url``, ``port``).
"""

from __future__ import annotations

import http.server
import json

from .servers import HandlerServer, OwnedHTTPServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OwnedHTTPServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner: RedirectBackend = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with owner.lock:
            owner.requests += 1
        path, _, query = self.path.partition("?")
        here = f"http://{self.headers.get('Host', '')}{path.rpartition('/')[0]}/"
        leaf = path.rpartition("/")[2]
        headers: list[tuple[str, str]] = []
        status = 200
        if leaf == "old":
            status = 302
            headers.append(("Location", here + "new" + (f"?{query}" if query else "")))
        elif leaf == "created":
            status = 201
            headers += [("Location", here + "items/7"), ("Content-Location", here + "items/7")]
        elif leaf == "refresh":
            headers.append(("Refresh", f"3; url={here}later"))
        body = json.dumps({"server": owner.name, "path": self.path,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Server", owner.name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


class RedirectBackend(HandlerServer):
    """The backend (see the module doc) on a port the OS chooses; a context manager."""

    handler = _Handler

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        super().__init__()
