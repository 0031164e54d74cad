"""Startup: the cache directory reconciled with the index after whatever happened before.

A killed process can leave temp files in tmp/ (a put in progress), block files the index does
not record (killed between rename and record) and records whose file is gone (killed between
an eviction's unlink and its record's deletion); so can an OS crash, and anything else found
under blocks/ is not ours. `reconcile` removes all of it and returns the blocks that are both
on disk and recorded. It opens no block file: contents are verified when they are read
(docs/cache.md, "Crash safety" and "Startup").
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Final

from wsfuse import directio
from wsfuse.cache import schema
from wsfuse.cache.blockfile import unlink_quietly
from wsfuse.cache.index import MetadataIndex
from wsfuse.cache.schema import BlockRecord, block_relpath

log = logging.getLogger(__name__)


#: A file with its records: (access time, file id, data bytes, and for a run file its blocks'
#: (id, offset)s, else None).
LiveFile = tuple[float, bytes, int, tuple[tuple[bytes, int], ...] | None]


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What `reconcile` kept and removed."""

    #: every file with both a file and (for a run file, at least one) record, unordered
    live: list[LiveFile]
    #: block files without a (readable) record, removed
    orphans: int
    #: records without a file, deleted
    stale: int


def reconcile(directory: str, tmp_dir: str, index: MetadataIndex) -> Reconciled:
    """Empty `tmp_dir`, remove what is not a well-named block file under `directory`'s
    blocks/, and make files and "blocks" records agree: a file without a record is removed, a
    record without a file deleted."""
    os.makedirs(tmp_dir, exist_ok=True)
    with os.scandir(tmp_dir) as debris:
        for entry in debris:
            _remove_entry(entry)
    files = scan_block_files(directory)
    recorded: dict[bytes, list[tuple[bytes, BlockRecord]]] = {}
    stale: list[bytes] = []
    for bid, value in index.items(schema.DB_BLOCKS):
        try:
            record = BlockRecord.unpack(value)
        except ValueError:  # a record of the wrong size
            stale.append(bid)
            continue
        fid = record.file_id(bid)
        if fid in files:
            recorded.setdefault(fid, []).append((bid, record))
        else:
            stale.append(bid)  # its file is gone
    live: list[LiveFile] = []
    for fid, blocks in recorded.items():
        kept = _file_of(fid, blocks)
        if kept is None:  # no record says what the file is: it goes as an orphan
            stale += [bid for bid, _ in blocks]
            continue
        files.discard(fid)
        stale += [bid for bid, _ in blocks if bid not in kept]
        if len(kept) == 1 and kept[fid].run_first is None:
            live.append((kept[fid].atime, fid, kept[fid].size, None))
        else:
            members = tuple((bid, r.offset) for bid, r in kept.items())
            atime = max(r.atime for r in kept.values())
            live.append((atime, fid, sum(r.size for r in kept.values()), members))
    for bid in files:  # files without records
        unlink_quietly(f"{directory}/{block_relpath(bid)}")
    if stale:
        index.delete_many(schema.DB_BLOCKS, stale)
    return Reconciled(live, len(files), len(stale))


def _file_of(
    fid: bytes, blocks: list[tuple[bytes, BlockRecord]]
) -> dict[bytes, BlockRecord] | None:
    """The records of `blocks` (all naming the file `fid`) that agree with what the file's
    first block's record says it is, in file order; None without that record. A block's own
    file keeps only its record; a run file the run records at distinct page-aligned offsets.
    (Records that disagree are left by a removal whose index update failed.)"""
    records = dict(blocks)
    head = records.get(fid)
    if head is None:
        return None
    if head.run_first is None:
        return {fid: head}
    if head.offset != 0:
        return None
    kept: dict[bytes, BlockRecord] = {}
    offsets: set[int] = set()
    for bid, record in sorted(blocks, key=lambda b: b[1].offset):
        if record.run_first is None or record.offset % directio.ALIGN or record.offset in offsets:
            continue
        offsets.add(record.offset)
        kept[bid] = record
    return kept


def scan_block_files(directory: str) -> set[bytes]:
    """Ids of the well-named block files; anything else under blocks/ is removed, and the
    fanout directories that are missing are made.

    Making all of them here, once per mount, keeps `mkdir` out of the first fill of a cache:
    during a cold read of a fresh cache the daemon otherwise made them one by one, each
    after a failed rename and while holding the cache's lock (~2% of its CPU in a perf
    profile; docs/performance.md, session 15). 256 empty directories cost 1 MiB."""
    found: set[bytes] = set()
    blocks_dir = os.path.join(directory, schema.BLOCKS_DIR)
    os.makedirs(blocks_dir, exist_ok=True)
    present: set[int] = set()
    with os.scandir(blocks_dir) as subdirs:
        for sub in subdirs:
            fan = _parse_fanout_name(sub.name)
            if fan is None or not sub.is_dir(follow_symlinks=False):
                _remove_entry(sub)
                continue
            present.add(fan)
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    bid = _parse_block_name(entry.name)
                    if bid is not None and schema.fanout_of(bid) == fan:
                        found.add(bid)
                    else:
                        _remove_entry(entry)
    try:
        for fan in range(schema.FANOUT):
            if fan not in present:
                os.mkdir(os.path.join(blocks_dir, f"{fan:02x}"))
    except OSError as exc:  # a full disk: the puts that need one try again (and skip)
        log.warning("cannot make the cache's fanout directories in %s: %s", blocks_dir, exc)
    return found


_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def _parse_fanout_name(name: str) -> int | None:
    if len(name) != 2 or not set(name) <= _HEX_DIGITS:
        return None
    return int(name, 16)


def _remove_entry(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        unlink_quietly(entry.path)


def _parse_block_name(name: str) -> bytes | None:
    if len(name) != 2 * schema.BLOCK_ID_SIZE:
        return None
    try:
        bid = bytes.fromhex(name)
    except ValueError:
        return None
    return bid if bid.hex() == name else None  # only the canonical spelling is ours
