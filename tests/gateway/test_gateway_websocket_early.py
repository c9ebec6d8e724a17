"""WebSocket frames a client sends right after its upgrade request, without waiting for the
101 (in the same write, or the next), through ``python -m lbmiddleware serve`` to the echo
backend: kept, and relayed to the backend once the tunnel is up, in order, nothing lost.
When the backend refuses the upgrade, those frames are dropped: the client gets the
refusal, then the connection closes.

Raw sockets, so that the frames go in the request's own write (a WebSocket client waits
for the 101). The fast server and uvicorn: both give the upgraded connection to the
gateway's uvicorn protocol (``gateway/uvicorn_server.py``), whose upgrade passes on the
bytes after the head (uvicorn's own dropped them); granian relays them, and is not ours to
change.
"""

from __future__ import annotations

import os
import re
import socket

import pytest

from ..support.gateway import GatewayProcess
from ..support.websocket_backend import WebSocketBackend
from .test_gateway_fast import Wire, read_answer

MiB = 1024 * 1024

HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client's frame (masked, as RFC 6455 5.3 requires), FIN set."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(
        (mask * (size // 4 + 1))[:size], "big")).to_bytes(size, "big") if size else b""
    return bytes([0x80 | opcode]) + length + mask + masked


def read_frame(wire: Wire) -> tuple[int, bytes]:
    """The next frame from the server (unmasked): its opcode and payload."""
    first = wire.read(2)
    assert first is not None, "the connection closed"
    size = first[1] & 0x7F
    if size >= 126:
        extended = wire.read(2 if size == 126 else 8)
        assert extended is not None, "the connection closed"
        size = int.from_bytes(extended, "big")
    payload = wire.read(size) if size else b""
    assert payload is not None, "the connection closed"
    return first[0] & 0x0F, payload


@pytest.fixture(scope="module")
def echo():
    with WebSocketBackend("a") as backend:
        yield backend


@pytest.fixture(scope="module", params=["fast", "uvicorn"])
def gateway(request, echo):
    with GatewayProcess({"LB_SERVER": request.param, "LB_BACKENDS": echo.url}) as gateway:
        yield gateway


MESSAGES = [b"one", b"two" * 100, os.urandom(MiB), b"four"]


@pytest.mark.parametrize("together", [
    pytest.param(len(MESSAGES), id="in-the-requests-write"),
    pytest.param(1, id="one-in-the-requests-write-the-rest-next"),
    pytest.param(0, id="in-the-next-write"),
])
def test_frames_sent_before_the_101_are_relayed_in_order(gateway, together):
    """``together``: how many frames go in the upgrade request's write; the others go in
    the next write, at once."""
    frames = [frame(message) for message in MESSAGES]
    logged = len(gateway.output())
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire = Wire(sock)
        sock.sendall(HANDSHAKE % b"/echo" + b"".join(frames[:together]))
        if frames[together:]:
            sock.sendall(b"".join(frames[together:]))
        answer = read_answer(wire, head_request=True)
        assert answer is not None and answer.status == 101, answer
        echoed = [read_frame(wire) for _ in MESSAGES]
        sock.sendall(frame(b"\x03\xe8", opcode=0x8))        # close, 1000
        assert read_frame(wire) == (0x8, b"\x03\xe8")
    assert echoed == [(0x2, message) for message in MESSAGES]
    assert not re.search(r"Traceback|ERROR", gateway.output()[logged:]), gateway.output()


def test_frames_after_a_refused_upgrade_are_dropped(gateway, echo):
    """The backend answers 404: the client gets it whole, then the close, nothing else."""
    logged = len(gateway.output())
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        wire = Wire(sock)
        sock.sendall(HANDSHAKE % b"/deny/404" + frame(b"hello") + frame(b"again"))
        answer = read_answer(wire)
        assert answer is not None and answer.status == 404, answer
        rest = wire.rest()
    assert answer.body == b"denied 404" and answer.header("x-backend") == ["a"]
    assert rest == b""
    assert not re.search(r"Traceback|ERROR", gateway.output()[logged:]), gateway.output()


@pytest.mark.parametrize("together", [True, False], ids=["in-the-requests-write",
                                                        "in-the-next-write"])
def test_bytes_before_the_101_that_are_no_frame_close_the_websocket_as_a_protocol_error(
        gateway, together):
    """Bytes that are not a client's frame (unmasked, RFC 6455 5.1), sent before the 101:
    once the WebSocket is accepted they are read as its first frame, and it closes with 1002
    (protocol error), as any bad frame on an open WebSocket does. Read before the accept,
    they made uvicorn's WebSocket protocol fail an assertion: the connection cut, a
    traceback logged at ERROR."""
    bad = b"\x82\x05hello"                          # a frame without its mask
    logged = len(gateway.output())
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        wire = Wire(sock)
        sock.sendall(HANDSHAKE % b"/echo" + (bad if together else b""))
        if not together:
            sock.sendall(bad)
        answer = read_answer(wire, head_request=True)
        assert answer is not None and answer.status == 101, answer
        opcode, payload = read_frame(wire)
    assert (opcode, payload[:2]) == (0x8, (1002).to_bytes(2, "big"))
    assert not re.search(r"Traceback|ERROR", gateway.output()[logged:]), gateway.output()
