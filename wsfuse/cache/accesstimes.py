"""`AccessTimes`: the block cache's read times, persisted in batches.

The LRU order lives in memory (`CacheSpace._entries`); the index keeps each block's last
access time only so that the next mount can rebuild that order. Writing it on every read would
be an LMDB transaction per 1 MiB read, so reads are collected here and written together:
after `FLUSH_COUNT` distinct blocks, or `FLUSH_INTERVAL` seconds after the oldest unwritten
read, and at `sync`/`close`. Losing the last batch to a crash costs a slightly worse eviction
order after the restart, nothing else.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

import lmdb

from wsfuse.cache.index import MetadataIndex

log = logging.getLogger(__name__)

#: Access times are persisted in batches: after this many distinct blocks were read...
FLUSH_COUNT: Final = 1024
#: ...or this many seconds after the oldest unflushed read.
FLUSH_INTERVAL: Final = 30.0


class AccessTimes:
    """Unwritten access times of cached blocks. Not thread-safe on its own: `note`, `forget`
    and `due` are called under `BlockCache._lock`, which `take` must be called under too;
    `write` runs outside it (an LMDB write transaction)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._pending: dict[bytes, float] = {}
        self._since = math.inf  # monotonic time of the oldest unwritten access

    def note(self, bid: bytes, atime: float) -> None:
        """Block `bid` was read (or put again) at wall-clock time `atime`."""
        self._pending[bid] = atime
        if self._since == math.inf:
            self._since = self._monotonic()

    def forget(self, bid: bytes) -> None:
        """`bid` left the cache: its access time is not written."""
        self._pending.pop(bid, None)

    def due(self) -> bool:
        """Whether enough has accumulated (or for long enough) to write a batch."""
        return (
            len(self._pending) >= FLUSH_COUNT or self._monotonic() - self._since >= FLUSH_INTERVAL
        )

    def take(self) -> dict[bytes, float]:
        """The pending access times; the batch starts empty again."""
        batch, self._pending = self._pending, {}
        self._since = math.inf
        return batch

    @staticmethod
    def write(index: MetadataIndex, batch: dict[bytes, float]) -> None:
        """Record a `take`n batch in the index; a failure is logged, never raised (the times
        only order evictions)."""
        if not batch:
            return
        try:
            index.touch_blocks(batch.items())
        except lmdb.Error as exc:
            log.warning("cannot record block access times in the index: %s", exc)
