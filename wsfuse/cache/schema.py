"""Every on-disk format of the local cache, in one place: the cache directory layout, the
block-file header, the block identity, and the LMDB index schema (names, keys, records).

Change anything here and bump the matching version: `BLOCK_FORMAT_VERSION` for block files
(old files then fail verification and are dropped as corrupt, one WARNING each — acceptable
for a cache, but say so in the release notes), `SCHEMA_VERSION` for the index (an older index
is rebuilt on open, a newer one refused; see `wsfuse.cache.index`). `docs/cache.md` describes
the same formats for people; keep the two in step.

Cache directory layout (`DIR` is the per-bucket directory from `wsfuse.cachedir`)::

    DIR/lock                  flock'ed by the daemon using DIR; holds its pid (wsfuse.cache.lock)
    DIR/index/                the LMDB environment (data.mdb, lock.mdb)
    DIR/tmp/                  blocks being written; anything here at startup is crash debris
    DIR/blocks/XX/<64 hex>    a cached block's file (header + data), or a run file of
                              consecutive blocks of one version (each header + data, from a
                              page boundary), named by its first block's id; XX = fanout byte
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

# --------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class BlockKey:
    """One block of one version of one object: bytes `[index * block_size, ...)` of `key` as
    it was at `etag` (S3 ETag / GCS generation).

    Version-addressed: an overwritten object has a new etag, hence new keys, so a stale block
    can never be served — it can only age out of the cache.
    """

    key: str
    etag: str
    index: int


# Object keys and etags are stored as UTF-8. `surrogatepass` makes encoding total: a `str`
# decoded from a file name with `surrogateescape` still gets a stable, distinct encoding.
_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogatepass"
# Key and etag lengths are u16 in the header; S3 and GCS cap keys at 1,024 bytes anyway.
MAX_NAME_BYTES: Final = 0xFFFF

#: Length of a block id: 16 bytes of sha256(key) + 8 bytes of sha256(etag) + 8 bytes index.
BLOCK_ID_SIZE: Final = 32
#: Bytes of a block id identifying the object key (any version): the invalidation prefix.
OBJECT_PREFIX_SIZE: Final = 16
#: Bytes of a block id identifying one version of one object.
VERSION_PREFIX_SIZE: Final = 24

_INDEX: Final = struct.Struct(">Q")  # big-endian, so ids of one version sort by block index


def encode_name(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


def object_prefix(key: str) -> bytes:
    """The block-id prefix shared by every cached block of `key`, whatever its version."""
    return hashlib.sha256(encode_name(key)).digest()[:OBJECT_PREFIX_SIZE]


@functools.lru_cache(maxsize=1024)
def version_prefix(key: str, etag: str) -> bytes:
    """The block-id prefix shared by every cached block of one version of `key`. Remembered
    for the most recent versions: a sequential read asks for it several times per block
    (read-ahead checks, hand-over, cache write), and each time costs two SHA-256s."""
    etag_digest = hashlib.sha256(encode_name(etag)).digest()[
        : VERSION_PREFIX_SIZE - OBJECT_PREFIX_SIZE
    ]
    return object_prefix(key) + etag_digest


def block_id(bkey: BlockKey) -> bytes:
    """The 32-byte id of a block: its LMDB key in the "blocks" DB and (in hex) its file name.

    Layout: `sha256(key)[:16] ‖ sha256(etag)[:8] ‖ index (u64 big-endian)`. Hash prefixes keep
    the id a fixed 32 bytes (LMDB keys are limited to 511 bytes, object keys are not) while
    letting a prefix scan find every block of an object (`invalidate_object`) or of a version.
    A collision could only make two blocks share a file name; the header check on every read
    (full key, etag and index) turns that into a miss, never into wrong data.
    """
    if bkey.index < 0:
        raise ValueError(f"negative block index in {bkey}")
    return version_prefix(bkey.key, bkey.etag) + _INDEX.pack(bkey.index)


def block_index_of(bid: bytes) -> int:
    return int(_INDEX.unpack_from(bid, VERSION_PREFIX_SIZE)[0])


# --------------------------------------------------------------------------- directory layout

LOCK_FILE: Final = "lock"
INDEX_DIR: Final = "index"
TMP_DIR: Final = "tmp"
BLOCKS_DIR: Final = "blocks"
#: Suffix of block files being written in `TMP_DIR` (everything there is removed at startup).
TMP_SUFFIX: Final = ".tmp"
#: 256 fanout directories keep directories small (a 1 TiB cache of 1 MiB blocks is ~4,000
#: files per directory). All are made when the cache is opened (recovery.scan_block_files).
FANOUT: Final = 256


def fanout_of(bid: bytes) -> int:
    """The fanout directory of a block: mixes the object hash with the block index's low byte,
    so the blocks of one large object spread over all directories instead of filling one."""
    return bid[0] ^ bid[BLOCK_ID_SIZE - 1]


def block_relpath(bid: bytes) -> str:
    """`blocks/XX/<hex id>`, relative to the cache directory."""
    return f"{BLOCKS_DIR}/{fanout_of(bid):02x}/{bid.hex()}"


# --------------------------------------------------------------------------- block file format

#: First bytes of every block file: "WSFuse Block".
BLOCK_MAGIC: Final = b"WSFB"
BLOCK_FORMAT_VERSION: Final = 3
#: Versions this code reads: 1 had no padding (its `pad` field was "reserved", always 0);
#: 2 had no zeros after the data.
READABLE_BLOCK_VERSIONS: Final = (1, 2, 3)

# Fixed part of the header, little-endian, 32 bytes:
#   offset size field
#   0      4    magic          b"WSFB"
#   4      2    version        BLOCK_FORMAT_VERSION
#   6      2    key length K   bytes of the UTF-8 object key
#   8      2    etag length E  bytes of the UTF-8 etag
#   10     2    pad P          zero bytes between etag and data (< 4096; aligns the data
#                              for O_DIRECT writes, see blockfile.py)
#   12     4    crc32c         CRC32C (Castagnoli) of the data bytes
#   16     8    block index    u64
#   24     8    data length N  u64; the file is 32 + K + E + P + N bytes, or (version 3)
#                              that rounded up to 4096 with zeros (O_DIRECT writes pages)
#   32     K    key
#   32+K   E    etag
#   32+K+E P    zeros
#   ...+P  N    data
# There is no separate header checksum because every header field is checked against a value
# the reader already knows (magic, version, the BlockKey it asked for, the file's actual
# length) except the CRC, which the data check validates: any flipped bit is a mismatch.
BLOCK_HEADER: Final = struct.Struct("<4sHHHHIQQ")
BLOCK_HEADER_SIZE: Final = BLOCK_HEADER.size  # 32
#: Padding is only ever up to the next 4 KiB boundary.
MAX_PAD: Final = 4096


def header_size(bkey: BlockKey) -> int:
    return BLOCK_HEADER_SIZE + len(encode_name(bkey.key)) + len(encode_name(bkey.etag))


def pack_block_header(bkey: BlockKey, length: int, crc: int, pad: int = 0) -> bytes:
    """The complete header (fixed part + key + etag) of a block file holding `length` bytes
    after `pad` zero bytes."""
    key = encode_name(bkey.key)
    etag = encode_name(bkey.etag)
    if len(key) > MAX_NAME_BYTES or len(etag) > MAX_NAME_BYTES:
        raise ValueError(f"object key or etag longer than {MAX_NAME_BYTES} bytes")
    if not 0 <= pad < MAX_PAD:
        raise ValueError(f"padding of {pad} bytes")
    fixed = BLOCK_HEADER.pack(
        BLOCK_MAGIC, BLOCK_FORMAT_VERSION, len(key), len(etag), pad, crc, bkey.index, length
    )
    return fixed + key + etag


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What a block file's header says, once it has been checked against the expected key."""

    header_size: int
    length: int
    crc32c: int
    pad: int = 0
    version: int = BLOCK_FORMAT_VERSION


def check_block_header(buf: bytes, bkey: BlockKey) -> BlockHeader | str:
    """Check the header at the start of `buf` against `bkey`.

    Returns the parsed header, or a short reason why the header does not belong to `bkey`
    (bad magic, other version, other key...). `buf` must hold at least the full header
    (`header_size(bkey)` bytes); a shorter buffer is reported as truncated. The data length
    and CRC are checked by the caller, which knows the file size and reads the data.
    """
    key = encode_name(bkey.key)
    etag = encode_name(bkey.etag)
    size = BLOCK_HEADER_SIZE + len(key) + len(etag)
    if len(buf) < size:
        return f"truncated header ({len(buf)} of {size} bytes)"
    magic, version, klen, elen, pad, crc, index, length = BLOCK_HEADER.unpack_from(buf)
    if magic != BLOCK_MAGIC:
        return f"bad magic {magic!r}"
    if version not in READABLE_BLOCK_VERSIONS:
        return f"block format version {version}, expected {BLOCK_FORMAT_VERSION}"
    if pad >= (MAX_PAD if version >= 2 else 1):
        return f"padding of {pad} bytes"
    if index != bkey.index:
        return f"header says block {index}"
    if klen != len(key) or elen != len(etag) or buf[BLOCK_HEADER_SIZE:size] != key + etag:
        return "header names another object or version"
    return BlockHeader(size, length, crc, pad, version)


# --------------------------------------------------------------------------- LMDB index schema

#: Version of everything stored in the index. Bump on any change to the DB names, keys or
#: record encodings below (or to the fs core's "objects" / "dirs" / "pending" records).
SCHEMA_VERSION: Final = 1

# Named databases of the LMDB environment in DIR/index:
#   "meta"     small str → bytes settings: schema version, clean-shutdown flag, boot id.
#   "blocks"   block id (32 bytes, see `block_id`) → BlockRecord (below). The one source of
#              truth for which block files (and which blocks of run files) are complete;
#              maintained by BlockCache only.
#   "objects"  object metadata cache; keys and records are owned by the filesystem core.
#   "dirs"     directory listing cache; owned by the filesystem core.
#   "pending"  staged writes not yet committed to the bucket; owned by the filesystem core.
#              Not derivable from anything else, so a schema rebuild keeps it (see index.py).
DB_META: Final = "meta"
DB_BLOCKS: Final = "blocks"
DB_OBJECTS: Final = "objects"
DB_DIRS: Final = "dirs"
DB_PENDING: Final = "pending"
ALL_DBS: Final = (DB_META, DB_BLOCKS, DB_OBJECTS, DB_DIRS, DB_PENDING)
#: DBs whose content can be rebuilt from the bucket and the block files: dropped when an older
#: schema is opened or the index may have been torn by an OS crash.
DERIVED_DBS: Final = (DB_BLOCKS, DB_OBJECTS, DB_DIRS)

# Keys of the "meta" DB (values are ASCII):
#   schema_version  decimal SCHEMA_VERSION of the writer that created the index.
#   clean           b"1" after a clean close (index synced), b"0" while open.
#   boot_id         the kernel boot id while open; together with `clean` it tells a process
#                   crash (page cache intact, index fine) from an OS crash (unsynced pages lost).
META_SCHEMA_VERSION: Final = b"schema_version"
META_CLEAN: Final = b"clean"
META_BOOT_ID: Final = b"boot_id"

# "blocks" record, little-endian, 20 bytes for a block in a file of its own, 36 for a block in
# a run file (a block's own file holds one block at offset 0 and is named by its id; a run
# file holds consecutive blocks of one version, each at its offset, and is named by the id of
# its first block):
#   offset size field
#   0      8    size    data bytes of the block (u64)
#   8      4    crc32c  CRC32C of the data, the same as in the block's header (u32)
#   12     8    atime   last access, seconds since the epoch (f64); written lazily in
#                       batches, so it may lag by up to the flush interval — it only orders
#                       the LRU across restarts. For a run file, its first block's record
#                       holds the file's.
#   20     8    first   (run files only) block index of the run file's first block (u64)
#   28     8    offset  (run files only) where the block's header starts in it (u64)
# Both lengths are read by this code, so the 36-byte records came without a SCHEMA_VERSION
# bump: an older wsfuse finds them of the wrong size and drops them as stale at startup
# (their run files then as orphans), losing cached blocks, not correctness.
_BLOCK_RECORD: Final = struct.Struct("<QId")
_RUN_RECORD: Final = struct.Struct("<QIdQQ")


@dataclass(frozen=True, slots=True)
class BlockRecord:
    size: int
    crc32c: int
    atime: float
    #: block index of the first block of the run file holding this block; None: own file
    run_first: int | None = None
    #: where the block's header starts in its run file
    offset: int = 0

    def pack(self) -> bytes:
        if self.run_first is None:
            return _BLOCK_RECORD.pack(self.size, self.crc32c, self.atime)
        return _RUN_RECORD.pack(self.size, self.crc32c, self.atime, self.run_first, self.offset)

    @staticmethod
    def unpack(data: bytes) -> BlockRecord:
        """Raises ValueError for a record of the wrong size."""
        if len(data) == _BLOCK_RECORD.size:
            size, crc, atime = _BLOCK_RECORD.unpack(data)
            return BlockRecord(size, crc, atime)
        if len(data) == _RUN_RECORD.size:
            return BlockRecord(*_RUN_RECORD.unpack(data))
        raise ValueError(
            f"block record of {len(data)} bytes, expected {_BLOCK_RECORD.size} or "
            f"{_RUN_RECORD.size}"
        )

    def file_id(self, bid: bytes) -> bytes:
        """The id naming the file that holds block `bid` (its own, or its run's first)."""
        if self.run_first is None:
            return bid
        return bid[:VERSION_PREFIX_SIZE] + _INDEX.pack(self.run_first)


def with_atime(record: bytes, atime: float) -> bytes:
    """`record` (a packed BlockRecord) with its access time replaced."""
    if len(record) == _RUN_RECORD.size:
        size, crc, _, first, offset = _RUN_RECORD.unpack(record)
        return _RUN_RECORD.pack(size, crc, atime, first, offset)
    size, crc, _ = _BLOCK_RECORD.unpack(record)
    return _BLOCK_RECORD.pack(size, crc, atime)
