"""The proxy contract (tests/contract/proxy_contract.py) against the WSGI middleware."""

from __future__ import annotations

from ..contract.drivers import WSGIFrontEnd
from ..contract.proxy_contract import ProxyContract


class TestWSGIMiddleware(ProxyContract):
    front_end_class = WSGIFrontEnd
