"""What the kernel asked of the daemon.

Whether the page cache serves a re-opened file (`keep_cache`), whether the attribute and entry
timeouts keep `stat` away from the daemon, and how large the kernel's read requests are can
only be seen from here: `wsfuse status` shows these counters, and the mount tests check them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class KernelRequests:
    lookups: int = 0
    getattrs: int = 0
    forgets: int = 0  # inodes in the kernel's FORGET requests (evicted dentries and inodes)
    reads: int = 0
    read_bytes: int = 0  # bytes answered
    largest_read: int = 0  # the largest size one read request asked for

    def note_read(self, size: int, answered: int) -> None:
        self.reads += 1
        self.read_bytes += answered
        self.largest_read = max(self.largest_read, size)

    def as_dict(self) -> dict[str, int]:
        return {f"kernel_{name}": value for name, value in asdict(self).items()}
