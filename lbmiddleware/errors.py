"""One exception hierarchy for the whole package, and the error of a missing extra."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["LBError", "ConfigError", "NoHealthyBackend", "needs_extra", "EXTRAS"]


class LBError(Exception):
    """Root of every error lbmiddleware raises on purpose."""


class ConfigError(LBError, ValueError):
    """A setting, keyword argument or ``LB_*`` variable has a bad value."""


class NoHealthyBackend(LBError):
    """No backend is left to try: the pool is empty, or every backend is excluded."""


#: The third-party libraries behind an extra (``pip install 'lbmiddleware[EXTRA]'``), by
#: top-level module name: the front-ends that import them are loaded only on first use.
EXTRAS = {"requests": "requests", "urllib3": "requests", "dns": "dns",
          "prometheus_client": "metrics", "httpx": "httpx", "websockets": "gateway",
          "tomli": "gateway"}


@contextlib.contextmanager
def needs_extra(what: str) -> Iterator[None]:
    """Imports in the block that fail for a library of an extra (:data:`EXTRAS`) raise a
    ``ModuleNotFoundError`` that names ``what`` and the extra to install; others pass.

    ::

        with needs_extra(__name__):
            import requests
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        raise ModuleNotFoundError(
            f"{what} needs {exc.name}, which is not installed: "
            f"pip install 'lbmiddleware[{extra}]'", name=exc.name) from exc
