"""The metrics of a gateway of several workers (``serve --workers N``): the texts merged
(:mod:`lbmiddleware.observe.merge`), the siblings' samples read over loopback and
``lbmiddleware_worker_up`` (:mod:`lbmiddleware.observe.peers`), in this process: the worker
it is (:mod:`lbmiddleware.observe.worker`) is set by the test."""

from __future__ import annotations

import socket

from lbmiddleware.gateway.listen import bind
from lbmiddleware.observe import peers, worker
from lbmiddleware.observe.merge import merge


def test_merge_writes_each_family_once_with_every_workers_samples():
    one = (b"# HELP a_total A.\n# TYPE a_total counter\n"
           b'a_total{worker="1"} 1.0\n# HELP b B.\n# TYPE b gauge\nb{worker="1"} 5.0\n')
    two = (b"# HELP a_total A.\n# TYPE a_total counter\na_total{worker=\"2\"} 2.0\n"
           b"# HELP c C.\n# TYPE c gauge\nc{worker=\"2\"} 7.0\n")
    assert merge([one, two]) == (
        b"# HELP a_total A.\n# TYPE a_total counter\n"
        b'a_total{worker="1"} 1.0\na_total{worker="2"} 2.0\n'
        b'# HELP b B.\n# TYPE b gauge\nb{worker="1"} 5.0\n'
        b'# HELP c C.\n# TYPE c gauge\nc{worker="2"} 7.0\n')


def test_gather_outside_a_gateway_of_workers_is_the_text_itself():
    assert worker.current_worker() is None
    assert peers.gather(b"# HELP a A.\n") == b"# HELP a A.\n"


def test_gather_leaves_out_a_sibling_that_does_not_answer_and_says_so(monkeypatch):
    """Worker 1 of 3: worker 2 answers on its address (the process's own published text
    stands in for it), worker 3's address accepts but never answers."""
    monkeypatch.setattr(peers, "_local", None)
    answering, silent = bind(("127.0.0.1", 0)), bind(("127.0.0.1", 0))
    try:
        peers.publish(lambda: b'# HELP a A.\n# TYPE a gauge\na{worker="2"} 2.0\n')
        peers.serve_peers(answering)
        monkeypatch.setattr(worker, "_current", worker.Worker(
            1, 3, (("127.0.0.1", 1), answering.getsockname()[:2], silent.getsockname()[:2])))
        merged = peers.gather(b'# HELP a A.\n# TYPE a gauge\na{worker="1"} 1.0\n',
                                       timeout=0.5)
    finally:
        answering.shutdown(socket.SHUT_RDWR)        # (wakes its thread's accept: it ends)
        answering.close()
        silent.close()
    assert merged == (b'# HELP a A.\n# TYPE a gauge\na{worker="1"} 1.0\na{worker="2"} 2.0\n'
                      + peers._WORKER_UP
                      + b'lbmiddleware_worker_up{worker="1"} 1.0\n'
                        b'lbmiddleware_worker_up{worker="2"} 1.0\n'
                        b'lbmiddleware_worker_up{worker="3"} 0.0\n')


def test_a_sibling_whose_metrics_failed_is_down_and_its_error_is_logged(monkeypatch, caplog):
    """Worker 1 of 2: worker 2's exposition raises. It closes without a byte, which is no
    answer (its samples are missing: worker_up 0, not 1), and logs the error at ERROR with
    its traceback (review M6: it was DEBUG, and the empty answer counted as up)."""
    def failing() -> bytes:
        raise RuntimeError("a pool's stats failed")

    monkeypatch.setattr(peers, "_local", None)
    answering = bind(("127.0.0.1", 0))
    try:
        peers.publish(failing)
        peers.serve_peers(answering)
        monkeypatch.setattr(worker, "_current", worker.Worker(
            1, 2, (("127.0.0.1", 1), answering.getsockname()[:2])))
        with caplog.at_level("DEBUG", logger="lbmiddleware.observe"):
            merged = peers.gather(b'# HELP a A.\n# TYPE a gauge\na{worker="1"} 1.0\n',
                                           timeout=5.0)
    finally:
        answering.shutdown(socket.SHUT_RDWR)
        answering.close()
    assert merged == (b'# HELP a A.\n# TYPE a gauge\na{worker="1"} 1.0\n'
                      + peers._WORKER_UP
                      + b'lbmiddleware_worker_up{worker="1"} 1.0\n'
                        b'lbmiddleware_worker_up{worker="2"} 0.0\n')
    [record] = [r for r in caplog.records if r.name == "lbmiddleware.observe"]
    assert record.levelname == "ERROR" and "metrics failed" in record.getMessage()
    assert record.exc_info is not None and "a pool's stats failed" in str(record.exc_info[1])
