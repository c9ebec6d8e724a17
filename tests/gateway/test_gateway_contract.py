"""The proxy contract (tests/contract/proxy_contract.py) against the gateway process
(``python -m lbmiddleware serve`` under its default server), on the wire."""

from __future__ import annotations

from ..contract.drivers import GatewayFrontEnd
from ..contract.proxy_contract import ProxyContract


class TestGateway(ProxyContract):
    front_end_class = GatewayFrontEnd
