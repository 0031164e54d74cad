"""The write side of `BlockCache`: `put` (one block's file) and `put_run` (a run file of a
GET's consecutive blocks), from the room claimed under the lock to the file published with
its index records.

`CacheWrites` is a part of `BlockCache` (its base class, extending `CacheSpace`), split out
as space.py was: the state it uses is `BlockCache`'s, guarded by its `_lock`, and the
concurrency protocol is in docs/cache.md. A put claims room (`_claim_locked`: reservations
and LRU victims, its block ids marked as being written), writes a temp file outside the lock
(over an evicted file where recycle.py offers one), then, under the lock again, renames it
into place and records it (`_publish_locked`), unless its blocks were invalidated meanwhile.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import google_crc32c
import lmdb

from wsfuse.cache import schema
from wsfuse.cache.blockfile import (
    RUN_SLOTS,
    BlockFileWriter,
    Slot,
    block_file_size,
    direct_padding,
    unlink_quietly,
)
from wsfuse.cache.schema import BlockKey, BlockRecord, block_id
from wsfuse.cache.space import CacheSpace

if TYPE_CHECKING:
    from wsfuse.cache.index import MetadataIndex
    from wsfuse.cache.recycle import FilePool


class CacheWrites(CacheSpace):
    """`BlockCache`'s puts. Not usable alone: `BlockCache` provides the state below."""

    if TYPE_CHECKING:  # what the puts use of BlockCache
        _block_size: int
        _clock: Callable[[], float]
        _closed: bool
        _files: BlockFileWriter
        _index: MetadataIndex
        _lock: threading.Lock
        _spares: FilePool
        _tmp_dir: str
        _tmp_names: itertools.count[int]
        _bytes_written: int
        _reused: int

        def _path(self, bid: bytes) -> str: ...
        def _remove(
            self, victims: Sequence[tuple[bytes, int]], *, recycle: bool = True
        ) -> None: ...
        def _skip(self, reason: str, warn: bool = False) -> None: ...

    def put(
        self, bkey: BlockKey, data: bytes, *, direct: bool = False, crc: int | None = None
    ) -> None:
        """Cache `data` as block `bkey` (the last block of an object may be short).

        `crc`: `checksum(data)`, if the caller computed it already. A wrong one costs a
        miss when the block is next read (verification fails), never wrong data.

        `direct`: nobody is expected to read this block back soon (it was handed to its
        reader from memory, or was just uploaded), so write it with O_DIRECT where possible,
        without filling the page cache (blockfile.py says why).

        Evicts least-recently-used blocks to stay within the capacity and above the free-space
        guard. If the block cannot be stored (no room even after evicting, disk full, I/O
        error), it is not cached: no exception, no partial file, one rate-limited WARNING.
        A block already cached, or being written by another thread, is left alone: blocks are
        version-addressed, so its content is the same.
        """
        size = len(data)
        if size > self._block_size:
            raise ValueError(f"{size} bytes is larger than the block size {self._block_size}")
        bid = block_id(bkey)
        hsize = schema.header_size(bkey)
        direct_pad = (
            direct_padding(hsize, data) if direct and self._files.direct_supported else None
        )
        disk_bytes = block_file_size(hsize, direct_pad, size)
        pad = direct_pad or 0
        now = self._clock()
        with self._lock:
            if self._closed or bid in self._writing or bid in self._unlinking:
                return
            fid = self._where_locked(bid)[0]
            if fid in self._entries:
                self._entries.move_to_end(fid)
                self._atimes.note(fid, now)
                return
            if fid != bid:
                return  # in a run file being removed: as for `_unlinking`
            victims, refusal = self._claim_locked([bid], size, disk_bytes)
        if not self._settle(victims, refusal):
            return
        if crc is None:
            crc = google_crc32c.value(data)
        header = schema.pack_block_header(bkey, size, crc, pad)
        self._write_and_publish(
            lambda tmp, reuse: self._files.write(
                tmp, header, pad, data, direct=direct, reuse=reuse
            ),
            [(bid, BlockRecord(size, crc, now).pack())],
            size,
            disk_bytes,
            direct_write=direct_pad is not None,
        )

    def put_run(
        self, bkeys: Sequence[BlockKey], blocks: Sequence[bytes], crcs: Mapping[int, int]
    ) -> None:
        """Cache consecutive blocks of one object version (a GET's run, `bkeys[k]` holding
        `blocks[k]`, `crcs[k]` its checksum where known) in run files: several blocks per
        file, each written with O_DIRECT as `put(direct=True)` would write it alone.

        Why: a file per block costs an open, a close, a rename and an index transaction per
        MiB, and the thread that writes them takes the GIL back after each; for a cold read
        that was about a third of the daemon's CPU (docs/performance.md, session 21). A run
        file pays them once per run.

        A run file is evicted whole (its blocks were fetched together and are read
        together), so runs are cut to at most a quarter of the capacity. A piece of one
        block, and a piece that cannot be a run file (a block already cached or in flight,
        O_DIRECT unavailable or refused, a block whose memory layout O_DIRECT cannot write
        from), is put block by block."""
        if len(bkeys) != len(blocks):
            raise ValueError(f"{len(bkeys)} block keys for {len(blocks)} blocks")
        most = max(1, min(RUN_SLOTS, self._capacity // 4 // self._block_size))
        count = len(bkeys)
        # An object's last block may be too short for O_DIRECT to write from where it lies:
        # alone, so that the blocks before it still make run files.
        if count > 1 and direct_padding(schema.header_size(bkeys[-1]), blocks[-1]) is None:
            count -= 1
        for first in range(0, count, most):
            piece = range(first, min(first + most, count))
            if len(piece) > 1 and self._put_run_file(
                [bkeys[k] for k in piece], [blocks[k] for k in piece], [crcs.get(k) for k in piece]
            ):
                continue
            for k in piece:
                self.put(bkeys[k], blocks[k], direct=True, crc=crcs.get(k))
        if count < len(bkeys):
            self.put(bkeys[-1], blocks[-1], direct=True, crc=crcs.get(count))

    def _put_run_file(
        self, bkeys: list[BlockKey], blocks: list[bytes], crcs: list[int | None]
    ) -> bool:
        """One run file of `blocks`: False if one does not apply (then the caller puts them
        one by one), True when done (cached, or not cached for a reason `put` also has)."""
        first = bkeys[0]
        if not self._files.direct_supported:
            return False
        slots: list[Slot] = []
        sums: list[int] = []
        offsets: list[int] = []
        disk_bytes = 0
        for k, (bkey, data) in enumerate(zip(bkeys, blocks, strict=True)):
            if len(data) > self._block_size:
                raise ValueError(f"{len(data)} bytes is larger than the block size")
            if (bkey.key, bkey.etag, bkey.index) != (first.key, first.etag, first.index + k):
                raise ValueError("a run file holds consecutive blocks of one version")
            hsize = schema.header_size(bkey)
            pad = direct_padding(hsize, data)
            if pad is None:
                return False
            crc = crcs[k]
            if crc is None:
                crc = google_crc32c.value(data)
            sums.append(crc)
            slots.append(Slot(schema.pack_block_header(bkey, len(data), crc, pad), pad, data))
            offsets.append(disk_bytes)
            disk_bytes += block_file_size(hsize, pad, len(data))
        bids = [block_id(bkey) for bkey in bkeys]
        size, now = sum(map(len, blocks)), self._clock()
        with self._lock:
            if self._closed:
                return True
            known = (self._entries, self._members, self._writing, self._unlinking)
            if any(b in place for b in bids for place in known):
                return False  # `put` sorts out which of them are there
            victims, refusal = self._claim_locked(bids, size, disk_bytes)
        if not self._settle(victims, refusal):
            return True
        records = [
            (bid, BlockRecord(len(slot.data), crc, now, first.index, offset).pack())
            for bid, slot, crc, offset in zip(bids, slots, sums, offsets, strict=True)
        ]
        return self._write_and_publish(
            lambda tmp, reuse: self._files.write_run(tmp, slots, reuse=reuse),
            records,
            size,
            disk_bytes,
            direct_write=True,
            offsets=offsets,
        )

    def _claim_locked(
        self, bids: list[bytes], size: int, disk_bytes: int
    ) -> tuple[list[tuple[bytes, int]], tuple[str, bool] | None]:
        """Reserve room for a put of the file of `bids` (its first one names it), marking
        them as being written; `_reserve_locked`'s victims and refusal."""
        victims, refusal = self._reserve_locked(size, disk_bytes)
        if refusal is None:
            self._writing.update(bids)
            self._reserved += size
            self._reserved_disk += disk_bytes
        return victims, refusal

    def _settle(self, victims: list[tuple[bytes, int]], refusal: tuple[str, bool] | None) -> bool:
        """Remove a claim's victims; whether the put goes on (else it is counted as skipped)."""
        if victims:
            self._remove(victims)
        if refusal is not None:
            self._skip(*refusal)
            return False
        return True

    def _write_and_publish(
        self,
        write: Callable[[str, bool], bool | None],
        records: list[tuple[bytes, bytes]],
        size: int,
        disk_bytes: int,
        *,
        direct_write: bool,
        offsets: list[int] | None = None,
    ) -> bool:
        """Write a claimed file into a temp file (`write(tmp, reuse)`: whether it wrote over
        an old file, None if O_DIRECT was refused) and publish it with `records`; a failure
        is a skipped put. False only when `write` answered None (nothing is cached)."""
        bids = [bid for bid, _ in records]
        fid = bids[0]
        tmp, reuse = self._temp_file(fid, direct_write=direct_write)
        failure: str | None = None
        reserved, renamed, written = True, False, None
        try:
            written = write(tmp, reuse)
            with self._lock:
                reserved = False
                doomed = self._end_write_locked(bids, size, disk_bytes)
                if written is not None and not (doomed or self._closed):
                    failure = self._publish_locked(tmp, fid, records)
                    renamed = failure is None
                    if renamed:
                        self._add_entry_locked(bids, size, written, offsets)
        except OSError as exc:
            failure = _describe_write_error(exc)
        finally:
            if reserved:
                with self._lock:
                    self._end_write_locked(bids, size, disk_bytes)
            if not renamed:
                unlink_quietly(tmp)
        if failure is not None:
            self._skip(failure, warn=True)
        return written is not None or failure is not None

    def _temp_file(self, bid: bytes, *, direct_write: bool) -> tuple[str, bool]:
        """A temp file name for a put of `bid`, and whether an evicted file was moved there
        to be written over (recycle.py): only for O_DIRECT writes, which write whole pages
        and so never read the old file first."""
        tmp = os.path.join(self._tmp_dir, f"{bid.hex()}.{next(self._tmp_names)}{schema.TMP_SUFFIX}")
        return tmp, direct_write and self._spares.take(tmp)

    def _add_entry_locked(
        self, bids: list[bytes], size: int, reused: bool, offsets: list[int] | None
    ) -> None:
        """A published file in the LRU; with `offsets`, a run file of `bids`."""
        fid = bids[0]
        self._entries[fid] = size
        self._cached_bytes += size
        self._bytes_written += size
        self._reused += reused
        if offsets is not None:
            self._runs[fid] = tuple(bids)
            for bid, offset in zip(bids, offsets, strict=True):
                self._members[bid] = (fid, offset)

    def _publish_locked(
        self, tmp: str, fid: bytes, records: list[tuple[bytes, bytes]]
    ) -> str | None:
        """Publish a written file (a block's, or a run file); returns why it failed, or None.
        Rename first, records second, so the index never names an incomplete file; both under
        the lock, so no eviction or invalidation sees one without the other."""
        path = self._path(fid)
        try:
            try:
                os.rename(tmp, path)
            except FileNotFoundError:
                # Its fanout directory was removed after the cache was opened (which made
                # all of them): made again.
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.rename(tmp, path)
        except OSError as exc:
            return _describe_write_error(exc)
        try:
            self._index.put_many(schema.DB_BLOCKS, records)
        except lmdb.Error as exc:
            unlink_quietly(path)
            return f"cannot record it in the index: {exc}"
        return None


def _describe_write_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the cache disk is full ({exc.strerror})"
    return f"cannot write a block file: {exc}"
