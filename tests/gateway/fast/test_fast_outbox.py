"""The writes of one loop turn, made together at its end (``gateway/fast/outbox.py``): held
until the turn's callbacks have run, in order, at once past the limit; and the fast server's
connections writing through it (responses of one turn reach the socket together, nothing
written before a close, a cut or a hand-off is lost or reordered)."""

from __future__ import annotations

import asyncio

import uvloop

from lbmiddleware.gateway.fast.connection import ClientConnection, ServerState
from lbmiddleware.gateway.fast.outbox import HOLD_LIMIT, Outbox
from lbmiddleware.gateway.fast.wire import response_head
from lbmiddleware.gateway_settings import GatewaySettings


class Transport(asyncio.Transport):
    """Records what a protocol does with it, in order, into a log shared by transports."""

    def __init__(self, log: list[tuple[str, object]], name: str = "t",
                 closed: bool = False) -> None:
        super().__init__()
        self.log = log
        self.name = name
        self.closed = closed

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.log.append((self.name, bytes(data)))

    def writelines(self, parts) -> None:
        self.log.append((self.name, b"".join(parts)))

    def close(self) -> None:
        self.log.append((self.name, "close"))

    def abort(self) -> None:
        self.log.append((self.name, "abort"))

    def write_eof(self) -> None:
        self.log.append((self.name, "eof"))

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 4321) if name == "peername" else default


def run(scenario):
    return uvloop.run(scenario())


def test_writes_are_held_until_the_turn_ends_then_made_in_order():
    async def scenario():
        log: list[tuple[str, object]] = []
        a, b = Transport(log, "a"), Transport(log, "b")
        outbox = Outbox(asyncio.get_running_loop())
        outbox.write(a, b"1")
        outbox.write(b, b"2")
        outbox.write(a, b"3")
        during = list(log), outbox.held()
        await asyncio.sleep(0)
        return during, log, outbox.held()

    assert run(scenario) == (([], 3), [("a", b"1"), ("b", b"2"), ("a", b"3")], 0)


def test_past_the_limit_everything_held_is_written_at_once():
    async def scenario():
        log: list[tuple[str, object]] = []
        transport = Transport(log)
        outbox = Outbox(asyncio.get_running_loop())
        outbox.write(transport, b"small")
        outbox.write(transport, b"x" * HOLD_LIMIT)
        at_once = [len(data) for _, data in log]
        outbox.write(transport, b"after")
        held = list(log)
        await asyncio.sleep(0)
        return at_once, len(held), [len(data) for _, data in log]

    assert run(scenario) == ([5, HOLD_LIMIT], 2, [5, HOLD_LIMIT, 5])


def test_a_transport_closed_meanwhile_is_told_and_the_others_still_written():
    async def scenario():
        log: list[tuple[str, object]] = []
        gone = Transport(log, "gone", closed=True)
        other = Transport(log, "other")
        refused: list[str] = []
        outbox = Outbox(asyncio.get_running_loop())
        outbox.write(gone, b"head", lambda: refused.append("told"))
        outbox.write(gone, b"more")                 # (no one to tell: dropped)
        outbox.write(other, b"fine")
        await asyncio.sleep(0)
        return refused, log

    assert run(scenario) == (["told"], [("other", b"fine")])


def test_a_write_that_fails_otherwise_is_logged_and_the_others_still_written(caplog):
    class Broken(Transport):
        def write(self, data: bytes) -> None:
            raise TypeError("a bug")

    async def scenario():
        log: list[tuple[str, object]] = []
        outbox = Outbox(asyncio.get_running_loop())
        outbox.write(Broken(log, "broken"), b"x")
        outbox.write(Transport(log, "other"), b"fine")
        await asyncio.sleep(0)
        return log

    assert run(scenario) == [("other", b"fine")]
    assert "a write of the fast server failed" in caplog.text


# -- the connections write through it -----------------------------------------------------

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = response_head(200, b"OK", [], date=b"date: x\r\n", length=2, chunked=False,
                         close=False) + b"ok"


class Answer:
    """A handler answering each request once it is read, with ``how`` after the response:
    keep the connection, close it, cut it, or write the rest with ``writelines``."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.connection: ClientConnection | None = None

    def dispatch(self, request, connection: ClientConnection):
        self.connection = connection
        return self

    def body(self, data: bytes) -> None:
        pass

    def body_end(self) -> None:
        connection = self.connection
        connection.write(RESPONSE)
        if self.how == "writelines":
            connection.writelines((b"and", b" more"))
        if self.how == "abort":
            connection.abort()
        else:
            connection.done(self.how != "close")

    def client_lost(self) -> None:
        pass


def connections(how: str, count: int, log: list[tuple[str, object]]
                ) -> list[ClientConnection]:
    loop = asyncio.get_running_loop()
    state = ServerState(GatewaySettings(), Answer(how), lambda transport, data: None)
    made = []
    for index in range(count):
        connection = ClientConnection(state, loop)
        connection.connection_made(Transport(log, str(index)))
        made.append(connection)
    return made


def test_the_responses_of_one_turn_reach_the_sockets_together_at_its_end():
    async def scenario():
        log: list[tuple[str, object]] = []
        for connection in connections("keep", 3, log):
            connection.data_received(REQUEST)
        during = list(log)
        await asyncio.sleep(0)
        return during, log

    during, after = run(scenario)
    assert during == []
    assert after == [("0", RESPONSE), ("1", RESPONSE), ("2", RESPONSE)]


def test_a_close_a_cut_and_a_writelines_come_after_what_was_written_before():
    async def scenario():
        logs = {}
        for how in ("close", "abort", "writelines"):
            log: list[tuple[str, object]] = []
            connections(how, 1, log)[0].data_received(REQUEST)
            await asyncio.sleep(0)
            logs[how] = log
        return logs

    logs = run(scenario)
    assert logs["close"] == [("0", RESPONSE), ("0", "close")]
    assert logs["abort"] == [("0", RESPONSE), ("0", "abort")]
    assert logs["writelines"] == [("0", RESPONSE), ("0", b"and more")]

