"""Tune glibc malloc for a daemon that moves 1 MiB buffers all day.

Every block the daemon receives is a fresh 1 MiB `bytes`. With glibc's defaults each worker
thread allocates from its own arena and freed memory is handed back to the kernel soon
(dynamic mmap threshold, 128 KiB..32 MiB trim threshold), so the next block's memory is
faulted in and zeroed page by page again: about 0.5 CPU-seconds per GiB, a fifth of the
daemon's cost of a cold read on the 2-core test machine. Keeping freed memory in one arena
for reuse makes a cold read ~20 % faster at a *lower* peak RSS (per-thread arenas each keep
their own high-water mark; one arena keeps one). Contention on the single arena is low: the
GIL already serialises nearly every allocation. Measured in docs/performance.md ("Fewer
fresh pages").

What stays resident is bounded by what is live at the peak — the prefetch budget and the
buffers in flight, which configuration bounds — not by file sizes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: Allocations above this get their own mmap (and are unmapped on free): larger than any
#: buffer the daemon reuses (blocks 1 MiB, fetches and parts 8-16 MiB).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the kernel only above this.
TRIM_THRESHOLD = 256 << 20


def tune_allocator() -> bool:
    """Apply the settings to this process (call before starting threads). False when the C
    library is not glibc (nothing changed, nothing to worry about: this is speed, not
    correctness)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library %r: allocator left as is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_ARENA_MAX, 1),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting: allocator partly tuned")
    return ok
