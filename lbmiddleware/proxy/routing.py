"""Routing by path prefix: which requests are proxied, and the path that goes upstream.

The rules: ``docs/contract.md``, "Proxying" / "Routing".
"""

from __future__ import annotations

from .refusals import UNSAFE_TEXT

__all__ = ["normalize_prefix", "match_prefix"]


def normalize_prefix(prefix: str) -> str:
    """``"api/"`` -> ``"/api"``; ``""`` and ``"/"`` -> ``"/"``. Rejects CR/LF/NUL, ``?``, ``#``."""
    if UNSAFE_TEXT.search(prefix) or "?" in prefix or "#" in prefix:
        raise ValueError("a path prefix has no control characters, '?' or '#'")
    text = "/" + prefix.strip().strip("/")
    return text


def match_prefix(prefix: str, path: str, strip: bool = False) -> str | None:
    """The path to send upstream if ``path`` is under ``prefix``, else ``None``.

    ``/api`` matches ``/api`` and ``/api/x`` but not ``/apix``. With ``strip`` the prefix
    is removed (``/api/x`` -> ``/x``, ``/api`` -> ``/``). A path with a ``.`` or ``..``
    segment after the prefix is not under it: ``/api/../admin`` is ``/admin`` to a backend
    that normalises paths, so it is left to the app (nginx matches normalised paths).
    """
    if prefix == "/":
        return path if path[:1] == "/" else None       # (a slice: a third of startswith)
    if path.startswith(prefix):
        rest = path[len(prefix):]
        if "/." in rest and any(segment in (".", "..") for segment in rest.split("/")):
            return None
        if not rest:
            return "/" if strip else path
        if rest[0] == "/":
            return rest if strip else path
    return None
