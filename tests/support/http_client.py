"""A raw-socket HTTP/1.1 client: write the request's bytes as given, read one response."""

from __future__ import annotations

import socket


def read_response(sock: socket.socket) -> tuple[int, list[tuple[str, str]], bytes]:
    """Read one response from ``sock`` (Content-Length or until close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    length = next((int(v) for n, v in headers if n.lower() == "content-length"), None)
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def raw_request(port: int, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` (bytes) to 127.0.0.1:``port`` on a new connection; read the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock)
