"""Waiting out ext4's recently-deleted-inode window before a benchmark run starts.

On this machine's ext4 without a journal, the inode allocator will not reuse an inode deleted
in the last 60 s (360 s while its inode-table block is dirty), and it finds that out by looking
up every such inode of the group, one by one, for each file it creates (docs/performance.md,
session 9). A run's clean-up deletes thousands of cache block files, so a run started within
that window of the previous one measures the previous run's clean-up: two seq-only runs back to
back made cold reads of 828-956 and then 609-719 MB/s, with every process using ~45% more CPU
per GiB (session 11). Each run therefore records when its clean-up ended, and the next one
waits until the window has passed. Deletions made by anything else are not tracked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

#: Where a run records the end of its clean-up (beside the default scratch directories).
MARKER = Path("/var/tmp/wsfuse-bench-cleanup")
#: ext4's window for an inode whose table block is dirty: 60 s + 300 s.
WINDOW = 360.0


def mark_cleanup(marker: Path = MARKER, now: Callable[[], float] = time.time) -> None:
    """Record that this run's scratch files are deleted, now."""
    with contextlib.suppress(OSError):  # a benchmark convenience: never fail a run over it
        marker.write_text(f"{now():.3f}\n")


def settle(
    max_wait: float,
    announce: Callable[[float], None] = lambda wait: None,
    marker: Path = MARKER,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Sleep until `WINDOW` s after the last recorded clean-up, but at most `max_wait` s
    (`announce(seconds)` first); returns how long it slept (0 without a record, or when the
    window has passed)."""
    try:
        ended = float(marker.read_text().strip())
    except (OSError, ValueError):
        return 0.0
    wait = min(max_wait, ended + WINDOW - now())
    if wait <= 0:
        return 0.0
    announce(wait)
    sleep(wait)
    return wait
