"""`Filesystem`: the namespace, handles and read path as plain async methods (no pyfuse3
types). Namespace changes are `Mutations` (mutations.py); written data is staged and uploaded by
`WriteBack` (writeback.py); the POSIX attributes of listed entries are learned by
`learn_listed_attributes` (listedattrs.py).

Owned by the trio thread: every attribute here is touched only from it (worker threads get
immutable arguments). Inode numbers are allocated once per (path, kind) and never reused
during a mount, so they are stable for the mount's life.

Metadata comes from LIST pages whenever possible: listing a directory records the size, etag
and mtime of every file in it, so neither `stat` nor `open` of those files costs a request
within the metadata TTL. Listings are persisted in the index, so a remount starts warm.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

from wsfuse.aio import AsyncBackend
from wsfuse.backends.base import Backend, ListPage, ObjectInfo
from wsfuse.cache import BlockCache, MetadataIndex
from wsfuse.config import MountConfig
from wsfuse.errors import NotFound, WsfuseError
from wsfuse.fs import posixmeta
from wsfuse.fs.attrstore import DIR_VERSION, AttrStore
from wsfuse.fs.dirahead import DirectoryReadAhead
from wsfuse.fs.fetcher import BlockFetcher, PinnedObject
from wsfuse.fs.kernelstats import KernelRequests
from wsfuse.fs.listedattrs import learn_listed_attributes
from wsfuse.fs.mutations import Mutations
from wsfuse.fs.namespace import Entry, Listing, child_path, dir_prefix, valid_name
from wsfuse.fs.posixmeta import PosixAttrs
from wsfuse.fs.reader import Reader
from wsfuse.fs.staging import Staging
from wsfuse.fs.streaming import PartSources, StreamingUpload
from wsfuse.fs.writeback import WriteBack

log = logging.getLogger(__name__)

ROOT_INO = 1
DIRS_DB = "dirs"


# First listing pages kept from lookups (a page holds up to 1,000 keys), and for how long:
# `ls`, `os.walk` and `find` list a directory right after looking it up.
FIRST_PAGES_KEPT = 16
FIRST_PAGE_AGE = 2.0


def _dir_key(path: str) -> bytes:
    """The index key of a directory's listing: LMDB keys are 1..511 bytes, S3 keys up to 1024."""
    raw = b"/" + path.encode("utf-8", "surrogateescape")
    return raw if len(raw) <= 500 else b"#" + hashlib.sha256(raw).digest()


class FsError(WsfuseError):
    """A POSIX-level outcome of a filesystem operation (ENOENT, ENOTDIR, EROFS, ...)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


@dataclass(slots=True)
class Inode:
    ino: int
    path: str  # key relative to the mount's prefix; "" for the root
    is_dir: bool
    size: int = 0
    etag: str = ""
    mtime: float = 0.0
    validated_at: float = 0.0  # wall clock of the LIST/HEAD these attributes came from
    lookups: int = 0
    opened_etag: str | None = None  # etag at the last open: unchanged → keep the page cache
    # POSIX attributes from object metadata (s3fs conventions); None = the mount's default.
    attrs: PosixAttrs = field(default_factory=PosixAttrs)
    # The etag whose cache blocks hold this content: differs from `etag` after a metadata-only
    # change (chmod, utimens) rewrote the object without changing its bytes.
    cache_etag: str | None = None
    symlink_target: str | None = None
    staging: Staging | None = None  # GUARDED_BY: trio thread; set while written locally
    stream: StreamingUpload | None = None  # parts of a sequential writer already uploading
    open_handles: int = 0
    unlinked: bool = False  # removed from the namespace while open: data lives in staging

    def pinned(self) -> PinnedObject:
        return PinnedObject(self.path, self.etag, self.size, self.cache_etag or self.etag)


@dataclass(slots=True)
class FileHandle:
    ino: int
    reader: Reader
    writable: bool


@dataclass(slots=True)
class DirHandle:
    ino: int
    entries: tuple[Entry, ...] | None = None  # snapshot taken at the first readdir


class Filesystem(Mutations):
    def __init__(
        self,
        backend: Backend,
        config: MountConfig,
        cache: BlockCache,
        nursery: trio.Nursery,
        *,
        index: MetadataIndex | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.backend = AsyncBackend(backend, concurrency=config.backend_concurrency)
        self.cache = cache
        self.index = index
        self.clock = clock
        self.fetcher = BlockFetcher(self.backend, cache, config, nursery)
        self.dir_ahead = DirectoryReadAhead(
            self.fetcher, whole_object_max=config.whole_object_max, pin=self._pin_entry
        )
        self.attr_store = AttrStore(index)
        self.part_sources = PartSources()
        now = clock()
        self.inodes: dict[int, Inode] = {ROOT_INO: Inode(ROOT_INO, "", True, mtime=now)}
        # INVARIANT: staged == {ino for ino, node in inodes.items() if node.staging is not None}
        # (a listing merges these; scanning every inode per listing would be O(inodes)).
        self.staged: set[int] = set()
        self.writeback = WriteBack(
            self.backend,
            config,
            cache,
            self.fetcher,
            self.attr_store,
            self.part_sources,
            index=index,
            clock=clock,
            staged=self.staged,
            on_uploaded=self._listing_put,
            on_abandoned=self._abandon,
        )
        self.by_path: dict[tuple[str, bool], int] = {("", True): ROOT_INO}
        self._next_ino = itertools.count(ROOT_INO + 1)
        self.listings: dict[str, Listing] = {}
        self._first_pages: dict[str, tuple[float, ListPage]] = {}  # see _keep_first_page
        self._listing_in_progress: dict[str, trio.Event] = {}
        self.negative: dict[str, float] = {}  # path → wall time it was found missing
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = itertools.count(1)
        self.hidden_keys = 0
        self.mount_time = now
        self.kernel = KernelRequests()  # counted by the adapter (fuse_ops), shown by status

    # ------------------------------------------------------------------ inodes

    def inode(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT, f"stale inode {ino}") from None

    def _remember(self, path: str, is_dir: bool, entry: Entry | None, validated_at: float) -> Inode:
        ino = self.by_path.get((path, is_dir))
        if ino is None:
            ino = next(self._next_ino)
            self.by_path[(path, is_dir)] = ino
            self.inodes[ino] = Inode(ino, path, is_dir, mtime=self.mount_time)
        node = self.inodes[ino]
        if node.staging is not None:  # written here: ours is the truth until uploaded
            node.validated_at = validated_at
            return node
        if entry is not None and not is_dir and validated_at < node.validated_at:
            # A LIST answered after something newer taught us about this file (our own upload
            # or chmod, a HEAD): its entry is the older truth, keep what we know.
            return node
        if entry is not None and not is_dir:
            if entry.etag not in (node.etag, node.cache_etag):
                # another version: what we knew from its metadata no longer holds
                node.attrs, node.cache_etag, node.symlink_target = PosixAttrs(), None, None
            node.size, node.etag, node.mtime = entry.size, entry.etag, entry.mtime
        known = self.attr_store.get(path, DIR_VERSION if is_dir else node.etag)
        if known is not None:
            node.attrs = known
        if node.attrs.mtime is not None and not is_dir:
            node.mtime = node.attrs.mtime
        node.validated_at = validated_at
        return node

    def _fresh(self, at: float) -> bool:
        return self.clock() - at < self.config.metadata_ttl

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            node = self.inodes.get(ino)
            if node is not None:
                node.lookups = max(0, node.lookups - n)

    # ------------------------------------------------------------------ lookup / getattr

    async def lookup(self, parent_ino: int, name: str) -> Inode:
        parent = self.inode(parent_ino)
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if not valid_name(name):
            raise FsError(errno.ENAMETOOLONG if len(name.encode()) > 255 else errno.ENOENT)
        path = child_path(parent.path, name)
        local = self.by_path.get((path, False))
        if local is not None and self.inodes[local].staging is not None:
            node = self.inodes[local]  # written here, maybe not uploaded yet: ours is the truth
            node.lookups += 1
            return node
        listing = self._fresh_listing(parent.path)
        if listing is not None:
            entry = listing.by_name.get(name)
            if entry is None:
                raise FsError(errno.ENOENT)
            node = self._remember(path, entry.is_dir, entry, listing.fetched_at)
        else:
            missing_since = self.negative.get(path)
            if missing_since is not None and self._fresh(missing_since):
                raise FsError(errno.ENOENT)
            own = self._fresh_listing(path)
            if (
                own is not None
                and own.entries
                and (own.marker is False or self.attr_store.get(path, DIR_VERSION) is not None)
            ):
                # Listed within the TTL (by this mount, or by the last one: the index keeps
                # listings) and not empty: a directory, and the directory wins a clash with a
                # file of its name. A remount walks down to what it listed without a request
                # (unless the attributes in its marker are still to be read).
                node = self._remember(path, True, None, own.fetched_at)
            else:
                node = await self._lookup_remote(path)
        node.lookups += 1
        return node

    async def _lookup_remote(self, path: str) -> Inode:
        """HEAD the file and LIST the would-be directory at once: one round trip either way."""
        head: list[ObjectInfo | None] = [None]
        page: list[ListPage | None] = [None]

        async def do_head() -> None:
            with contextlib.suppress(NotFound):
                head[0] = await self.backend.head(path)

        async def do_list() -> None:
            page[0] = await self.backend.list(dir_prefix(path))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(do_head)
            nursery.start_soon(do_list)
        now = self.clock()
        listed = page[0]
        if listed is not None and (listed.objects or listed.prefixes):
            self.negative.pop(path, None)
            self._keep_first_page(path, listed, now)
            marker = next((o for o in listed.objects if o.key == dir_prefix(path)), None)
            if marker is not None and self.attr_store.get(path, DIR_VERSION) is None:
                # an explicit directory: its mode, owner and mtime are in the marker
                if marker.metadata is None:
                    with contextlib.suppress(NotFound):
                        marker = await self.backend.head(dir_prefix(path))
                self.attr_store.put(path, DIR_VERSION, posixmeta.decode(marker.metadata))
            return self._remember(path, True, None, now)
        info = head[0]
        if info is not None and not info.key.endswith("/"):
            self.negative.pop(path, None)
            node = self._remember(path, False, Entry.file(path, info), now)
            self._apply_metadata(node, info)
            return node
        self.negative[path] = now
        raise FsError(errno.ENOENT)

    def _keep_first_page(self, path: str, page: ListPage, at: float) -> None:
        """A lookup that found a directory listed its first page: `ls` after `stat` (or `cd`,
        or `os.walk` descending) starts from it instead of listing it again (the whole
        listing, for directories of up to 1,000 entries)."""
        self._first_pages[path] = (at, page)
        while len(self._first_pages) > FIRST_PAGES_KEPT:
            del self._first_pages[next(iter(self._first_pages))]

    def _drop_persisted_listing(self, path: str) -> None:
        # Every change to a directory's entries comes through here: a kept first page may
        # predate it (of this directory, or of one renamed or removed), so none is trusted.
        self._first_pages.clear()
        super()._drop_persisted_listing(path)

    async def getattr(self, ino: int) -> Inode:
        node = self.inode(ino)
        if (
            not node.is_dir
            and node.staging is None
            and not node.unlinked  # removed: its old path may name another file by now
            and not self._fresh(node.validated_at)
        ):
            await self._revalidate(node)
        return node

    async def _revalidate(self, node: Inode) -> None:
        try:
            info = await self.backend.head(node.path)
        except NotFound:
            raise FsError(errno.ENOENT, f"{node.path!r} was deleted") from None
        if info.etag != node.etag:
            node.cache_etag, node.symlink_target = None, None
        node.size, node.etag, node.mtime = info.size, info.etag, info.mtime
        self._apply_metadata(node, info)
        node.validated_at = self.clock()

    def _apply_metadata(self, node: Inode, info: ObjectInfo) -> None:
        """POSIX attributes from a HEAD's user metadata (s3fs conventions)."""
        if info.metadata is not None:
            node.attrs = posixmeta.decode(info.metadata)
            self.attr_store.put(node.path, info.etag, node.attrs)
            if node.attrs.mtime is not None:
                node.mtime = node.attrs.mtime

    # ------------------------------------------------------------------ directories

    def _fresh_listing(self, path: str) -> Listing | None:
        listing = self.listings.get(path)
        if listing is None and self.index is not None:
            raw = self.index.get(DIRS_DB, _dir_key(path))
            listing = Listing.decode(raw) if raw is not None else None
            if listing is not None:
                self.listings[path] = listing
        if listing is not None and self._fresh(listing.fetched_at):
            return listing
        return None

    async def listing(self, path: str) -> Listing:
        """The directory's listing: fresh from memory or the index, or listed now (once, however
        many callers ask at the same time)."""
        while True:
            listing = self._fresh_listing(path)
            if listing is not None:
                return listing
            running = self._listing_in_progress.get(path)
            if running is None:
                break
            await running.wait()
            if path in self.listings and self._fresh(self.listings[path].fetched_at):
                return self.listings[path]
        done = self._listing_in_progress[path] = trio.Event()
        try:
            listing = await self._list_remote(path)
        finally:
            del self._listing_in_progress[path]
            done.set()
        return listing

    async def _list_remote(self, path: str) -> Listing:
        fetched_at = self.clock()
        pages: list[ListPage] = []
        token: str | None = None
        prefix = dir_prefix(path)
        first = self._first_pages.pop(path, None)
        if first is not None and self._fresh(first[0]) and self.clock() - first[0] < FIRST_PAGE_AGE:
            fetched_at, page = first  # the listing is as old as its oldest page
            pages.append(page)
            token = page.next_token
        while not pages or token is not None:
            page = await self.backend.list(prefix, token=token)
            pages.append(page)
            token = page.next_token
        listing = Listing.build(path, pages, fetched_at, extra=self.local_entries(path))
        await learn_listed_attributes(
            self.backend,
            self.attr_store,
            path,
            pages,
            listing,
            heads_max=self.config.metadata_heads_max,
        )
        if listing.hidden:
            self.hidden_keys += listing.hidden
            log.info(
                "%s: %d key(s) hidden (not valid as paths, or a file shadowed by a directory)",
                prefix or "/",
                listing.hidden,
            )
        self.listings[path] = listing
        if self.index is not None and not listing.has_local:
            self.index.put_many(DIRS_DB, [(_dir_key(path), listing.encode())])
        for entry in listing.entries:
            ino = self.by_path.get((child_path(path, entry.name), entry.is_dir))
            if ino is not None:  # refresh what the kernel already knows
                self._remember(child_path(path, entry.name), entry.is_dir, entry, fetched_at)
            self.negative.pop(child_path(path, entry.name), None)
        return listing

    def opendir(self, ino: int) -> int:
        if not self.inode(ino).is_dir:
            raise FsError(errno.ENOTDIR)
        fh = next(self._next_fh)
        self._handles[fh] = DirHandle(ino)
        return fh

    async def readdir(self, fh: int, start: int) -> Iterator[tuple[int, Inode, Entry]]:
        """Entries from offset `start`, as (next offset, inode, entry). Offsets index a snapshot
        taken at the first call, so they stay valid while the directory changes.

        Lazy: the kernel takes a few dozen entries per call, so a directory of N entries is
        read in ~N/30 calls; making inodes for everything after `start` on each of them would
        make listing it quadratic."""
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise FsError(errno.EBADF)
        parent = self.inode(handle.ino)
        if handle.entries is None or start == 0:
            listing = await self.listing(parent.path)
            handle.entries = listing.entries
        return self._dir_entries(parent.path, handle.entries, start)

    def _dir_entries(
        self, path: str, entries: tuple[Entry, ...], start: int
    ) -> Iterator[tuple[int, Inode, Entry]]:
        now = self.clock()
        for i in range(start, len(entries)):
            entry = entries[i]
            yield (
                i + 1,
                self._remember(child_path(path, entry.name), entry.is_dir, entry, now),
                entry,
            )

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ------------------------------------------------------------------ files

    async def open(self, ino: int, *, write: bool, truncate: bool = False) -> tuple[int, bool]:
        """Open a file; returns (fh, keep_cache). keep_cache when the object is unchanged since
        the last open, so the kernel serves repeat reads from its page cache."""
        node = self.inode(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if node.staging is None and not self._fresh(node.validated_at):
            await self._revalidate(node)
        if write:
            await self.writeback.start_writing(node, truncate=truncate)
        if not write and node.staging is None:
            parent, _, name = node.path.rpartition("/")
            self.dir_ahead.opened(parent, name, self._fresh_listing(parent))
        keep_cache = node.staging is None and node.opened_etag == node.etag
        node.opened_etag = node.etag if node.staging is None else None
        return self._new_file_handle(node, writable=write), keep_cache

    def _pin_entry(self, path: str, entry: Entry) -> PinnedObject:
        """The version a listing entry names, with the cache identity its inode knows of."""
        ino = self.by_path.get((path, False))
        node = self.inodes.get(ino) if ino is not None else None
        if node is not None and node.etag == entry.etag:
            return node.pinned()
        return PinnedObject(path, entry.etag, entry.size)

    def _new_file_handle(self, node: Inode, *, writable: bool) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = FileHandle(
            node.ino, Reader(self.fetcher, node.pinned(), self.config), writable
        )
        node.open_handles += 1
        return fh

    def file_handle(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise FsError(errno.EBADF)
        return handle

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self.file_handle(fh)
        node = self.inode(handle.ino)
        if node.staging is not None:  # written here: every reader on this node sees it
            return node.staging.pread(size, offset)
        return await handle.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.file_handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF)
        return self.writeback.write(self.inode(handle.ino), offset, data)

    async def flush(self, fh: int) -> None:
        """close(): upload if this inode changed since its last upload (dup'ed and forked
        descriptors flush many times; only the first one with changes uploads)."""
        handle = self.file_handle(fh)
        if not handle.writable:
            return  # closing a reader publishes nobody's writes (nor retries a failed upload)
        node = self.inode(handle.ino)
        if node.staging is not None and node.staging.dirty:
            await self.writeback.upload(node)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if not isinstance(handle, FileHandle):
            return
        handle.reader.close()
        node = self.inodes.get(handle.ino)
        if node is None:
            return
        node.open_handles -= 1
        staging = node.staging
        if (
            handle.writable
            and staging is not None
            and staging.dirty
            and staging.version != staging.failed_version
        ):
            # mmap writes can arrive after close(); RELEASE's error is lost, so a failure here
            # only leaves the data pending.
            try:
                await self.writeback.upload(node)
            except Exception as exc:
                log.error("upload of %r at release failed, kept as pending: %s", node.path, exc)  # noqa: TRY400
        if node.open_handles == 0:
            await self.writeback.finish_staging(node)

    # ------------------------------------------------------------------ status

    def statistics(self) -> dict[str, object]:
        fetch = self.fetcher.stats
        cache = self.cache.statistics()
        return {
            "backend": self.backend.backend.name,
            "cache_bytes": cache.cached_bytes,
            "cache_capacity": cache.capacity,
            "cache_blocks": cache.blocks,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_corrupt": cache.corrupt,
            "cache_evictions": cache.evictions,
            "cache_reused_files": cache.reused_files,
            "hit_ratio": cache.hits / max(1, cache.hits + cache.misses),
            "backend_requests": self.backend.requests,
            "backend_bytes": self.backend.bytes_received,
            "demand_fetches": fetch.demand_fetches,
            "prefetches": fetch.prefetches,
            "readahead_handoffs": fetch.handoffs,
            "readahead_disk_loads": fetch.disk_loads,
            "directory_prefetch_files": self.dir_ahead.files_requested,
            "inflight_joins": fetch.inflight_joins,
            "prefetch_cancelled": fetch.prefetch_cancelled,
            "prefetch_detached": fetch.prefetch_detached,
            "fast_link_streams": fetch.fast_link_streams,
            "prefetch_skipped_budget": fetch.prefetch_skipped_budget,
            "inflight_blocks": len(self.fetcher.inflight),
            "open_handles": sum(isinstance(h, FileHandle) for h in self._handles.values()),
            "hidden_keys": self.hidden_keys,
            "pending_uploads": self.writeback.pending_uploads(),
            "streamed_parts_from_memory": self.part_sources.from_memory,
            "streamed_parts_read_back": self.part_sources.read_back,
            **self.kernel.as_dict(),
        }
