"""Where the block cache's space goes, and the eviction policy that keeps it within bounds.

`CacheSpace` is what `BlockCache` (its subclass) knows of every block id and the bytes it
takes, and decides what to evict: the LRU of cached blocks within the capacity, the puts in
flight and what they reserved, the removals in flight and what they will free, and the
free-space guard (`min_free`) with its measurements of the disk. It does no file I/O but
`statvfs`: the block files and index records behind these states, and their removal
(`BlockCache._remove`), are blockcache.py's. Everything here is guarded by `BlockCache._lock`
and runs under it (the `_locked` methods, and `_sampled_free` through `_disk_free`); the
concurrency protocol is in docs/cache.md.

A block id is in at most one of three places:
    `_entries`    cached: the file is complete and recorded (the LRU, least recent first);
    `_writing`    a put is writing its temp file; nobody else writes or removes that id;
    `_unlinking`  removal decided (eviction, invalidation, corruption), file not yet gone;
                  a put of that id is skipped until it is gone, so a fresh file is never
                  deleted by a late unlink.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from wsfuse.cache.accesstimes import AccessTimes

#: The free-space guard measures the disk (`statvfs`) at most once per this many seconds
#: while it is more than `FREE_SAMPLE_MARGIN` above the guard, counting every byte written
#: since as used: a cold read stores a block per MiB, and each `statvfs` was one more system
#: call (one more GIL round trip) per block. Closer to the guard, it measures on every put.
#: The trade-off: another process that writes more than the margin within the interval can
#: take the disk below the guard until the next measurement (at most a second later).
FREE_SAMPLE_SECONDS: Final = 1.0
FREE_SAMPLE_MARGIN: Final = 1 << 30

#: Free bytes on the cache's filesystem (injectable so tests can simulate a full disk).
DiskFree = Callable[[], int]


class CacheSpace:
    """The block ids of a `BlockCache` by state, the bytes they take, and the choice of LRU
    victims. Not thread-safe on its own: `BlockCache` calls it under its `_lock`."""

    if TYPE_CHECKING:  # what the space accounts use of BlockCache
        _dir: str
        _atimes: AccessTimes

    def __init__(self, *, capacity: int, min_free: int, disk_free: DiskFree | None) -> None:
        self._capacity = capacity
        self._min_free = min_free
        self._disk_free = disk_free or self._sampled_free
        self._free_sample: tuple[int, float] | None = None  # (bytes free, monotonic time)
        self._written_since_sample = 0  # disk bytes of puts ended since that sample
        self._last_free: int | None = None  # what the last put's `_disk_free()` said

        # GUARDED_BY: BlockCache._lock (everything below)
        # INVARIANT: _entries, _writing and _unlinking are pairwise disjoint.
        # INVARIANT: id in _entries => its file is complete and its index record written.
        self._entries: OrderedDict[bytes, int] = OrderedDict()  # id -> data size, LRU first
        self._cached_bytes = 0  # INVARIANT: == sum(_entries.values())
        self._writing: set[bytes] = set()
        self._doomed: set[bytes] = set()  # INVARIANT: subset of _writing (invalidated mid-put)
        self._unlinking: dict[bytes, int] = {}  # id -> data size
        # Run files (`put_run`, writes.py): where each of their blocks is (file id, offset),
        # and each file's blocks; the ids above are then file ids (a run file's is its first
        # block's). A block in neither map has a file of its own, named by its id.
        # INVARIANT: b in _members => _members[b][0] in _runs and b in _runs[that id].
        # A run file's entries leave these maps only once its removal is complete
        # (`BlockCache._remove`), so a put of one of its blocks is skipped until then.
        self._members: dict[bytes, tuple[bytes, int]] = {}
        self._runs: dict[bytes, tuple[bytes, ...]] = {}
        self._unlinking_bytes = 0  # INVARIANT: == sum(_unlinking.values())
        # Capacity and disk space promised to puts in flight.
        # INVARIANT: _cached_bytes + _reserved <= capacity, whenever _lock is released.
        self._reserved = 0
        self._reserved_disk = 0
        self._evictions = 0
        # Blocks taken out of _entries so far: a `get` whose file vanished tells an eviction
        # or invalidation in between (a miss) from a file removed behind the cache's back.
        self._removals = 0

    def _reserve_locked(
        self, size: int, disk_bytes: int
    ) -> tuple[list[tuple[bytes, int]], tuple[str, bool] | None]:
        """Pick LRU victims so that `size` more bytes fit the capacity and `disk_bytes` more
        keep `min_free` free. Returns the victims (already out of `_entries`, to be removed by
        the caller) and, if the block cannot be cached, `(reason, warn)`."""
        victims: list[tuple[bytes, int]] = []
        if size + self._reserved > self._capacity:
            # Larger than the cache, or the cache is taken by writes in flight: evicting
            # would not help.
            return victims, (f"the cache capacity ({self._capacity} bytes) is too small", False)
        while self._cached_bytes + self._reserved + size > self._capacity:
            victims.append(self._pop_lru_locked())
        try:
            free = self._last_free = self._disk_free()
        except OSError as exc:
            self._last_free = None
            return victims, (f"cannot measure free space: {exc}", True)
        # Space being freed by removals in flight counts as free; space promised to writes in
        # flight does not. So concurrent puts neither over-evict nor overshoot the guard.
        free += self._unlinking_bytes - self._reserved_disk
        needed = self._min_free + disk_bytes
        while free < needed and self._entries:
            victim = self._pop_lru_locked()
            victims.append(victim)
            free += victim[1]
        if free < needed:
            return victims, (
                f"free space on {self._dir} is below the guard of {self._min_free} bytes "
                f"(--min-free) and nothing is left to evict",
                True,
            )
        return victims, None

    def _where_locked(self, bid: bytes) -> tuple[bytes, int | None]:
        """The file holding block `bid` and its offset there: (`bid`, None) for its own file."""
        member = self._members.get(bid)
        return (bid, None) if member is None else member

    def _pop_lru_locked(self) -> tuple[bytes, int]:
        bid = next(iter(self._entries))
        return self._pop_locked(bid, evicted=True)

    def _pop_locked(self, bid: bytes, *, evicted: bool) -> tuple[bytes, int]:
        """Move `bid` from `_entries` to `_unlinking`; the caller then calls `_remove`."""
        size = self._entries.pop(bid)
        self._removals += 1
        self._cached_bytes -= size
        self._unlinking[bid] = size
        self._unlinking_bytes += size
        self._atimes.forget(bid)
        if evicted:
            self._evictions += 1
        return bid, size

    def _end_write_locked(self, bids: list[bytes], size: int, disk_bytes: int) -> bool:
        """Release a put's reservation (of the file of `bids`: one block's, or a run file's);
        returns whether any of its blocks was invalidated meanwhile."""
        self._reserved -= size
        self._reserved_disk -= disk_bytes
        self._written_since_sample += disk_bytes  # written or not: counted as used
        doomed = False
        for bid in bids:
            self._writing.discard(bid)
            if bid in self._doomed:
                self._doomed.discard(bid)
                doomed = True
        return doomed

    def _room_to_recycle_locked(self, spare_bytes: int) -> bool:
        """Whether evicted files may be kept for reuse (recycle.py), `spare_bytes` at most:
        only while the last put found the disk well above the guard, so that the guard's
        evictions free space rather than fill the pool. (No measurement of its own: a
        removal follows the put that measured, or is rare.)"""
        free = self._last_free
        return free is not None and free - self._min_free > 2 * spare_bytes

    def _sampled_free(self) -> int:
        """Free bytes on the cache's disk, from a recent `statvfs` when far from the guard
        (see `FREE_SAMPLE_SECONDS`). Called under `_lock`."""
        now = time.monotonic()
        if self._free_sample is not None and now - self._free_sample[1] < FREE_SAMPLE_SECONDS:
            estimate = self._free_sample[0] - self._written_since_sample
            if estimate - self._min_free > FREE_SAMPLE_MARGIN:
                return estimate
        free = self._statvfs_free()
        self._free_sample = (free, now)
        self._written_since_sample = 0
        return free

    def _statvfs_free(self) -> int:
        st = os.statvfs(self._dir)
        return st.f_bavail * st.f_frsize  # what an unprivileged writer can use
