"""One exception hierarchy for the whole package."""

__all__ = ["LBError", "ConfigError", "NoHealthyBackend"]


class LBError(Exception):
    """Root of every error lbmiddleware raises on purpose."""


class ConfigError(LBError, ValueError):
    """A setting, keyword argument or ``LB_*`` variable has a bad value."""


class NoHealthyBackend(LBError):
    """No backend is left to try: the pool is empty, or every backend is excluded."""
