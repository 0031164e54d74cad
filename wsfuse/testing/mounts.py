"""The kernel's mount table, read the way tests and the benchmark need it: by path, without
touching a mount point (whose FUSE daemon may hang)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROC_MOUNTS = Path("/proc/mounts")


def mount_points(table: Path = PROC_MOUNTS) -> set[str]:
    """Mount points as /proc/mounts names them, with its octal escapes (a space is \\040)
    undone."""
    with open(table) as f:
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1]) for line in f}


def is_mounted(path: str | os.PathLike[str], table: Path = PROC_MOUNTS) -> bool:
    """Whether `path` is a mount point. A relative or symlinked name differs from the kernel's,
    so its parent is resolved -- not the mount point itself: that would `lstat` it, which waits
    for its FUSE daemon, and a hung daemon is what an unmount must not wait for."""
    absolute = os.path.abspath(path)
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    return real in mount_points(table)
