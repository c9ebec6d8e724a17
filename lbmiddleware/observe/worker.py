"""Which process answers, and the metrics of all of them: the gateway's ``serve --workers N``
(``LB_WORKERS``) runs N worker processes on one address, and each keeps its own pools --
health, latency, counters, history. Any worker may answer the admin port.

The status page and ``/status.json`` show the state of the worker that answered, and say which
one it is (:func:`worker_row`). ``/metrics`` shows every worker's: a scrape that saw one worker
at random would read each counter jump between the workers' values (``rate()`` takes every jump
down for a counter reset), so the worker that answers adds its siblings' samples, read from
each one's private address on loopback (:func:`serve_peers`, :func:`gather`), and every sample
carries the label ``worker``. A sibling that does not answer within :data:`PEER_TIMEOUT`
(restarting, stuck) or whose metrics failed (logged at ERROR, with the traceback, by that
sibling) is left out, and ``lbmiddleware_worker_up`` says so (0). This is what the
exporters of multi-process servers do (prometheus_client's multiprocess mode, HAProxy's
per-process stats merged by its master): one scrape, the whole gateway, series that stay.

A process that is not one of several workers (an app embedding the middleware, a gateway with
one worker) has no :class:`Worker`: nothing is added anywhere. Set once in each worker, after
the fork (:func:`set_worker`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Worker", "set_worker", "current_worker", "worker_row", "serve_peers", "publish",
           "gather", "merge", "PEER_TIMEOUT"]

logger = logging.getLogger("lbmiddleware.observe")

#: Seconds the worker answering ``/metrics`` waits for its siblings' samples, all at once.
PEER_TIMEOUT = 2.0
# A sibling's samples at most (bytes): pools of thousands of backends fit well below it.
_PEER_LIMIT = 64 * 1024 * 1024

_WORKER_UP = (b"# HELP lbmiddleware_worker_up 1 for each of the gateway's worker processes "
              b"whose samples this answer holds, 0 for one that did not answer in time.\n"
              b"# TYPE lbmiddleware_worker_up gauge\n")


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the gateway's workers: ``index`` from 1 to ``count``;
    ``peers``: each worker's private metrics address, in index order (empty: none)."""

    index: int
    count: int
    peers: tuple[tuple[str, int], ...] = ()


_current: Worker | None = None
_local: Callable[[], bytes] | None = None


def set_worker(index: int, count: int,
               peers: Sequence[tuple[str, int]] = ()) -> None:
    """This process is worker ``index`` (1 to ``count``) of the gateway's ``count``;
    ``peers``: every worker's metrics address (:func:`serve_peers`), this one's included."""
    global _current
    if not 1 <= index <= count:
        raise ValueError(f"worker index {index!r} is not between 1 and {count!r}")
    if peers and len(peers) != count:
        raise ValueError(f"{len(peers)} peer addresses for {count} workers")
    _current = Worker(index, count, tuple(peers))


def current_worker() -> Worker | None:
    """This process's :class:`Worker`, None when it is not one of several."""
    return _current


def worker_row() -> dict[str, Any] | None:
    """``/status.json``'s ``worker``: ``{"index", "count", "pid"}``, or None."""
    worker = _current
    if worker is None:
        return None
    return {"index": worker.index, "count": worker.count, "pid": os.getpid()}


def publish(local: Callable[[], bytes]) -> None:
    """``local()``: this worker's own metrics (Prometheus text, ``worker`` label set), what
    :func:`serve_peers` gives the siblings; the status app built last sets it (a reload's)."""
    global _local
    _local = local


def serve_peers(sock: socket.socket) -> threading.Thread:
    """Answer each connection to ``sock`` (listening, on loopback) with this worker's own
    metrics (:func:`publish`), in a daemon thread: the siblings' :func:`gather` reads them."""
    def answer() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:             # closed: the worker is ending
                return
            with conn:
                local = _local
                try:
                    text = b"" if local is None else local()
                except Exception:       # a pool's or the exposition's bug: said, not hidden
                    logger.exception("this worker's metrics failed: its siblings' /metrics "
                                     "show it down")
                    continue            # (closed with nothing sent: no answer)
                try:
                    conn.settimeout(PEER_TIMEOUT)
                    conn.sendall(text)
                except OSError:         # the sibling gave up waiting or is gone: its up is 0
                    logger.debug("worker metrics not sent to a sibling", exc_info=True)

    thread = threading.Thread(target=answer, name="lbmiddleware-worker-metrics", daemon=True)
    thread.start()
    return thread


def gather(own: bytes, *, timeout: float = PEER_TIMEOUT,
           timer: Callable[[], float] = time.monotonic) -> bytes:
    """``own`` (this worker's metrics) with every sibling's merged into it
    (:func:`merge`), and ``lbmiddleware_worker_up`` for each worker; ``own`` alone outside
    a gateway of several workers."""
    worker = _current
    if worker is None or not worker.peers:
        return own
    others = [(index, address) for index, address in enumerate(worker.peers, 1)
              if index != worker.index]
    read = _read_all([address for _, address in others], timeout, timer)
    texts = {worker.index: own}
    texts.update((index, text) for (index, _), text in zip(others, read, strict=True)
                 if text is not None)
    up = _WORKER_UP + b"".join(
        b'lbmiddleware_worker_up{worker="%d"} %s\n' % (index, b"1.0" if index in texts
                                                         else b"0.0")
        for index in range(1, worker.count + 1))
    return merge([texts[index] for index in sorted(texts)] + [up])


def _read_all(addresses: Sequence[tuple[str, int]], timeout: float,
              timer: Callable[[], float]) -> list[bytes | None]:
    """What each address sends until it closes, all read at once in ``timeout`` seconds;
    None for one that could not be reached, did not end in time or sent nothing (a worker
    whose metrics failed closes without a byte: no answer, not an empty one)."""
    deadline = timer() + timeout
    got: list[bytearray | None] = [bytearray() for _ in addresses]
    with selectors.DefaultSelector() as selector:
        for number, address in enumerate(addresses):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect_ex(address)
            except OSError:
                sock.close()
                got[number] = None
                continue
            selector.register(sock, selectors.EVENT_READ, (number, sock))
        try:
            while selector.get_map() and (left := deadline - timer()) > 0:
                for key, _ in selector.select(left):
                    number, sock = key.data
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:         # refused, reset: nothing from it
                        data, got[number] = b"", None
                    buffer = got[number]
                    if data and buffer is not None and len(buffer) < _PEER_LIMIT:
                        buffer += data
                        continue
                    if data:                # beyond the limit: left out
                        got[number] = None
                    selector.unregister(sock)
                    sock.close()
        finally:
            for key in list(selector.get_map().values()):    # did not end in time
                number, sock = key.data
                got[number] = None
                sock.close()
    return [bytes(text) if text else None for text in got]


def merge(texts: Sequence[bytes]) -> bytes:
    """Prometheus text expositions as one: each metric family (a ``# HELP`` line and what
    follows it) once, its comment lines from the first text that has it, then the samples
    of every text in their order. (A family written twice is refused by Prometheus.)"""
    families: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
    for text in texts:
        heads: list[bytes] | None = None
        samples: list[bytes] | None = None
        for line in text.splitlines():
            if line.startswith(b"# HELP "):
                name = line.split(b" ", 3)[2]
                known = families.get(name)
                if known is None:
                    families[name] = known = ([line], [])
                    heads = known[0]
                else:
                    heads = None
                samples = known[1]
            elif samples is None:
                continue                    # (nothing before a first family)
            elif line.startswith(b"#"):
                if heads is not None:
                    heads.append(line)
            elif line:
                samples.append(line)
    return b"".join(b"\n".join([*heads, *samples]) + b"\n"
                    for heads, samples in families.values())
