"""The gateway's listening sockets: bound by the gateway itself (before granian forks, so
port 0 is resolved once), and :class:`CannotListen` naming the setting of an address that
cannot be bound."""

from __future__ import annotations

import socket

__all__ = ["bind", "bind_setting", "CannotListen", "url"]


class CannotListen(OSError):
    """An address of the gateway could not be bound: which one, of which setting, and why."""

    def __init__(self, address: tuple[str, int], variable: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.address = address
        self.variable = variable

    def __str__(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"cannot listen on {shown}:{port} ({self.variable}): {self.strerror}"


def bind_setting(address: tuple[str, int], variable: str) -> socket.socket:
    """:func:`bind`, raising :class:`CannotListen` naming ``variable`` when it fails."""
    try:
        return bind(address)
    except OSError as exc:
        raise CannotListen(address, variable, exc) from exc


def bind(address: tuple[str, int], *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``(host, port)``; port 0 lets the OS choose. ``reuse_port``:
    ``SO_REUSEPORT``, so that several workers' sockets share the address and the kernel
    spreads the connections over them."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit it; plain asyncio sets it only on IPPROTO_TCP sockets, and
    # without it every response waits ~40 ms on the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"
