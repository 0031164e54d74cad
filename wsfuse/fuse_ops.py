"""The pyfuse3 adapter: translates types and errors, holds no state and no policy (it counts
the kernel's requests in the core's `KernelRequests`).

Every handler goes through `_boundary`: `FUSEError` passes, the error taxonomy maps to errno
in ONE table, anything unexpected is logged with its traceback and becomes EIO (pyfuse3 ends
its main loop on any non-FUSEError exception, which would take the mount down).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from wsfuse.config import MountConfig
from wsfuse.errors import (
    BackendError,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from wsfuse.fs.core import Filesystem, FsError, Inode

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONTROL_XATTR = b"user.wsfuse.control"

# The one errno table. Order matters: the first matching class wins.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, errno.ENOENT),
    (PermissionDenied, errno.EACCES),
    (InvalidKey, errno.EINVAL),
    (PreconditionFailed, errno.EIO),  # the pinned version is gone: never mix versions
    (Unavailable, errno.EIO),
    (BackendError, errno.EIO),
)


def errno_for(exc: BaseException) -> int | None:
    for cls, code in ERRNO_TABLE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno  # local disk: ENOSPC from a full cache disk reaches the writer as is
    return None


def _brief(args: tuple[Any, ...]) -> str:
    """Handler arguments for the debug log: never a whole data buffer."""
    return (
        "("
        + ", ".join(
            f"<{len(a)} bytes>" if isinstance(a, bytes) and len(a) > 64 else repr(a) for a in args
        )
        + ")"
    )


def _boundary(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s%s", fn.__name__, _brief(args[1:4]))
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except trio.Cancelled:
            raise
        except Exception as exc:
            code = errno_for(exc)
            if code is None:
                log.exception("%s: unexpected error, answering EIO", fn.__name__)
                code = errno.EIO
            elif code == errno.EIO:
                log.error("%s: %s", fn.__name__, exc)  # noqa: TRY400 - expected, no traceback
            raise pyfuse3.FUSEError(code) from None

    return wrapper


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, fs: Filesystem, config: MountConfig, control_path: str = "") -> None:
        super().__init__()
        self.fs = fs
        self.config = config
        self.control_path = control_path

    def attributes(self, node: Inode) -> pyfuse3.EntryAttributes:
        cfg = self.config
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.ino)
        a.generation = 0
        a.entry_timeout = cfg.metadata_ttl
        a.attr_timeout = cfg.metadata_ttl
        attrs = node.attrs
        if node.is_dir:
            perm = attrs.mode & 0o7777 if attrs.mode is not None else cfg.dir_mode
            a.st_mode = pyfuse3.ModeT(stat.S_IFDIR | perm)
            a.st_nlink = 2
            a.st_size = 0
        else:
            kind = stat.S_IFLNK if attrs.is_symlink else stat.S_IFREG
            perm = attrs.mode & 0o7777 if attrs.mode is not None else cfg.file_mode
            if cfg.read_only:
                perm &= ~0o222
            a.st_mode = pyfuse3.ModeT(kind | perm)
            a.st_nlink = 1
            a.st_size = node.size
        a.st_uid = attrs.uid if attrs.uid is not None else cfg.uid
        a.st_gid = attrs.gid if attrs.gid is not None else cfg.gid
        a.st_rdev = 0
        a.st_blksize = cfg.block_size
        a.st_blocks = -(-a.st_size // 512)
        ns = int((attrs.mtime if attrs.mtime is not None else node.mtime) * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a

    @_boundary
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.fs.kernel.lookups += 1
        node = await self.fs.lookup(parent_inode, os.fsdecode(name))
        return self.attributes(node)

    @_boundary
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.fs.kernel.getattrs += 1
        return self.attributes(await self.fs.getattr(inode))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        try:
            self.fs.kernel.forgets += len(inode_list)
            self.fs.forget([(int(i), n) for i, n in inode_list])
        except Exception:  # forget has no reply: never let it end the main loop
            log.exception("forget failed")

    @_boundary
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(self.fs.opendir(inode))

    @_boundary
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        for next_id, node, entry in await self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(
                token, os.fsencode(entry.name), self.attributes(node), next_id
            ):
                break
            node.lookups += 1  # the kernel now holds a reference (readdirplus)

    @_boundary
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.fs.releasedir(fh)

    @_boundary
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        write = flags & os.O_ACCMODE != os.O_RDONLY
        truncate = bool(flags & os.O_TRUNC) and write
        fh, keep_cache = await self.fs.open(inode, write=write, truncate=truncate)
        return pyfuse3.FileInfo(
            fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache, direct_io=_write_only(flags)
        )

    @_boundary
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = await self.fs.create(parent_inode, os.fsdecode(name), mode, ctx.uid, ctx.gid)
        info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=_write_only(flags))
        return info, self.attributes(node)

    @_boundary
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_boundary
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.flush(fh)

    @_boundary
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_boundary
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime=attr.st_mtime_ns / 1e9 if fields.update_mtime else None,
            fh=fh,
        )
        return self.attributes(node)

    @_boundary
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.unlink(parent_inode, os.fsdecode(name))

    @_boundary
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.rmdir(parent_inode, os.fsdecode(name))

    @_boundary
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.mkdir(parent_inode, os.fsdecode(name), mode, ctx.uid, ctx.gid)
        return self.attributes(node)

    @_boundary
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(
            parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new), flags
        )

    @_boundary
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.symlink(
            parent_inode, os.fsdecode(name), os.fsdecode(target), ctx.uid, ctx.gid
        )
        return self.attributes(node)

    @_boundary
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self.fs.readlink(inode))

    @_boundary
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        data = await self.fs.read(fh, off, size)
        self.fs.kernel.note_read(size, len(data))
        return data  # type: ignore[return-value]  # pyfuse3 takes any contiguous buffer

    @_boundary
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        await self.fs.release(fh)

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # An object store has no fixed size: report a large, constant capacity (1 PiB) so
        # tools that check free space (df, installers, checkpoint writers) proceed.
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = self.config.block_size
        s.f_blocks = (1 << 50) // self.config.block_size
        s.f_bfree = s.f_bavail = s.f_blocks
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = s.f_files
        s.f_namemax = 255
        return s

    @_boundary
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        # The control socket is announced on the root as an xattr: nothing extra appears in
        # the tree, and `wsfuse status MOUNTPOINT` finds it from the mount point alone.
        if inode == pyfuse3.ROOT_INODE and name == CONTROL_XATTR and self.control_path:
            return os.fsencode(self.control_path)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_boundary
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return []

    async def mknod(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)  # devices, FIFOs and sockets have no object form

    async def setxattr(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def link(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)


def _write_only(flags: int) -> bool:
    """Write-only handles bypass the kernel page cache (FOPEN_DIRECT_IO): without it every
    written byte is first copied into fresh page-cache pages that nobody reads back (the
    writer cannot read, and the daemon stages its own copy), which costs as much CPU as the
    upload on the test machine. Writes still arrive as they were made, up to 1 MiB each."""
    return flags & os.O_ACCMODE == os.O_WRONLY
