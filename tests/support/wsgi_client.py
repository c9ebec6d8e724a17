"""Call a WSGI application in-process, as a server would, and read what it answers."""

from __future__ import annotations

import io
import json
import sys
import warnings
from wsgiref.validate import validator


def environ_for(method: str = "GET", path: str = "/", query: str = "", body: bytes = b"",
                headers: dict[str, str] | None = None, remote: str = "192.0.2.10",
                **extra) -> dict:
    """A WSGI environ for one request (``path`` decoded, as ``PATH_INFO``); ``extra`` keys
    are set last."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "gateway.test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote, "HTTP_HOST": "gateway.test",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    environ.update(extra)
    return environ


class Result:
    """What a WSGI app answered: ``status`` (the line), ``code``, ``headers``, ``body``."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.code = int(status.split()[0])
        self.headers = headers
        self.body = body

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> dict:
        return json.loads(self.body)


def call(app, environ: dict, validate: bool = True) -> Result:
    """Call a WSGI app in-process, read the whole body and close the iterable; with
    ``validate``, under ``wsgiref.validate`` with its warnings as errors (PEP 3333)."""
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    wrapped = validator(app) if validate else app
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a validator warning fails the test
        iterable = wrapped(environ, start_response)
        try:
            body = b"".join(iterable)
        finally:
            if hasattr(iterable, "close"):
                iterable.close()
    return Result(captured["status"], captured["headers"], body)
