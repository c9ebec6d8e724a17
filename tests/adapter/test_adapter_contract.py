"""The client contract (tests/contract/client_contract.py) against the requests adapter."""

from __future__ import annotations

from ..contract.client_contract import ClientContract
from ..contract.client_drivers import RequestsFrontEnd


class TestRequestsAdapter(ClientContract):
    front_end_class = RequestsFrontEnd
