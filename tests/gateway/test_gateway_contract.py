"""The proxy contract (tests/contract/proxy_contract.py) against the gateway process
(``python -m lbmiddleware serve``), on the wire: under its own fast server (the default) and
on the ASGI path under granian. (The ASGI path under uvicorn is the contract's ASGI run,
tests/asgi/test_asgi_contract.py, plus the gateway's own modules here under every server.)"""

from __future__ import annotations

from ..contract.drivers import FastGatewayFrontEnd, GranianGatewayFrontEnd
from ..contract.proxy_contract import ProxyContract


class TestGatewayFast(ProxyContract):
    front_end_class = FastGatewayFrontEnd


class TestGatewayGranian(ProxyContract):
    front_end_class = GranianGatewayFrontEnd
