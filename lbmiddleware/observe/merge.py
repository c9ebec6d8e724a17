"""Prometheus text expositions merged into one (the ``/metrics`` of several gateway workers:
:mod:`.peers`): each metric family written once, with every text's samples."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["merge"]


def merge(texts: Sequence[bytes]) -> bytes:
    """Prometheus text expositions as one: each metric family (a ``# HELP`` line and what
    follows it) once, its comment lines from the first text that has it, then the samples
    of every text in their order. (A family written twice is refused by Prometheus.)"""
    families: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
    for text in texts:
        heads: list[bytes] | None = None
        samples: list[bytes] | None = None
        for line in text.splitlines():
            if line.startswith(b"# HELP "):
                name = line.split(b" ", 3)[2]
                known = families.get(name)
                if known is None:
                    families[name] = known = ([line], [])
                    heads = known[0]
                else:
                    heads = None
                samples = known[1]
            elif samples is None:
                continue                    # (nothing before a first family)
            elif line.startswith(b"#"):
                if heads is not None:
                    heads.append(line)
            elif line:
                samples.append(line)
    return b"".join(b"\n".join([*heads, *samples]) + b"\n"
                    for heads, samples in families.values())
