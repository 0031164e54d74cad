"""The namespace operations that change the bucket (create, unlink, mkdir, rmdir, rename,
symlink, setattr), and the overlay that keeps cached listings true to them.

A file's bytes are staged and uploaded by `WriteBack` (`wsfuse.fs.writeback`); these operations
call it where a name change moves, truncates or removes data that is being written.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING

from wsfuse.backends.base import ObjectInfo
from wsfuse.errors import NotFound
from wsfuse.fs import posixmeta
from wsfuse.fs.attrstore import DIR_VERSION
from wsfuse.fs.namespace import Entry, Listing, child_path, dir_prefix, valid_name
from wsfuse.fs.posixmeta import PosixAttrs

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsfuse.aio import AsyncBackend
    from wsfuse.cache import MetadataIndex
    from wsfuse.config import MountConfig
    from wsfuse.fs.attrstore import AttrStore
    from wsfuse.fs.core import DirHandle, FileHandle, Inode
    from wsfuse.fs.writeback import WriteBack

log = logging.getLogger(__name__)

# A directory rename copies every object under it; beyond this many it is refused up front
# (before anything moves) instead of running for hours, non-atomically.
MAX_DIR_RENAME_OBJECTS = 10_000


def _fs_error(code: int, message: str = "") -> Exception:
    from wsfuse.fs.core import FsError  # noqa: PLC0415 - core imports this module

    return FsError(code, message)


class Mutations:
    """Mixed into `Filesystem`; every method runs on the trio thread."""

    if TYPE_CHECKING:  # what the mixin uses of Filesystem
        config: MountConfig
        backend: AsyncBackend
        index: MetadataIndex | None
        clock: Callable[[], float]
        inodes: dict[int, Inode]
        staged: set[int]
        by_path: dict[tuple[str, bool], int]
        listings: dict[str, Listing]
        negative: dict[str, float]
        attr_store: AttrStore
        writeback: WriteBack
        _handles: dict[int, FileHandle | DirHandle]

        def inode(self, ino: int) -> Inode: ...
        async def lookup(self, parent_ino: int, name: str) -> Inode: ...
        def _new_file_handle(self, node: Inode, *, writable: bool) -> int: ...
        def _remember(
            self, path: str, is_dir: bool, entry: Entry | None, validated_at: float
        ) -> Inode: ...

    # ------------------------------------------------------------------ listings

    def _listing_put(self, node: Inode, entry: Entry) -> None:
        parent = node.path.rpartition("/")[0]
        listing = self.listings.get(parent)
        if listing is not None:
            self.listings[parent] = listing.with_entry(entry)
        self._drop_persisted_listing(parent)
        self.negative.pop(node.path, None)

    def _listing_drop(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        listing = self.listings.get(parent)
        if listing is not None and name in listing.by_name:
            self.listings[parent] = listing.without_entry(name)
        self._drop_persisted_listing(parent)
        self.negative[path] = self.clock()

    def _drop_persisted_listing(self, path: str) -> None:
        from wsfuse.fs.core import DIRS_DB, _dir_key  # noqa: PLC0415

        if self.index is not None:
            self.index.delete_many(DIRS_DB, [_dir_key(path)])

    def local_entries(self, path: str) -> list[Entry]:
        """Files created here and not uploaded yet: a fresh remote listing must still show them."""
        out = []
        for ino in self.staged:
            node = self.inodes[ino]
            if node.staging is not None and not node.unlinked and not node.is_dir:
                parent, _, name = node.path.rpartition("/")
                if parent == path:
                    out.append(Entry(name, False, node.size, node.etag, node.mtime))
        return out

    # ------------------------------------------------------------------ namespace changes

    def _writable(self) -> None:
        if self.config.read_only:
            raise _fs_error(errno.EROFS)

    async def _child(self, parent_ino: int, name: str) -> Inode | None:
        from wsfuse.fs.core import FsError  # noqa: PLC0415

        try:
            node = await self.lookup(parent_ino, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        node.lookups -= 1  # an internal lookup, not the kernel's
        return node

    def _check_name(self, name: str) -> None:
        if len(name.encode()) > 255:
            raise _fs_error(errno.ENAMETOOLONG)
        if not valid_name(name):
            raise _fs_error(errno.EINVAL)

    async def create(
        self, parent_ino: int, name: str, mode: int, uid: int, gid: int
    ) -> tuple[int, Inode]:
        self._writable()
        self._check_name(name)
        parent = self.inode(parent_ino)
        if not parent.is_dir:
            raise _fs_error(errno.ENOTDIR)
        existing = await self._child(parent_ino, name)
        if existing is not None and existing.is_dir:
            raise _fs_error(errno.EISDIR)
        path = child_path(parent.path, name)
        node = existing or self._remember(path, False, None, self.clock())
        node.attrs = PosixAttrs(stat.S_IFREG | (mode & 0o7777), uid, gid, None)
        node.mtime = self.clock()
        await self.writeback.start_writing(node, truncate=True)
        self._listing_put(node, Entry(name, False, 0, node.etag, node.mtime))
        node.lookups += 1
        return self._new_file_handle(node, writable=True), node

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._writable()
        node = await self._child(parent_ino, name)
        if node is None:
            raise _fs_error(errno.ENOENT)
        if node.is_dir:
            raise _fs_error(errno.EISDIR)
        if node.open_handles and node.staging is None:
            # Open handles must keep reading (and writing) after the name is gone.
            await self.writeback.start_writing(node, truncate=False)
        await self.writeback.drop_stream(node)
        if node.etag or node.staging is None:
            await self.backend.run_sync(lambda: self.backend.backend.delete(node.path))
        self._detach(node)
        await self._keep_parent(node.path)

    def _unmap(self, node: Inode) -> bool:
        """Take `node`'s path out of the lookup map if it still names `node` (a removed inode
        keeps its last path, which a live one may have taken since); whether it did."""
        key = (node.path, node.is_dir)
        if self.by_path.get(key) != node.ino:
            return False
        del self.by_path[key]
        return True

    def _abandon(self, node: Inode) -> None:
        """`WriteBack.on_abandoned`: a file created here, never uploaded, lost its data to a
        failed write: it was never in the bucket, so it leaves the namespace."""
        if self._unmap(node):
            self._listing_drop(node.path)

    def _detach(self, node: Inode) -> None:
        """Take `node` out of the namespace; its data lives on in staging while open."""
        if node.stream is not None:
            node.stream.broken = True  # its upload is aborted when the stream is next used
        if self._unmap(node):
            self._listing_drop(node.path)
            self.attr_store.drop(node.path)
        if node.staging is not None:
            node.unlinked = True
            self.writeback.forget_pending(node)
            if node.open_handles == 0:
                node.staging.close(remove=True)
                node.staging = None
                self.staged.discard(node.ino)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Inode:
        self._writable()
        self._check_name(name)
        parent = self.inode(parent_ino)
        if await self._child(parent_ino, name) is not None:
            raise _fs_error(errno.EEXIST)
        path = child_path(parent.path, name)
        attrs = PosixAttrs(stat.S_IFDIR | (mode & 0o7777), uid, gid, self.clock())
        await self.backend.run_sync(
            lambda: self.backend.backend.put(
                dir_prefix(path), b"", metadata=posixmeta.encode(attrs)
            )
        )
        self.attr_store.put(path, DIR_VERSION, attrs)
        node = self._remember(path, True, None, self.clock())
        node.attrs = attrs
        self._listing_put(node, Entry(name, True, mtime=self.clock()))
        self.listings[path] = Listing((), {}, 0, self.clock(), marker=True)
        node.lookups += 1
        return node

    async def _is_empty_dir(self, path: str) -> bool:
        if self.local_entries(path):
            return False
        page = await self.backend.list(dir_prefix(path))
        others = [o for o in page.objects if o.key != dir_prefix(path)]
        return not others and not page.prefixes

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._writable()
        node = await self._child(parent_ino, name)
        if node is None:
            raise _fs_error(errno.ENOENT)
        if not node.is_dir:
            raise _fs_error(errno.ENOTDIR)
        if not await self._is_empty_dir(node.path):
            raise _fs_error(errno.ENOTEMPTY)
        await self.backend.run_sync(lambda: self.backend.backend.delete(dir_prefix(node.path)))
        self.listings.pop(node.path, None)
        self._drop_persisted_listing(node.path)
        self._detach(node)
        await self._keep_parent(node.path)

    async def _keep_parent(self, path: str) -> None:
        """After `path` left its directory: an implicit directory whose last key that was would
        vanish from the bucket, but POSIX (and `make clean`) expect it to stay. Give it a marker."""
        parent = path.rpartition("/")[0]
        if not parent:
            return
        listing = self.listings.get(parent)
        if listing is not None and listing.entries:
            return
        page = await self.backend.list(dir_prefix(parent))
        if page.objects or page.prefixes:
            return
        node_ino = self.by_path.get((parent, True))
        attrs = self.inodes[node_ino].attrs if node_ino is not None else PosixAttrs()
        if attrs.mode is None:
            attrs = PosixAttrs(
                stat.S_IFDIR | self.config.dir_mode, attrs.uid, attrs.gid, attrs.mtime
            )
        meta = posixmeta.encode(attrs)
        await self.backend.run_sync(
            lambda: self.backend.backend.put(dir_prefix(parent), b"", metadata=meta)
        )
        self.attr_store.put(parent, DIR_VERSION, attrs)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Inode:
        self._writable()
        self._check_name(name)
        parent = self.inode(parent_ino)
        if await self._child(parent_ino, name) is not None:
            raise _fs_error(errno.EEXIST)
        path = child_path(parent.path, name)
        attrs = PosixAttrs(stat.S_IFLNK | 0o777, uid, gid, self.clock())
        body = os.fsencode(target)
        info: ObjectInfo = await self.backend.run_sync(
            lambda: self.backend.backend.put(path, body, metadata=posixmeta.encode(attrs))
        )
        self.attr_store.put(path, info.etag, attrs)
        node = self._remember(path, False, None, self.clock())
        node.size, node.etag, node.attrs, node.symlink_target = len(body), info.etag, attrs, target
        self._listing_put(node, Entry(name, False, len(body), info.etag, self.clock()))
        node.lookups += 1
        return node

    async def readlink(self, ino: int) -> str:
        node = self.inode(ino)
        if not node.attrs.is_symlink:
            raise _fs_error(errno.EINVAL)
        if node.symlink_target is None:
            data = await self.backend.get_range(node.path, 0, node.size, if_match=node.etag)
            node.symlink_target = os.fsdecode(data)
        return node.symlink_target

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: float | None = None,
        fh: int | None = None,
    ) -> Inode:
        self._writable()
        node = self.inode(ino)
        old = node.attrs
        new = PosixAttrs(
            (old.mode or (stat.S_IFDIR if node.is_dir else stat.S_IFREG)) & ~0o7777
            | (mode & 0o7777)
            if mode is not None
            else old.mode,
            uid if uid is not None else old.uid,
            gid if gid is not None else old.gid,
            mtime if mtime is not None else old.mtime,
        )
        if size is not None:
            if node.is_dir:
                raise _fs_error(errno.EISDIR)
            if node.staging is None:
                await self.writeback.start_writing(node, truncate=False)
            assert node.staging is not None
            await self.writeback.drop_stream(node)
            node.staging.truncate(size)
            node.size = size
            if mtime is None:
                new = PosixAttrs(new.mode, new.uid, new.gid, None)
                node.mtime = self.clock()
        node.attrs = new
        if new.mtime is not None:
            node.mtime = new.mtime
        if node.staging is not None:
            node.staging.touch()
            if fh is None and node.open_handles == 0:  # truncate(path): no close will follow
                await self.writeback.upload(node)
                await self.writeback.finish_staging(node)
            return node
        if new != old:
            await self._rewrite_metadata(node)
        return node

    async def _rewrite_metadata(self, node: Inode) -> None:
        """chmod/chown/utimens of an unchanged object: copy it onto itself with new metadata.
        Its bytes are unchanged, so its cache blocks stay valid (kept under `cache_etag`)."""
        key = dir_prefix(node.path) if node.is_dir else node.path
        attrs = node.attrs
        if node.is_dir:
            default = stat.S_IFDIR | self.config.dir_mode
            full = PosixAttrs(attrs.mode or default, attrs.uid, attrs.gid, attrs.mtime)
            await self.backend.run_sync(
                lambda: self.backend.backend.put(key, b"", metadata=posixmeta.encode(full))
            )
            self.attr_store.put(node.path, DIR_VERSION, full)
            return
        try:
            info = await self.backend.run_sync(
                lambda: self.backend.backend.copy(key, key, metadata=posixmeta.encode(attrs))
            )
        except NotFound:
            raise _fs_error(errno.ENOENT) from None
        node.cache_etag = node.cache_etag or node.etag
        node.etag = info.etag
        node.opened_etag = None
        self.attr_store.put(node.path, info.etag, attrs)

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        self._writable()
        self._check_name(new_name)
        if flags & 2:  # RENAME_EXCHANGE: two objects cannot swap atomically
            raise _fs_error(errno.EINVAL)
        src = await self._child(old_parent, old_name)
        if src is None:
            raise _fs_error(errno.ENOENT)
        dst = await self._child(new_parent, new_name)
        if dst is src:
            return
        src_old_path = src.path
        if dst is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise _fs_error(errno.EEXIST)
            if dst.is_dir and not src.is_dir:
                raise _fs_error(errno.EISDIR)
            if src.is_dir and not dst.is_dir:
                raise _fs_error(errno.ENOTDIR)
            if dst.is_dir and not await self._is_empty_dir(dst.path):
                raise _fs_error(errno.ENOTEMPTY)
        new_path = child_path(self.inode(new_parent).path, new_name)
        if src.is_dir and new_path.startswith(dir_prefix(src.path)):
            raise _fs_error(errno.EINVAL)  # into itself
        if dst is not None:
            # The replaced entry goes first: its marker must not delete the one we move in.
            if dst.is_dir:
                await self.backend.run_sync(
                    lambda: self.backend.backend.delete(dir_prefix(dst.path))
                )
                self.listings.pop(dst.path, None)
                self._drop_persisted_listing(dst.path)
            self.by_path.pop((dst.path, dst.is_dir), None)
            self.attr_store.drop(dst.path)
            dst.unlinked = True  # open handles keep its data; it is no longer in the namespace
            await self.writeback.drop_stream(dst)
            if dst.staging is not None:
                self.writeback.forget_pending(dst)
        if src.is_dir:
            await self._rename_dir(src, new_path)
        else:
            await self._rename_file(src, new_path)
        self._move_inode(src, new_path)
        await self._keep_parent(src_old_path)

    async def _rename_file(self, src: Inode, new_path: str) -> None:
        if src.staging is not None and (src.staging.dirty or not src.etag):
            old_path = src.path
            self.writeback.forget_pending(src)
            src.path = new_path
            try:
                await self.writeback.upload(src)
            finally:
                src.path = old_path
            if src.etag:
                await self.backend.run_sync(lambda: self.backend.backend.delete(old_path))
            return
        info = await self.backend.run_sync(lambda: self.backend.backend.copy(src.path, new_path))
        await self.backend.run_sync(lambda: self.backend.backend.delete(src.path))
        src.cache_etag = None
        src.etag = info.etag

    async def _rename_dir(self, src: Inode, new_path: str) -> None:
        old_prefix, new_prefix = dir_prefix(src.path), dir_prefix(new_path)
        # Files written under it and not uploaded yet go to the bucket first, so that the
        # listing below moves them with the rest.
        for node in list(self.inodes.values()):
            if node.staging is not None and not node.unlinked and node.path.startswith(old_prefix):
                await self.writeback.upload(node)
        keys: list[str] = []
        token = None
        while True:
            page = await self.backend.list(old_prefix, delimiter=None, token=token)
            keys += [o.key for o in page.objects]
            if len(keys) > MAX_DIR_RENAME_OBJECTS:
                log.error(
                    "rename of %s refused: more than %d objects under it (renaming a directory "
                    "copies every object; use a tool that copies in the background)",
                    src.path,
                    MAX_DIR_RENAME_OBJECTS,
                )
                raise _fs_error(errno.EXDEV)
            if page.next_token is None:
                break
            token = page.next_token
        if not any(k == old_prefix for k in keys):
            keys.insert(0, old_prefix)  # an implicit directory becomes an explicit one
            await self.backend.run_sync(lambda: self.backend.backend.put(old_prefix, b""))
        log.info("renaming %s → %s: %d objects (not atomic)", src.path, new_path, len(keys))
        self.attr_store.drop_tree(src.path)  # known inodes are re-recorded as they move
        for done, key in enumerate(keys, 1):
            await self._move_object(key, new_prefix + key[len(old_prefix) :])
            if done % 100 == 0:
                log.info("renaming %s: %d/%d objects moved", src.path, done, len(keys))
        stale = [
            p
            for p in self.listings
            if p in (src.path, new_path) or p.startswith((old_prefix, new_prefix))
        ]
        for path in stale:
            del self.listings[path]
            self._drop_persisted_listing(path)

    async def _move_object(self, src: str, dst: str) -> None:
        raw = self.backend.backend
        await self.backend.run_sync(lambda: raw.copy(src, dst))
        await self.backend.run_sync(lambda: raw.delete(src))

    def _move_inode(self, node: Inode, new_path: str) -> None:
        old_path = node.path
        self._listing_drop(old_path)
        old_prefix = dir_prefix(old_path)
        # Only the inodes the namespace maps to move. A removed inode keeps its last path (the
        # kernel may still hold it), and one at the same path as a live one must not take the
        # live one's place (nor its remembered attributes) under the new name.
        moving = [
            other
            for other in self.inodes.values()
            if not other.unlinked
            and (other.path == old_path or (node.is_dir and other.path.startswith(old_prefix)))
            and self.by_path.get((other.path, other.is_dir)) == other.ino
        ]
        for other in moving:
            self.by_path.pop((other.path, other.is_dir), None)
            self.attr_store.drop(other.path)
        for other in moving:
            other.path = new_path + other.path[len(old_path) :]
            self.by_path[(other.path, other.is_dir)] = other.ino
            version = DIR_VERSION if other.is_dir else other.etag
            self.attr_store.put(other.path, version, other.attrs)
            if other.staging is not None:
                self.writeback.record_pending(other, "open")
        from wsfuse.fs.core import FileHandle  # noqa: PLC0415

        moved = {other.ino for other in moving}
        for handle in self._handles.values():
            if isinstance(handle, FileHandle) and handle.ino in moved:
                handle.reader.obj = self.inodes[handle.ino].pinned()
        name = new_path.rpartition("/")[2]
        self._listing_put(node, Entry(name, node.is_dir, node.size, node.etag, node.mtime))
