"""The client contract (tests/contract/client_contract.py) against both httpx transports."""

from __future__ import annotations

from ..contract.client_contract import ClientContract
from ..contract.client_drivers import AsyncHttpxFrontEnd, HttpxFrontEnd


class TestSyncTransport(ClientContract):
    front_end_class = HttpxFrontEnd


class TestAsyncTransport(ClientContract):
    front_end_class = AsyncHttpxFrontEnd
