"""The gateway's ASGI application: the proxy with no app behind it, and the admin listener
beside it in the process that owns the pool, from the lifespan's startup to its shutdown."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..asgi import LoadBalancerMiddleware
from ..core.balancer import Balancer
from ..core.settings import FrontEndSettings
from ..gateway_settings import GatewaySettings, load_settings
from .admin import AdminServer
from .listen import bind_setting

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["make_app", "app_from_env", "GatewayApp"]


def make_app(settings: FrontEndSettings, *,
             admin_socket: socket.socket | None = None) -> GatewayApp:
    """The gateway's ASGI application: the proxy with no app behind it, and the admin
    listener beside it when ``LB_ADMIN_LISTEN`` is set (``settings``: from
    :func:`~lbmiddleware.gateway.load_settings`; ``admin_socket``: the admin address bound
    already, as :func:`~lbmiddleware.gateway.serve` does before granian forks)."""
    return GatewayApp(settings, admin_socket=admin_socket)


class GatewayApp(LoadBalancerMiddleware):
    """The proxy (with no app behind it), and with ``LB_ADMIN_LISTEN`` the status app on a
    listener of its own (:class:`AdminServer`) in the process that owns the pool: started
    at the lifespan's startup (before the sources' first answers are awaited, so ``/ready``
    says 503 meanwhile), stopped at its shutdown.

    ``admin_app`` makes the admin listener's WSGI app for the pool
    (:func:`lbmiddleware.observe.status_wsgi_app` by default).
    """

    def __init__(self, settings: FrontEndSettings, *, admin_socket: socket.socket | None = None,
                 admin_app: Callable[[Balancer], WSGIApplication] | None = None) -> None:
        super().__init__(None, settings=settings)
        self._admin_address = settings[GatewaySettings].admin_address
        self._admin_socket = admin_socket
        self._admin_app = admin_app if admin_app is not None else _status_app
        self._header_timeout = settings[GatewaySettings].header_timeout
        self.admin: AdminServer | None = None

    async def ready(self) -> bool:
        self._start_admin()
        return await super().ready()

    async def aclose(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            admin.stop()
        await super().aclose()

    def _start_admin(self) -> None:
        if self.admin is not None:
            return
        sock, self._admin_socket = self._admin_socket, None
        if sock is None and self._admin_address is not None:
            sock = bind_setting(self._admin_address, "LB_ADMIN_LISTEN")
        if sock is not None:
            self.admin = AdminServer(self._admin_app(self.balancer), sock,
                                     header_timeout=self._header_timeout)
            self.admin.start()


def _status_app(balancer: Balancer) -> WSGIApplication:
    from ..observe import status_wsgi_app
    return status_wsgi_app(balancer)


def app_from_env() -> GatewayApp:
    """An application factory for any ASGI server: ``uvicorn --factory
    lbmiddleware.gateway:app_from_env`` (settings from ``LB_*``; ``LB_LISTEN`` unused)."""
    return make_app(load_settings())
