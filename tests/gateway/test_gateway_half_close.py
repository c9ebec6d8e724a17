"""A client that half-closes (``shutdown(SHUT_WR)``) after its pipelined requests, through
``python -m lbmiddleware serve``: every request it sent whole before its FIN is answered,
in order, and then the connection closes; a request it had not finished (half a head, a
body cut short) gets nothing, no 400 either (nginx: "client prematurely closed
connection", nothing sent). The FIN comes while the backend is still answering the first
request (it waits :data:`DELAY`), as it does from any client that writes its requests and
shuts down its side at once.

Only the fast server: under uvicorn the gateway's protocol (``gateway/uvicorn_server.py``)
inherits uvicorn's ``eof_received``, which closes the connection at the FIN with the
pipelined requests unanswered (a fix there is for that module); granian's own server does
the same, and is not ours to change. Over TLS the fast server closes at the FIN too:
uvloop's TLS transport cannot stay half-open.
"""

from __future__ import annotations

import re
import socket

import pytest

from ..support.gateway import GatewayProcess
from .test_gateway_fast import connected, read_answer

DELAY = 0.2         # seconds the backend takes per request: the FIN arrives before an answer

GET = b"GET /%d HTTP/1.1\r\nHost: gw\r\n\r\n"
POST = b"POST /%d HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"POST /%d HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("server", ["fast"])
@pytest.mark.parametrize("sent, answered", [
    pytest.param(GET % 0 + GET % 1 + GET % 2, ["/0", "/1", "/2"], id="three-gets"),
    pytest.param(GET % 0 + POST % 1 + b"hello" + CHUNKED % 2 + b"2\r\nhi\r\n0\r\n\r\n"
                 + GET % 3, ["/0", "/1 hello", "/2 hi", "/3"], id="with-bodies"),
    pytest.param(GET % 0 + b"GET /1 HTTP/1.1\r\nHo", ["/0"], id="then-half-a-head"),
    pytest.param(GET % 0 + GET % 1 + POST % 2 + b"hel", ["/0", "/1"], id="then-half-a-body"),
    pytest.param(GET % 0, ["/0"], id="one"),
])
def test_requests_sent_whole_before_the_clients_fin_are_answered_then_it_closes(
        backends, server, sent, answered):
    backend = backends[0]
    backend.delay = DELAY
    with GatewayProcess({"LB_SERVER": server, "LB_BACKENDS": backend.url}) as gateway:
        with connected(gateway.port) as (sock, wire):
            sock.sendall(sent)
            sock.shutdown(socket.SHUT_WR)
            answers = []
            while (answer := read_answer(wire)) is not None:
                answers.append(answer)
        errors = gateway.stop()
    seen = [(a.status, f"{a.json()['path']} {a.json()['body']}".strip()) for a in answers]
    assert seen == [(200, each) for each in answered], answers
    assert not re.search(r"Traceback|ERROR", errors), errors
