"""`MetadataIndex`: the LMDB environment that records what the local cache holds.

It is the one source of truth for which block files are complete ("blocks", maintained by
`BlockCache`), and the persistent store of the filesystem core ("objects", "dirs",
"pending"), which uses the small generic API: `get`, `put_many`, `delete_many`, `items`,
and `write` for an atomic change across DBs. Names, keys and records are defined in
`wsfuse.cache.schema`.

Thread-safe: every method runs one short transaction of its own and returns with it closed
(no transaction is ever held across calls, let alone across an `await`). LMDB allows one write
transaction at a time; concurrent writers queue on its lock. Results are copies (`bytes`,
lists), never views into the memory map.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Final

import lmdb

from wsfuse.cache import schema
from wsfuse.errors import UserError

log = logging.getLogger(__name__)

#: Address space reserved for the map, not disk: LMDB grows data.mdb as records are written
#: and only fails (MapFullError) past this size. 1 TiB of index is billions of records, far
#: beyond any cache, and costs nothing on a 64-bit system.
DEFAULT_MAP_SIZE: Final = 1 << 40
#: Reader slots: one per concurrent read transaction. Trio's default thread limit is 40;
#: the slots are cheap (a cache line each in lock.mdb).
MAX_READERS: Final = 512
_BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    """The kernel's boot id (changes on every reboot), or "unknown" where there is none."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


class MetadataIndex:
    """An LMDB environment in directory `path` with the named DBs of `schema.ALL_DBS`.

    Opening checks the schema version: an index written by a newer wsfuse raises `UserError`;
    an older one is rebuilt (derived DBs dropped, "pending" kept). An index left open by an OS
    crash or power loss (not a clean close, and another boot id) may have lost unsynced pages,
    so it is moved aside to `<path>.damaged` and a fresh one is started; the "pending" records
    are carried over when they can still be read.

    Durability: commits are not synced (see `_open_env`); call `sync()` where something must
    survive an OS crash (the filesystem core does at fsync points), and `close()` syncs.

    Open an environment once per process and share the object (LMDB forbids opening it twice:
    closing the second copy drops the first one's locks); a second open raises RuntimeError.
    """

    _open_paths: ClassVar[set[str]] = set()
    _open_paths_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, path: Path, *, map_size: int = DEFAULT_MAP_SIZE, boot_id: str | None = None
    ) -> None:
        self._path = path
        self._map_size = map_size
        self._boot_id = current_boot_id() if boot_id is None else boot_id
        self._closed = False
        self._env: Any = None
        self._dbs: dict[str, Any] = {}
        path.mkdir(parents=True, exist_ok=True)
        self._real_path = os.path.realpath(path)
        with self._open_paths_lock:
            if self._real_path in self._open_paths:
                raise RuntimeError(f"the cache index {path} is already open in this process")
            self._open_paths.add(self._real_path)
        try:
            try:
                self._env = self._open_env()
                self._dbs = self._open_dbs()
            except lmdb.Error as exc:
                self._start_over(f"cannot open it: {exc}")
            self._check_and_mark_open()
        except BaseException:
            if self._env is not None:
                self._env.close()
            self._forget_path()
            raise

    def _forget_path(self) -> None:
        with self._open_paths_lock:
            self._open_paths.discard(self._real_path)

    # ------------------------------------------------------------------ opening

    def _open_env(self) -> Any:
        # sync=False, metasync=False: a commit costs a few microseconds instead of an fsync.
        # That is safe because the index only ever *follows* the block files: a block file is
        # renamed into place before its record is written, and every read verifies the file's
        # own header and CRC, so a record lost by a crash merely orphans a complete file,
        # which the next startup removes. A process crash (kill -9) loses nothing (the page
        # cache has every commit); an OS crash may tear the environment, which the
        # clean/boot_id check below detects. Data that must be durable is made so by an
        # explicit `sync()`.
        return lmdb.open(
            str(self._path),
            subdir=True,
            map_size=self._map_size,
            max_dbs=len(schema.ALL_DBS) + 2,
            max_readers=MAX_READERS,
            sync=False,
            metasync=False,
            lock=True,
        )

    def _open_dbs(self) -> dict[str, Any]:
        return {name: self._env.open_db(name.encode(), create=True) for name in schema.ALL_DBS}

    def _read_meta(self) -> tuple[int | None, bool, str]:
        with self._env.begin(db=self._dbs[schema.DB_META]) as txn:
            version = txn.get(schema.META_SCHEMA_VERSION)
            clean = txn.get(schema.META_CLEAN)
            boot = txn.get(schema.META_BOOT_ID)
        return (
            None if version is None else int(version),
            clean is None or clean == b"1",  # a fresh environment is trivially clean
            "" if boot is None else boot.decode("ascii", "replace"),
        )

    def _check_and_mark_open(self) -> None:
        try:
            version, clean, boot = self._read_meta()
        except (lmdb.Error, ValueError) as exc:
            self._start_over(f"unreadable metadata: {exc}")
            version, clean, boot = None, True, ""
        if version is not None and version > schema.SCHEMA_VERSION:
            raise UserError(
                f"the cache index {self._path} was written by a newer wsfuse (schema version "
                f"{version}; this wsfuse reads up to {schema.SCHEMA_VERSION}); upgrade wsfuse, "
                f"or use a different --cache-dir"
            )
        if not clean and boot != self._boot_id:
            self._start_over("the machine restarted while it was open (unsynced changes lost)")
            version = None
        if version is None or version < schema.SCHEMA_VERSION:
            self._drop_derived(version)
        with self._env.begin(write=True, db=self._dbs[schema.DB_META]) as txn:
            txn.put(schema.META_SCHEMA_VERSION, str(schema.SCHEMA_VERSION).encode())
            txn.put(schema.META_CLEAN, b"0")
            txn.put(schema.META_BOOT_ID, self._boot_id.encode("ascii", "replace"))
        # Durable before anything unsynced follows, so an OS crash from now on is detected.
        self._env.sync(True)

    def _drop_derived(self, version: int | None) -> None:
        # Everything but "pending" is a cache of the bucket or of the block files: dropping it
        # costs re-fetches, never data. A future schema that changes "pending" records must
        # migrate them here instead.
        dropped = 0
        with self._env.begin(write=True) as txn:
            for name in schema.DERIVED_DBS:
                handle = self._dbs[name]
                dropped += txn.stat(handle)["entries"]
                txn.drop(handle, delete=False)
        if dropped:
            log.info(
                "cache index %s has schema version %s, current is %d: dropped %d cached records",
                self._path,
                version,
                schema.SCHEMA_VERSION,
                dropped,
            )

    def _start_over(self, reason: str) -> None:
        """Move the environment aside and open an empty one, keeping readable pending records."""
        pending: list[tuple[bytes, bytes]] = []
        if self._env is not None:
            try:
                pending = self.items(schema.DB_PENDING)
            except (lmdb.Error, ValueError):
                log.exception("cannot read the pending-upload records of %s", self._path)
            self._env.close()
            self._env = None
        aside = self._path.with_name(self._path.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        self._path.rename(aside)
        self._path.mkdir()
        self._env = self._open_env()
        self._dbs = self._open_dbs()
        self.put_many(schema.DB_PENDING, pending)
        log.warning(
            "cache index %s may be damaged (%s): moved it to %s and started an empty one; "
            "cached data will be fetched again (%d pending-upload records carried over)",
            self._path,
            reason,
            aside,
            len(pending),
        )

    # ------------------------------------------------------------------ generic API

    @property
    def path(self) -> Path:
        return self._path

    def _db(self, db: str) -> Any:
        try:
            return self._dbs[db]
        except KeyError:
            raise ValueError(
                f"unknown index database {db!r}; use one of {schema.ALL_DBS}"
            ) from None

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value of `key` in `db`, or None."""
        with self._env.begin(db=self._db(db)) as txn:
            value: bytes | None = txn.get(key)
            return value

    def put_many(self, db: str, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store every `(key, value)` of `items` in `db`, atomically (one transaction)."""
        self.write(puts=((db, k, v) for k, v in items))

    def delete_many(self, db: str, keys: Iterable[bytes]) -> int:
        """Delete `keys` from `db` atomically (missing keys are ignored); returns how many
        existed."""
        return self.write(deletes=((db, k) for k in keys))

    def write(
        self,
        puts: Iterable[tuple[str, bytes, bytes]] = (),
        deletes: Iterable[tuple[str, bytes]] = (),
    ) -> int:
        """One atomic transaction: `deletes` `(db, key)` first, then `puts` `(db, key, value)`.

        Returns how many of the deleted keys existed. Materialise the iterables before calling
        if producing them is slow: the write lock is held while they are consumed.
        """
        deleted = 0
        with self._env.begin(write=True) as txn:
            for db, key in deletes:
                deleted += bool(txn.delete(key, db=self._db(db)))
            for db, key, value in puts:
                txn.put(key, value, db=self._db(db))
        return deleted

    def items(
        self, db: str, prefix: bytes = b"", *, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """`(key, value)` pairs of `db` whose key starts with `prefix`, in key order.

        A list, not an iterator, so that no transaction outlives the call; use `limit` (and a
        prefix that starts after the last key seen) to page through a large DB.
        """
        out: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=self._db(db)) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor:
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                out.append((key, value))
        return out

    def count(self, db: str) -> int:
        """Number of records in `db`."""
        with self._env.begin() as txn:
            entries: int = txn.stat(self._db(db))["entries"]
            return entries

    # ------------------------------------------------------------------ blocks

    def touch_blocks(self, atimes: Iterable[tuple[bytes, float]]) -> None:
        """Set the access time of existing block records; ids no longer recorded are skipped
        (so a late batch never resurrects an evicted block)."""
        handle = self._dbs[schema.DB_BLOCKS]
        with self._env.begin(write=True, db=handle) as txn:
            for bid, atime in atimes:
                record = txn.get(bid)
                if record is not None:
                    txn.put(bid, schema.with_atime(record, atime))

    # ------------------------------------------------------------------ lifetime

    def sync(self) -> None:
        """Make every committed transaction durable (fsync)."""
        self._env.sync(True)

    def close(self) -> None:
        """Mark the index cleanly closed, sync and close. Idempotent. No other thread may be
        using the index any more."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._env.begin(write=True, db=self._dbs[schema.DB_META]) as txn:
                txn.put(schema.META_CLEAN, b"1")
        except BaseException:
            self._env.close()
            self._forget_path()
            raise
        try:
            self._env.sync(True)
        finally:
            self._env.close()
            self._forget_path()

    def __enter__(self) -> MetadataIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
