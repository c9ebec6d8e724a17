"""The request's deadline (``LB_TIMEOUT``) on every wait of an attempt's I/O in httpcore.

httpx's timeouts (connect, read, write, pool) each bound one wait: a connect, one read of
the network, one write. The transports cut them to the time left when an attempt begins,
and a backend sending its response head a byte at a time, each within the read timeout,
would still hold the attempt as long as it likes. So the default inner transports (those
the transport builds, one per backend) reach the network through :class:`DeadlineBackend`
(or :class:`AsyncDeadlineBackend`): while an attempt awaits its response head
(:class:`~lbmiddleware.fleet.front_end.AwaitingHead`), each connect, read and write waits at
most the time left when it begins, and one that runs out raises httpcore's own timeout of
that step (``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, httpx's for the caller).
The body's reads come after the head, with the request's own timeouts.

httpx builds its connection pool itself and takes no network backend: :func:`bound_waits`
sets it on the pool of a transport just built (httpx's ``HTTPTransport._pool``, httpcore's
``_network_backend``, both private; where either is missing, the transport is left as it
is and the deadline bounds each wait only). An ``inner_transport=`` of the caller's is its
own: there too the deadline bounds each wait, not their sum.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

from ..fleet.front_end import head_deadline

__all__ = ["AsyncDeadlineBackend", "DeadlineBackend", "bound_waits"]

#: httpcore's socket options (its ``SOCKET_OPTION``, not exported).
_Options = Iterable[Any] | None


def bound_waits(transport: object) -> None:
    """Make ``transport`` (an ``httpx.HTTPTransport`` or ``AsyncHTTPTransport`` not yet
    used) reach the network through a :class:`DeadlineBackend` (an
    :class:`AsyncDeadlineBackend`); any other transport is left as it is."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = DeadlineBackend(backend)  # type: ignore[union-attr]
    elif isinstance(backend, httpcore.AsyncNetworkBackend):
        pool._network_backend = AsyncDeadlineBackend(backend)  # type: ignore[union-attr]


def _limit(timeout: float | None) -> float | None:
    """``timeout`` cut to the time left before the deadline of the attempt awaiting its
    head now, if any."""
    deadline = head_deadline()
    return timeout if deadline is None else deadline.limit(timeout)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend ``backend``, each wait cut to the deadline's time
    left while an attempt awaits its head."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: _Options = None,
                    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _limit(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: _Options = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _limit(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _limit(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _limit(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _limit(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    """:class:`DeadlineBackend` for httpcore's async network backend (asyncio or trio)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: _Options = None,
                          ) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(await self._backend.connect_tcp(
            host, port, _limit(timeout), local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: _Options = None,
                                  ) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(await self._backend.connect_unix_socket(
            path, _limit(timeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _limit(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, _limit(timeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(await self._stream.start_tls(
            ssl_context, server_hostname, _limit(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
