"""``/metrics`` of all the gateway's workers (``serve --workers N``): a scrape that saw one
worker at random would read each counter jump between the workers' values (``rate()`` takes
every jump down for a counter reset), so the worker that answers adds its siblings' samples,
read from each one's private address on loopback (:func:`serve_peers`, :func:`gather`), and
every sample carries the label ``worker`` (:mod:`.worker`: which worker this is). A sibling
that does not answer within :data:`PEER_TIMEOUT` (restarting, stuck) or whose metrics failed
(logged at ERROR, with the traceback, by that sibling) is left out, and
``lbmiddleware_worker_up`` says so (0). This is what the exporters of multi-process servers do
(prometheus_client's multiprocess mode, HAProxy's per-process stats merged by its master): one
scrape, the whole gateway, series that stay. The texts are joined by :func:`.merge.merge`.

The transport is plain TCP on loopback: a sibling connects, reads until the peer closes, and a
close without a byte is no answer. The answering side is a daemon thread per worker (the
fast server's loop is never asked); the asking side reads every sibling at once with one
selector, within one deadline.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence

from .merge import merge
from .worker import current_worker

__all__ = ["serve_peers", "publish", "gather", "PEER_TIMEOUT"]

logger = logging.getLogger("lbmiddleware.observe")

#: Seconds the worker answering ``/metrics`` waits for its siblings' samples, all at once.
PEER_TIMEOUT = 2.0
# A sibling's samples at most (bytes): pools of thousands of backends fit well below it.
_PEER_LIMIT = 64 * 1024 * 1024

_WORKER_UP = (b"# HELP lbmiddleware_worker_up 1 for each of the gateway's worker processes "
              b"whose samples this answer holds, 0 for one that did not answer in time or "
              b"whose metrics failed.\n"
              b"# TYPE lbmiddleware_worker_up gauge\n")

_local: Callable[[], bytes] | None = None


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
    worker = current_worker()
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

