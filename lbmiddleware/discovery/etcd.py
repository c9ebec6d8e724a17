"""etcd as a source: the backends registered under a key prefix, followed live.

``etcd://127.0.0.1:2379/services/orders`` is every key under ``services/orders/``. A value is a
backend URL (``http://10.0.0.5:8080``), a bare ``host:port`` (scheme http), or the JSON that
etcd's naming package writes (``client/v3/naming/endpoints``; its older gRPC resolver adds an
``Op`` field, ignored)::

    {"Addr": "10.0.0.5:8080", "Metadata": {"weight": 2, "priority": 0}}

``Addr`` is a ``host:port`` (scheme http) or a URL; ``Metadata`` may carry ``weight`` (>= 1) and
``priority`` (tier, >= 0). A value that cannot be parsed is skipped with one warning (again only
if it changes). Keys are read in key order; a URL registered under two keys counts once (the
first key), with a warning.

:class:`EtcdWatcher` reads the prefix once, publishes it, then watches from the next revision
and applies each event batch as it comes (SEMANTICS, "Membership from a registry"). A watch that
is lost (etcd restarted, the connection dropped) or cancelled because its revision was compacted
re-reads the prefix and watches again (the Go resolver does not; we do). A read that fails (etcd
down) keeps the last set and retries with the gRPC back-off; the outage is one
``SourceFailed`` and its end one ``SourceRecovered`` (:class:`~.watcher.Follower`).

The wire is etcd's v3 JSON gateway (``/v3/kv/range``, ``/v3/watch``, ``/v3/lease/*``; keys and
values base64, 64-bit numbers as strings), one short HTTP/1.1 connection per call, the
response parsed by the upstream client's sans-I/O :class:`~lbmiddleware.upstream.parser.
ResponseParser`. No gRPC, no third-party module. A watch is a streamed response of JSON objects
on a connection of its own, with TCP keep-alives so that a peer that vanished without closing
(a host gone, a partition) is noticed within about a minute; it also asks for etcd's progress
notifications. :class:`EtcdClient` is shared with :mod:`.registration`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import socket
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ..core.backend import Backend, Source
from ..core.casts import format_duration
from ..core.settings import Settings
from ..errors import ConfigError, LBError
from ..upstream.errors import UpstreamError
from ..upstream.parser import ResponseParser
from .backoff import Backoff
from .status import SourceStatus
from .watcher import Emit, Follower, Publish, SourceError, describe_error

__all__ = ["EtcdWatcher", "EtcdClient", "EtcdError", "parse_value", "prefix_range",
           "REQUEST_TIMEOUT", "CONNECT_TIMEOUT"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 3.0        # seconds to open a connection to etcd
REQUEST_TIMEOUT = 5.0        # seconds for one unary call (range, put, lease...), connect included
KEEPALIVE_IDLE = 30          # a watch connection's TCP keep-alive: first probe after 30 s idle,
KEEPALIVE_INTERVAL = 10      # then every 10 s,
KEEPALIVE_COUNT = 3          # dead after 3 unanswered probes (about a minute in all)
QUICK_WATCH_END = 1.0        # a watch that ends this soon after it began, without compaction,
                             # waits a back-off before the re-read (a server that keeps
                             # dropping watches is not hammered)
GRPC_NOT_FOUND = 5           # etcd's gRPC code for "requested lease not found"


class EtcdError(SourceError, LBError):
    """etcd could not be reached, or refused a call. ``code``: etcd's gRPC status code when
    etcd answered with an error (5: not found), else None (unreachable, timeout, bad reply)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """The key range ``[start, end)`` of every key that starts with ``prefix`` (etcd's
    ``WithPrefix``: the end is the prefix with its last byte incremented)."""
    start = prefix.encode()
    end = bytearray(start)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return start, b"\0"         # every key from start on
    end[-1] += 1
    return start, bytes(end)


class EtcdClient:
    """The few v3 gateway calls a source and a registration need, over short HTTP/1.1
    connections (``Connection: close``) to ``host:port``; every failure is an :class:`EtcdError`.
    """

    def __init__(self, host: str, port: int, *, timeout: float = REQUEST_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        netloc = f"[{host}]" if ":" in host else host
        self.address = f"{netloc}:{port}"

    # -- unary calls ---------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any], *, timeout: float | None = None
                   ) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``; the decoded answer, or :class:`EtcdError`.
        ``timeout``: this call's, when shorter than the client's (a retry before a deadline)."""
        seconds = self.timeout if timeout is None else min(timeout, self.timeout)
        try:
            return await _within(seconds, self._call(path, body))
        except asyncio.TimeoutError:
            raise EtcdError(f"etcd at {self.address} did not answer {path} within "
                            f"{format_duration(seconds, digits=3)}") from None

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await self._send(path, body)
        try:
            parser = ResponseParser()
            chunks = []
            while not parser.complete:
                data = await reader.read(65536)
                if not data:
                    parser.feed_eof()
                    break
                chunks.append(parser.feed(data))
        except (OSError, UpstreamError) as exc:
            raise EtcdError(f"etcd at {self.address} broke off {path}: {_reason(exc)}") from None
        finally:
            writer.close()
        head = parser.head
        assert head is not None           # complete implies a head
        return self._decode(path, head.status, b"".join(chunks))

    def _decode(self, path: str, status: int, payload: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EtcdError(f"etcd at {self.address} answered {path} with status {status} "
                            f"and no JSON object: {payload[:200]!r}")
        if status != 200 or "error" in answer:
            raise _answered_error(self.address, path, answer, status)
        return answer

    async def _send(self, path: str, body: dict[str, Any], *, keepalive: bool = False
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.address}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
        try:
            reader, writer = await _within(
                self.connect_timeout, asyncio.open_connection(self.host, self.port))
        except asyncio.TimeoutError:
            raise EtcdError(f"connecting to etcd at {self.address} timed out") from None
        except OSError as exc:
            raise EtcdError(f"cannot connect to etcd at {self.address}: {_reason(exc)}") from None
        if keepalive:
            _tcp_keepalive(writer.get_extra_info("socket"))
        try:
            writer.write(head + payload)
        except (OSError, RuntimeError) as exc:
            writer.close()
            raise EtcdError(f"etcd at {self.address} closed the connection: {exc}") from None
        return reader, writer

    # -- the calls by name ---------------------------------------------------------------

    async def range_prefix(self, prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        """Every key under ``prefix`` with its value, in key order, and the store's revision."""
        start, end = prefix_range(prefix)
        path = "/v3/kv/range"
        answer = await self.call(path, {"key": _b64(start), "range_end": _b64(end)})
        with self._reading(path, answer):
            revision = _revision(answer)
            kvs = [(_decode_key(kv), base64.b64decode(kv.get("value", ""), validate=True))
                   for kv in answer.get("kvs", ())]
        return revision, kvs

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Put ``key`` (attached to ``lease`` unless 0); returns the new revision."""
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value.encode())}
        if lease:
            body["lease"] = str(lease)
        answer = await self.call("/v3/kv/put", body)
        with self._reading("/v3/kv/put", answer):
            return _revision(answer)

    async def delete(self, key: str) -> int:
        """Delete ``key``; returns how many keys went (0 or 1)."""
        answer = await self.call("/v3/kv/deleterange", {"key": _b64(key.encode())})
        with self._reading("/v3/kv/deleterange", answer):
            return int(answer.get("deleted", 0))

    async def delete_if_lease(self, key: str, lease: int, *, timeout: float | None = None
                              ) -> bool:
        """Delete ``key`` only while it is attached to ``lease`` (a transaction comparing the
        key's lease): True when it was deleted. ``timeout``: as for :meth:`call`."""
        compare = {"target": "LEASE", "key": _b64(key.encode()), "result": "EQUAL",
                   "lease": str(lease)}
        path = "/v3/kv/txn"
        answer = await self.call(path, {
            "compare": [compare], "success": [{"request_delete_range": {"key": compare["key"]}}]},
            timeout=timeout)
        with self._reading(path, answer):
            if not answer.get("succeeded"):
                return False
            [response] = answer.get("responses", [])
            return int(response["response_delete_range"].get("deleted", 0)) > 0

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: its id and the TTL etcd granted (never below its
        minimum, about 2 s on a default server)."""
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        with self._reading("/v3/lease/grant", answer):
            return int(answer["ID"]), int(answer.get("TTL", ttl))

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL from now, 0 when etcd no longer has it."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        with self._reading("/v3/lease/keepalive", answer):
            return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go with it); a lease already gone is not an error."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code != GRPC_NOT_FOUND:
                raise

    @contextlib.contextmanager
    def _reading(self, path: str, answer: dict[str, Any]) -> Iterator[None]:
        """An answer without the fields it should have is etcd's failure, not ours."""
        try:
            yield
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise EtcdError(f"etcd at {self.address} answered {path} with something "
                            f"unexpected ({type(exc).__name__}: {exc}): {str(answer)[:200]}"
                            ) from None

    # -- a watch ------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int
                    ) -> AsyncGenerator[dict[str, Any], None]:
        """The watch responses for every key under ``prefix`` from ``start_revision`` on, as
        they come (``created``, event batches, progress notifications, a final ``canceled``).
        Ends when etcd ends the stream; raises :class:`EtcdError` when it fails."""
        start, end = prefix_range(prefix)
        request = {"create_request": {"key": _b64(start), "range_end": _b64(end),
                                      "start_revision": str(start_revision),
                                      "progress_notify": True}}
        path = "/v3/watch"
        reader, writer = await _within(
            self.timeout, self._send(path, request, keepalive=True))
        try:
            parser = ResponseParser()
            buffer = b""
            decoder = json.JSONDecoder()
            while not parser.complete:
                if parser.head is None:
                    data = await _within(self.timeout, reader.read(65536))
                else:
                    data = await reader.read(65536)
                if not data:
                    parser.feed_eof()
                    break
                buffer += parser.feed(data)
                head = parser.head
                if head is not None and head.status != 200:
                    continue            # the whole error body first, decoded below
                text = buffer.decode("utf-8", "replace")
                position = 0
                while True:
                    while position < len(text) and text[position].isspace():
                        position += 1
                    if position == len(text):
                        break
                    try:
                        message, position = decoder.raw_decode(text, position)
                    except ValueError:
                        break           # the rest of this object is still on its way
                    yield self._watch_result(message)
                buffer = text[position:].encode()
        except asyncio.TimeoutError:
            raise EtcdError(f"etcd at {self.address} did not answer {path} within "
                            f"{format_duration(self.timeout)}") from None
        except (OSError, UpstreamError) as exc:
            raise EtcdError(f"etcd at {self.address} broke off the watch: "
                            f"{_reason(exc)}") from None
        finally:
            writer.close()
        head = parser.head
        if head is not None and head.status != 200:
            self._decode(path, head.status, buffer)     # raises the error etcd gave

    def _watch_result(self, message: Any) -> dict[str, Any]:
        if isinstance(message, dict):
            if "error" in message:
                error = message["error"]
                raise _answered_error(self.address, "/v3/watch",
                                      error if isinstance(error, dict) else message, 200)
            result = message.get("result")
            if isinstance(result, dict):
                return result
        raise EtcdError(f"etcd at {self.address} sent a watch message that is not one: "
                        f"{str(message)[:200]}")


if sys.version_info >= (3, 11):
    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or TimeoutError after ``seconds``. A cancellation always
        goes through (before 3.12, ``asyncio.wait_for`` swallowed one that came as the
        awaitable finished: a watcher could not be stopped)."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:
    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, seconds)


def _answered_error(address: str, path: str, answer: dict[str, Any], status: int) -> EtcdError:
    message = answer.get("message") or answer.get("error") or f"HTTP status {status}"
    code = answer.get("code", answer.get("grpc_code"))
    return EtcdError(f"etcd at {address} refused {path}: {message}",
                     code=code if isinstance(code, int) else None)


def _decode_key(kv: dict[str, Any]) -> str:
    return base64.b64decode(kv.get("key", ""), validate=True).decode("utf-8", "replace")


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)       # "Connection refused", not asyncio's wording
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tcp_keepalive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# -- values -------------------------------------------------------------------------------

# A bare address: host:port or [v6]:port (the port is what tells it from a stray word).
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")

def parse_value(value: bytes | str, source: Source) -> Backend:
    """The backend a registered value names, or ConfigError saying why it names none.

    ``http://10.0.0.5:8080``, ``10.0.0.5:8080`` (the source's scheme: http) or
    ``{"Addr": "10.0.0.5:8080", "Metadata": {"weight": 2, "priority": 0}}``.
    """
    text = value.decode("utf-8") if isinstance(value, bytes) else value
    text = text.strip()
    weight: object = 1
    priority: object = 0
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ConfigError("not a JSON object")
        address = record.get("Addr")
        if not isinstance(address, str) or not address.strip():
            raise ConfigError('no "Addr" string')
        metadata = record.get("Metadata")
        if isinstance(metadata, dict):
            weight = metadata.get("weight", 1)
            priority = metadata.get("priority", 0)
        elif metadata is not None:
            raise ConfigError('"Metadata" is not an object')
        text = address.strip()
    if not text:
        raise ConfigError("empty")
    if "://" not in text:
        if not _HOST_PORT.fullmatch(text):
            raise ConfigError("not a URL, a host:port or a JSON object")
        text = f"{source.scheme}://{text}"
    return Backend(text, weight, priority, source=source.url)     # type: ignore[arg-type]


# -- the watcher -------------------------------------------------------------------------

class EtcdWatcher:
    """Follows the keys under an ``etcd://`` source's prefix (module docstring)."""

    def __init__(self, source: Source, settings: Settings | None = None, *,
                 rng: random.Random | None = None,
                 timer: Callable[[], float] = time.monotonic,
                 client: EtcdClient | None = None) -> None:
        self.source = source
        self.prefix = source.path
        self.status = SourceStatus(source.url, "etcd")
        self.client = client if client is not None else EtcdClient(source.host, source.port or 2379)
        self._rng = rng if rng is not None else random.Random()
        self._timer = timer
        # key -> (value, the backend it names or None when it names none): the current state of
        # the prefix, parsed once per value (a bad value warns once).
        self._entries: dict[str, tuple[bytes, Backend | None]] = {}
        self._duplicates: set[tuple[str, str]] = set()     # (key, url) already warned about
        self.reads = 0               # prefix reads that succeeded (for tests and stats)
        self.watches = 0             # watches started

    async def run(self, publish: Publish, emit: Emit) -> None:
        """Read, publish, watch; re-read after a lost or compacted watch; until cancelled."""
        follower = Follower(self.status, publish, emit, rng=self._rng, timer=self._timer)
        rewatch = Backoff(rng=self._rng)
        while True:
            try:
                revision, kvs = await self.client.range_prefix(self.prefix)
            except Exception as exc:            # keep the last set (cancellation passes)
                await asyncio.sleep(follower.failed(describe_error(exc)))
                continue
            self.reads += 1
            self._entries = {key: self._entry(key, value, self._entries.get(key))
                             for key, value in kvs}
            follower.succeeded(self._backends())
            self.status.next_refresh = None     # a watch: nothing to ask until it ends
            started = self._timer()
            compacted = await self._watch(revision + 1, follower)
            if compacted or self._timer() - started >= QUICK_WATCH_END:
                rewatch.reset()
            else:
                await asyncio.sleep(rewatch.next())

    async def _watch(self, start_revision: int, follower: Follower) -> bool:
        """Apply the watch's events until it ends; True when it ended because its revision
        was compacted, False when it was lost or ended otherwise."""
        self.watches += 1
        try:
            stream = self.client.watch(self.prefix, start_revision)
            async with contextlib.aclosing(stream):
                async for result in stream:
                    if result.get("canceled"):
                        compacted = int(result.get("compact_revision", 0))
                        if compacted:
                            logger.info("etcd source %s: revision %d was compacted (now %d): "
                                        "reading the prefix again", self.source.url,
                                        start_revision, compacted)
                            return True
                        logger.info("etcd source %s: watch cancelled (%s): reading the prefix "
                                    "again", self.source.url, result.get("cancel_reason") or
                                    "no reason given")
                        return False
                    events = result.get("events")
                    if events:
                        self._apply(events)
                        follower.succeeded(self._backends())
                        self.status.next_refresh = None
        except EtcdError as exc:
            logger.info("etcd source %s: watch lost (%s): reading the prefix again",
                        self.source.url, exc)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("etcd source %s: the watch sent something unexpected (%s: %s): "
                           "reading the prefix again", self.source.url, type(exc).__name__, exc)
        return False

    def _apply(self, events: list[dict[str, Any]]) -> None:
        entries = self._entries
        for event in events:
            kv = event.get("kv") or {}
            key = _decode_key(kv)
            if event.get("type") == "DELETE":
                entries.pop(key, None)
            else:
                value = base64.b64decode(kv.get("value", ""), validate=True)
                entries[key] = self._entry(key, value, entries.get(key))
        self._entries = dict(sorted(entries.items()))

    def _entry(self, key: str, value: bytes, previous: tuple[bytes, Backend | None] | None
               ) -> tuple[bytes, Backend | None]:
        if previous is not None and previous[0] == value:
            return previous
        try:
            backend: Backend | None = parse_value(value, self.source)
        except (ConfigError, UnicodeDecodeError) as exc:
            logger.warning("etcd source %s: key %r has a value that names no backend, "
                           "skipped: %r (%s)", self.source.url, key, value[:200], exc)
            backend = None
        return value, backend

    def _backends(self) -> tuple[Backend, ...]:
        seen: dict[str, str] = {}
        backends = []
        for key, (_, backend) in self._entries.items():
            if backend is None:
                continue
            first = seen.get(backend.url)
            if first is not None:
                if (key, backend.url) not in self._duplicates:
                    self._duplicates.add((key, backend.url))
                    logger.warning("etcd source %s: key %r registers %s again (as key %r "
                                   "does): counted once", self.source.url, key, backend.url,
                                   first)
                continue
            seen[backend.url] = key
            backends.append(backend)
        return tuple(backends)
