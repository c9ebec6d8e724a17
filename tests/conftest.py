"""Shared fixtures: a fake clock and loopback backends."""

from __future__ import annotations

import pytest

from .servers import BackendServer


class FakeClock:
    """A timer to inject as ``timer=``; tests move it with ``advance``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backends():
    """Three running loopback backends named a, b, c (stopped after the test)."""
    servers = [BackendServer(name).start() for name in "abc"]
    yield servers
    for server in servers:
        server.stop()
