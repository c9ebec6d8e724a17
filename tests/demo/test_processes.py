"""The demo's children are started from the main thread only: the kernel's parent-death
signal (how they die with a killed demo) follows the thread that started them."""

from __future__ import annotations

import threading

import pytest

from lbmiddleware.demo.processes import BackendProcess, GatewayProcess


@pytest.mark.parametrize("child", [lambda: BackendProcess("fast"), lambda: GatewayProcess({})])
def test_a_child_started_from_another_thread_is_refused_naming_the_thread(child):
    raised: list[BaseException] = []

    def start() -> None:
        try:
            child().start()
        except RuntimeError as exc:
            raised.append(exc)

    thread = threading.Thread(target=start, name="typing")
    thread.start()
    thread.join(timeout=30)
    [error] = raised
    assert "started from thread 'typing': start children from the main thread" in str(error)


def test_a_backend_on_a_port_another_program_holds_raises_port_in_use_naming_it():
    import socket

    from lbmiddleware.demo.processes import PortInUse

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        backend = BackendProcess("fast")
        with pytest.raises(PortInUse) as raised:
            backend.start(port)
    assert str(raised.value) == f"demo backend 'fast' did not start: port {port} is in use"
    assert isinstance(raised.value, RuntimeError) and not backend.alive
