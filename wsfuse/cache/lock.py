"""`CacheDirLock`: one wsfuse process per cache directory.

Two daemons sharing a cache directory would each clean the other's temporary files at
startup, evict blocks the other still counts, and race on the index. An exclusive `flock` on
`DIR/lock` prevents that. The kernel releases it when its holder dies (even by kill -9), so a
crash never leaves a stale lock behind; the pid written into the file is only there to make
the error message useful.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from wsfuse.cache.schema import LOCK_FILE
from wsfuse.errors import UserError


class CacheDirLock:
    """An exclusive lock on a cache directory, held from `acquire` until `release`.

    The daemon takes it before opening the index and the block cache, and releases it last.
    Not reentrant: a second `acquire` of the same directory fails even in the same process
    (`flock` locks belong to an open file description, not to a process).
    """

    def __init__(self, directory: Path, fd: int) -> None:
        self._directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> CacheDirLock:
        """Create `directory` if needed and lock it, without waiting.

        Raises `UserError` naming the holder's pid if another process (or another lock object)
        holds the directory, or if the lock file cannot be created.
        """
        path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(
                f"cannot create the cache lock file {path}: {exc.strerror}; "
                f"use a writable --cache-dir"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(
                    f"cannot lock the cache directory {directory}: {exc.strerror}"
                ) from exc
            raise UserError(
                f"cache directory {directory} is in use by another wsfuse process "
                f"(pid {holder}); use a different --cache-dir or unmount the other mount"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            # The pid is a courtesy for the error message; the lock itself is held.
            pass
        return cls(directory, fd)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (idempotent). The file stays: deleting it would race with a new holder."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> CacheDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A lock dropped without release() would keep the directory locked for the process's
        # lifetime; releasing on collection is the lesser surprise.
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
