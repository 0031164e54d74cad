"""Evicted block files kept for the next blocks, instead of deleted and created again.

Why: a cache at its capacity evicts a block for every block it stores (a data set larger
than the cache, read each epoch). Deleting a 1 MiB file frees its extents (and, on a
filesystem mounted with `discard`, sends a discard); creating the next one allocates an
inode and new extents, and an O_DIRECT write into new extents is an extending write that
converts unwritten extents when it completes. On ext4 without a journal every new inode also
skips the inodes deleted in the last minutes, one inode-table lookup each (docs/performance.md,
session 9): a reused file allocates no inode at all. On the test VM a full cache storing 1 MiB
blocks took 1,732-2,380 µs of wall time and 435-1,051 µs of CPU per block with unlink and
create, and 882-1,106 µs and 341-423 µs writing over evicted files (`bench/cache_churn.py`,
three runs; docs/cache.md).

The pool is a few files (`RECYCLE_FILES`) in the cache's tmp/ directory, under names that
startup's reconciliation removes like any other debris. Only O_DIRECT puts take from it: they
write whole pages, so writing over an old file never reads it first. A file being read is
never handed out: `BlockCache` counts the reads in progress per block and deletes an evicted
file that is being read, so a reader keeps seeing the whole file it opened, as with any
deleted file behind an open descriptor.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import Final

from wsfuse.cache import schema
from wsfuse.cache.blockfile import unlink_quietly

log = logging.getLogger(__name__)

#: Evicted files kept at most. An evicting put removes about one file per file it stores,
#: so a few absorb the bursts (one 1 MiB block evicting several small ones).
RECYCLE_FILES: Final = 32


class FilePool:
    """A bounded stack of spare files in `directory`. Thread-safe; renames happen outside the
    lock, each on a name that is this pool's alone."""

    def __init__(self, directory: str, limit: int = RECYCLE_FILES) -> None:
        self._dir = directory
        self.limit = limit
        self._names = itertools.count()  # next() is atomic under the GIL
        self._lock = threading.Lock()
        # GUARDED_BY: _lock
        self._spare: list[str] = []
        self._incoming = 0  # gives between their check and their rename
        self._drains = 0  # a give that started before a drain does not keep its file
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._spare)

    def give(self, path: str) -> bool:
        """Keep the file at `path` (moved into the pool). False when the pool is full or
        closed, or the move failed: the file is then still the caller's to delete."""
        with self._lock:
            if self._closed or len(self._spare) + self._incoming >= self.limit:
                return False
            self._incoming += 1
            drains = self._drains
        spare = f"{self._dir}/free.{next(self._names)}{schema.TMP_SUFFIX}"
        try:
            os.rename(path, spare)
        except OSError:
            with self._lock:
                self._incoming -= 1
            return False
        if not self._keep(spare, drains):
            unlink_quietly(spare)  # drained or closed meanwhile
        return True

    def _keep(self, spare: str, drains: int) -> bool:
        with self._lock:
            self._incoming -= 1
            if self._closed or self._drains != drains:
                return False
            self._spare.append(spare)
            return True

    def take(self, path: str) -> bool:
        """Move a spare file to `path` (which must not exist); False if there is none."""
        while True:
            with self._lock:
                if not self._spare:
                    return False
                spare = self._spare.pop()
            try:
                os.rename(spare, path)
                return True
            except FileNotFoundError:
                continue  # removed behind the pool's back (tmp/ emptied): try the next
            except OSError as exc:
                log.debug("cannot reuse %s: %s", spare, exc)
                unlink_quietly(spare)
                return False

    def drain(self) -> None:
        """Delete the spare files (the disk needs their space, or nothing will take them)."""
        with self._lock:
            spares, self._spare = self._spare, []
            self._drains += 1
        for spare in spares:
            unlink_quietly(spare)

    def close(self) -> None:
        """Delete the spare files; later gives are refused."""
        with self._lock:
            self._closed = True
        self.drain()
