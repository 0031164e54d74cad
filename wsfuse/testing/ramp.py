"""Ramp data: the byte at offset `o` of object `key` is `(seed(key) + o) % 251`.

Any range of any object can be checked without storing the expected bytes, and a byte from
the wrong offset or the wrong object shows up (251 is prime, so shifted data never matches).
"""

from __future__ import annotations

import zlib

_PERIOD = 251
_CYCLE = bytes(range(_PERIOD)) * 2


def ramp_seed(key: str) -> int:
    return zlib.crc32(key.encode()) % _PERIOD


def ramp(key: str, offset: int, length: int) -> bytes:
    """`length` bytes of `key`'s ramp starting at `offset`."""
    start = (ramp_seed(key) + offset) % _PERIOD
    head = _CYCLE[start : start + _PERIOD]  # one period starting at the right phase
    reps, rest = divmod(length, _PERIOD)
    return head * reps + head[:rest]
