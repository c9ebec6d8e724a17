"""What the client front-ends (the requests adapter, the httpx transports) share: their
settings resolved into a pool of their own or a shared one, the retry rule, waiting for a
pool's first answers, and the sticky key read from a header or a cookie.

A mixin, so each front-end keeps its library's base class (``HTTPAdapter``,
``httpx.BaseTransport``); one copy of these steps instead of one per front-end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core.backend import Backend, Source
from ..core.balancer import Balancer as CoreBalancer
from ..core.forwarding import ForwardingSettings
from ..core.settings import FrontEndSettings, Settings, resolve
from ..proxy import parse_cookie
from .pool import Balancer

__all__ = ["ClientFrontEnd"]


class ClientFrontEnd:
    """The set-up and the per-request steps every client front-end takes the same way."""

    balancer: CoreBalancer
    settings: ForwardingSettings

    def _set_up(self, name: str, backends: Iterable[str | Backend | Source] | str | None,
                policy: str | None, options: dict[str, Any], *,
                settings: Settings | ForwardingSettings | FrontEndSettings | None,
                balancer: CoreBalancer | None, environ: Mapping[str, str] | None,
                keyed_by_func: bool) -> ForwardingSettings:
        """Resolve the keywords (``name`` is the front-end's, for errors), build a pool
        unless one is given (``balancer``: shared, never closed here), and keep what each
        request reads; returns the forwarding settings."""
        if backends is not None:
            options["backends"] = backends
        if policy is not None:
            options["policy"] = policy
        resolved = resolve(name, (ForwardingSettings,), options,
                           shared=None if balancer is None else balancer.settings,
                           settings=settings, environ=environ)
        self._owns_balancer = balancer is None
        if balancer is None:
            balancer = Balancer(settings=resolved.core)
        self.balancer = balancer
        # A pool built where an event loop runs did not wait for its sources' first
        # answers: the first request does (_wait_ready).
        self._ready = not isinstance(balancer, Balancer)
        self.settings = forwarding = resolved[ForwardingSettings]
        self._retry_rule = forwarding.retry_rule()
        self._keyed = keyed_by_func or (
            balancer.policy == "ip_hash" and forwarding.hash_key != "client_ip")
        self._key_kind, _, self._key_name = forwarding.hash_key.partition(":")
        return forwarding

    def _wait_ready(self) -> None:
        """Before the first request: wait for the first answers of the pool's sources (up
        to ``FIRST_ANSWER_TIMEOUT`` after it was built), as its constructor does where no
        event loop runs: a pool built in an async function and used from worker threads.
        Not on a thread running a loop, which it would hold up."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if isinstance(self.balancer, Balancer):
                self.balancer.wait_ready()
            self._ready = True

    def _header_key(self, header: Callable[[str], str | None]) -> str | None:
        """The sticky key from ``hash_key``'s header or cookie, ``header(name)`` reading a
        request header; None for ``client_ip`` (a client front-end has no client address)."""
        if self._key_kind == "header":
            return header(self._key_name)
        if self._key_kind == "cookie":
            cookie = header("Cookie")
            return parse_cookie(cookie).get(self._key_name) if cookie else None
        return None
