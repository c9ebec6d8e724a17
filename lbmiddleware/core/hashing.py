"""Stable hashing and the Maglev lookup table behind the sticky ``ip_hash`` policy.

Maglev (Eisenbud et al., NSDI 2016) fills a table of a prime number of slots: each backend
walks its own permutation of the slots (an offset and a skip derived from its URL) and takes
the next free slot on its turn; a backend of weight w gets w turns per round. Every backend
ends up with its weighted share of slots to within one slot, and a change of membership
moves close to the minimum of slots. A key is looked up in O(1): ``table[hash(key) % size]``.

Hashes come from BLAKE2b, never from Python's salted ``hash()``, so every process and every
restart maps a key to the same slot.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["stable_hash", "maglev_table", "DEFAULT_TABLE_SIZE"]

DEFAULT_TABLE_SIZE = 65537   # prime; about 65 slots per backend at 1,000 backends


def stable_hash(key: str | bytes) -> int:
    """A 64-bit hash of ``key`` that is the same in every process."""
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def maglev_table(names: Sequence[str], weights: Sequence[int],
                 size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """A Maglev table: ``size`` slots, each holding the index of a backend in ``names``.

    The table depends only on the set of (name, weight) pairs, not on the order they are
    listed in: backends take their turns in the order of their names, so processes that
    list the same backends differently still map every key to the same backend.
    """
    count = len(names)
    if count == 0:
        return []
    order = sorted(range(count), key=names.__getitem__)
    if order != list(range(count)):
        table = maglev_table([names[i] for i in order], [weights[i] for i in order], size)
        return [order[index] for index in table]
    divisor = 0
    for weight in weights:
        divisor = math.gcd(divisor, weight)
    turns = [weight // divisor for weight in weights]
    offsets, skips = [], []
    for name in names:
        digest = hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()
        offsets.append(int.from_bytes(digest[:8], "little") % size)
        skips.append(int.from_bytes(digest[8:], "little") % (size - 1) + 1)
    position = offsets[:]                  # next slot of each backend's permutation
    table = [-1] * size
    filled = 0
    while True:
        for index in range(count):
            skip = skips[index]
            slot = position[index]
            for _ in range(turns[index]):
                while table[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = index
                filled += 1
                if filled == size:
                    return table
                slot += skip
                if slot >= size:
                    slot -= size
            position[index] = slot
