"""A minimal read-only pyfuse3 passthrough filesystem: the ceiling for a perfect local cache.

Serves a local directory with `os.pread` in the trio thread (offloading page-cache-hot preads
to worker threads cost ~10%, see reference/measurements.md), and sets the mount's
`read_ahead_kb` to 1024 after mounting, as wsfuse does, so buffered sequential reads arrive as
1 MiB requests. `bench/read_bench.py` runs it as a subprocess to measure what Python FUSE can
do on this machine whatever the cache behind it.

    .venv/bin/python bench/passthrough.py SOURCE_DIR MOUNTPOINT [--keep-cache] [--direct-io]

Runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`) or sent SIGTERM/SIGINT;
prints "ready" on stdout once the mount answers.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import trio

READ_AHEAD_KB = 1024


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: Path, *, keep_cache: bool, direct_io: bool) -> None:
        super().__init__()
        self.keep_cache = keep_cache
        self.direct_io = direct_io
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: os.fspath(source)}
        self.inodes: dict[str, int] = {os.fspath(source): pyfuse3.ROOT_INODE}
        self.fds: dict[int, int] = {}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._next_fh = 1

    def _ino(self, path: str) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self.inodes[path] = ino
            self.paths[ino] = path
        return ino

    def _attrs(self, path: str, ino: int) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(ino)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = 60
        a.st_mode = pyfuse3.ModeT(st.st_mode)
        a.st_nlink = st.st_nlink
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_rdev = 0
        a.st_size = st.st_size
        a.st_blksize = 1 << 20
        a.st_blocks = st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return a

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        return self._attrs(path, self._ino(path))

    async def getattr(self, inode: pyfuse3.InodeT, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self.paths[inode], inode)

    async def opendir(self, inode: pyfuse3.InodeT, ctx: Any) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: Any) -> None:
        base = self.paths[fh]
        names = sorted(os.listdir(base))
        for i, name in enumerate(names[start_id:], start_id):
            path = os.path.join(base, name)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attrs(path, self._ino(path)), i + 1
            ):
                break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        pass

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self.paths[inode]
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._next_fh
        self._next_fh += 1
        self.fds[fh] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return pyfuse3.FileInfo(
            fh=pyfuse3.FileHandleT(fh), keep_cache=self.keep_cache, direct_io=self.direct_io
        )

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return os.pread(self.fds[fh], size, off)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        fd = self.fds.pop(fh, None)
        if fd is not None:
            os.close(fd)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        s = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
            setattr(s, name, getattr(st, name))
        s.f_ffree = s.f_favail = st.f_ffree
        s.f_namemax = 255
        return s


async def _after_mount(mountpoint: Path) -> None:
    st = await trio.to_thread.run_sync(os.stat, mountpoint)  # through our own loop: a thread
    ra = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        ra.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        print(f"passthrough: cannot set {ra}: {exc}", file=sys.stderr)
    print("ready", flush=True)


async def _on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


async def _main(ops: Passthrough, mountpoint: Path) -> None:
    opts = {"fsname=passthrough", "subtype=benchpt", "ro", "default_permissions", "noatime"}
    pyfuse3.init(ops, os.fspath(mountpoint), opts)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_after_mount, mountpoint)
            nursery.start_soon(_on_signals)
            await pyfuse3.main(min_tasks=8, max_tasks=64)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--keep-cache", action="store_true", help="keep_cache on every open")
    parser.add_argument("--direct-io", action="store_true", help="direct_io on every open")
    args = parser.parse_args()
    ops = Passthrough(args.source.resolve(), keep_cache=args.keep_cache, direct_io=args.direct_io)
    trio.run(_main, ops, args.mountpoint)


if __name__ == "__main__":
    main()
