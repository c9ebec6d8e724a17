"""Backend: a frozen value naming one replica (base URL and weight)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable

from ..errors import ConfigError

__all__ = ["Backend", "parse_backend", "parse_backends"]

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True)
class Backend:
    """One replica: a base URL (``http`` or ``https``, optional base path) and a weight.

    The URL is normalised (scheme and host lower-cased, default port and trailing ``/``
    dropped), so ``Backend("HTTP://Api:80/v1/")`` and ``Backend("http://api/v1")`` are equal.
    """

    url: str
    weight: int = 1
    scheme: str = dataclasses.field(init=False, repr=False, compare=False)
    host: str = dataclasses.field(init=False, repr=False, compare=False)
    port: int = dataclasses.field(init=False, repr=False, compare=False)
    path: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weight: object = self.weight          # checked: a caller's types are not enforced
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(
                f"backend {self.url!r} has weight {self.weight!r}: not a positive integer"
            )
        url: object = self.url
        if not isinstance(url, str):
            raise ConfigError(f"backend URL {self.url!r} is not a string")
        text = self.url.strip()
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"backend URL {self.url!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if "://" not in text or not scheme:
            raise ConfigError(
                f"backend URL {self.url!r} has no scheme (expected http:// or https://)")
        if scheme not in DEFAULT_PORTS:
            raise ConfigError(
                f"backend URL {self.url!r} has scheme {scheme!r}: only http and https")
        if not parts.hostname:
            raise ConfigError(f"backend URL {self.url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"backend URL {self.url!r} carries credentials: pass auth per request")
        if parts.query or parts.fragment:
            raise ConfigError(f"backend URL {self.url!r} has a query or fragment: "
                              "only a base path is allowed")
        host = parts.hostname.lower()
        netloc = f"[{host}]" if ":" in host else host
        if port is not None and port != DEFAULT_PORTS[scheme]:
            netloc += f":{port}"      # "http://a:80" is "http://a": one spelling, one state
        path = parts.path.rstrip("/")
        set_ = object.__setattr__
        set_(self, "url", f"{scheme}://{netloc}{path}")
        set_(self, "scheme", scheme)
        set_(self, "host", host)
        set_(self, "port", port if port is not None else DEFAULT_PORTS[scheme])
        set_(self, "path", path)

    @property
    def netloc(self) -> str:
        """``host:port`` as it goes in a URL (IPv6 in brackets, default port left out)."""
        return urllib.parse.urlsplit(self.url).netloc

    @property
    def identity(self) -> tuple[str, str, int, str]:
        """What makes two backends the same replica, whatever their weight or spelling."""
        return (self.scheme, self.host, self.port, self.path)


def parse_backend(item: str | Backend) -> Backend:
    """A :class:`Backend` from a Backend or ``"URL"`` / ``"URL weight=N"``."""
    if isinstance(item, Backend):
        return item
    if not isinstance(item, str):
        raise ConfigError(f"backend {item!r} is neither a URL string nor a Backend")
    url, *options = item.split()
    weight: int = 1
    for option in options:
        name, sep, value = option.partition("=")
        if name != "weight" or not sep:
            raise ConfigError(f"backend {item!r} has unknown option {option!r} (expected weight=N)")
        try:
            weight = int(value)
        except ValueError:
            raise ConfigError(
                f"backend {item!r} has weight {value!r}: not a positive integer") from None
    return Backend(url, weight)


def parse_backends(items: Iterable[str | Backend] | str | Backend, *,
                   allow_empty: bool = False) -> tuple[Backend, ...]:
    """Backends from a list or a comma-separated string; rejects duplicates and (unless
    ``allow_empty``) an empty list."""
    if isinstance(items, str):
        items = items.split(",") if items.strip() else []
    elif isinstance(items, Backend):
        items = [items]
    result: list[Backend] = []
    seen: dict[tuple[str, str, int, str], str] = {}
    for item in items:
        if isinstance(item, str) and not item.strip():
            raise ConfigError(f"backend list has an empty entry: {items!r}")
        backend = parse_backend(item.strip() if isinstance(item, str) else item)
        if backend.identity in seen:
            raise ConfigError(
                f"backend {backend.url!r} is listed twice (as {seen[backend.identity]!r})")
        seen[backend.identity] = backend.url
        result.append(backend)
    if not result and not allow_empty:
        raise ConfigError("backend list is empty: give at least one URL")
    return tuple(result)
