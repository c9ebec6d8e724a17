"""The gateway's logging: one handler on stderr, ``TIME LEVEL LOGGER: MESSAGE``, from
``LB_LOG_LEVEL`` (:func:`logging_config`), applied before the settings are read, in the main
process and (granian) in the worker; and :class:`RefusalWarnings`, the WARNING an operator
gets when the gateway turns connections away."""

from __future__ import annotations

import logging
import logging.config
import time
from collections.abc import Callable
from typing import Any

from ..core.settings import FrontEndSettings
from ..gateway_settings import LOG_LEVELS, GatewaySettings
from ..proxy.access import logger as access_logger
from ..proxy.settings import ProxySettings

__all__ = ["LOG_FORMAT", "logging_config", "settings_logging_config", "configure_logging",
           "server_log_level", "RefusalWarnings", "logger"]

#: The gateway's own logger (its listeners' refusals, the admin listener's errors).
logger = logging.getLogger("lbmiddleware.gateway")

#: Every line the gateway logs: time, level, logger, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The servers' own loggers, kept at warning or above: their INFO lines (start-up banners,
# one per connection or request) would bury the pool's. granian's Rust side logs as
# "_granian".
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi",
                   "granian", "_granian", "granian.access")


def logging_config(level: str, *, access_log: bool = False) -> dict[str, Any]:
    """The gateway's logging (``level``: ``LB_LOG_LEVEL``) as a ``logging.config.dictConfig``:
    one handler on stderr with :data:`LOG_FORMAT` for every logger, the servers' own at
    ``warning`` at least. With ``access_log`` (``LB_ACCESS_LOG``) the access logger is at
    INFO whatever ``level``: the access log is a setting of its own, asked for, and
    ``warning`` (to keep the failed attempts out) must not silently turn it off. Applied in
    the main process (:func:`configure_logging`) and, handed to granian, in its worker, which
    configures logging again when it starts."""
    quiet = server_log_level(level).upper()
    loggers: dict[str, dict[str, str]] = {name: {"level": quiet} for name in _SERVER_LOGGERS}
    if access_log:
        loggers[access_logger.name] = {"level": "INFO"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "gateway",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": loggers,
    }


def server_log_level(level: str) -> str:
    """The level of the servers' own loggers for ``LB_LOG_LEVEL`` ``level``: warning at
    least."""
    return max(level, "warning", key=LOG_LEVELS.index)


def settings_logging_config(settings: FrontEndSettings) -> dict[str, Any]:
    """:func:`logging_config` for the gateway's ``settings``."""
    return logging_config(settings[GatewaySettings].log_level,
                          access_log=settings[ProxySettings].access_log)


def configure_logging(level: str) -> None:
    """Configure this process's logging for the gateway (:func:`logging_config`); ``serve``
    runs it before the settings are read, so that their warnings have a handler."""
    logging.config.dictConfig(logging_config(level))


class RefusalWarnings:
    """Connections the gateway turns away for one ``reason``, told to the operator as a
    WARNING (``"<reason>: <n> connections <action> in the last <s> s"``) at most once every
    ``interval`` seconds, with how many since the line before: shedding load must show,
    and a flood of clients must not flood the log too. Call it once per connection turned
    away; from one thread (the event loop, or the admin listener's accepting thread)."""

    def __init__(self, reason: str, action: str, *, interval: float = 10.0,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.reason = reason
        self.action = action
        self.interval = interval
        self._timer = timer
        self._count = 0
        self._last: float | None = None         # when the last line was written

    def __call__(self) -> None:
        self._count += 1
        now = self._timer()
        if self._last is not None and now - self._last < self.interval:
            return
        count, self._count = self._count, 0
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self._last = now
        logger.warning("%s: %d connection%s %s%s", self.reason, count,
                       "" if count == 1 else "s", self.action, since)
