"""How costly fresh memory is on this machine, recorded with every run.

On a VM whose balloon device reports free pages to its host, the host drops the backing of
memory the guest freed, and the next touch of such a page costs a fault in the host. Every
fresh kernel page a workload needs (page cache for the reader, cache files, socket buffers)
pays it, so the same run reads at half speed on such a VM on a bad day (docs/performance.md,
session 18). The report says which kind of day it was.
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path

#: Bytes of fresh anonymous memory touched per probe (16,384 pages).
PROBE_BYTES = 64 << 20
#: virtio device id of the memory balloon, and its VIRTIO_BALLOON_F_REPORTING feature bit.
BALLOON_DEVICE = "0x0005"
REPORTING_BIT = 5


def fresh_page_us(size: int = PROBE_BYTES) -> float:
    """Microseconds to touch one fresh 4 KiB page of anonymous memory (the mean over `size`
    bytes: the guest's zeroing, plus the host's fault where the page had been reported)."""
    page = mmap.PAGESIZE
    with mmap.mmap(-1, size) as memory:
        started = time.perf_counter()
        for offset in range(0, size, page):
            memory[offset] = 1
        elapsed = time.perf_counter() - started
    return elapsed / (size // page) * 1e6


def free_page_reporting(devices: Path = Path("/sys/bus/virtio/devices")) -> bool | None:
    """Whether a virtio balloon here reports free pages to the host; None without one."""
    try:
        entries = sorted(devices.iterdir())
    except OSError:
        return None
    for device in entries:
        try:
            if (device / "device").read_text().strip() != BALLOON_DEVICE:
                continue
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        return len(features) > REPORTING_BIT and features[REPORTING_BIT] == "1"
    return None
