"""The proxy contract (tests/contract/proxy_contract.py) against the ASGI middleware."""

from __future__ import annotations

from ..contract.drivers import ASGIFrontEnd
from ..contract.proxy_contract import ProxyContract


class TestASGIMiddleware(ProxyContract):
    front_end_class = ASGIFrontEnd
