"""Helpers of the benchmark that need no benchmark to check: fio's I/O log read into the distinct
blocks it touched, and mount points as /proc/mounts spells them (wsfuse.testing.mounts, which
the bench and the tests share)."""

from __future__ import annotations

from pathlib import Path

from bench.compare.ops import blocks_in_iolog
from wsfuse.testing import mounts

MIB = 1 << 20


def test_fio_iolog_counts_the_distinct_blocks_its_reads_touch(tmp_path: Path) -> None:
    log = tmp_path / "rand.iolog"
    log.write_text(
        "fio version 2 iolog\n"
        "/mnt/big.bin add\n"
        "/mnt/big.bin open\n"
        f"/mnt/big.bin read {5 * MIB} 4096\n"
        f"/mnt/big.bin read {5 * MIB + 8192} 4096\n"  # the same block again
        f"/mnt/big.bin read {MIB - 4096} 8192\n"  # straddles blocks 0 and 1
        f"/mnt/big.bin read {9 * MIB} {MIB}\n"
        "/mnt/big.bin close\n"
    )
    assert blocks_in_iolog(log, MIB) == 4  # 0, 1, 5, 9
    # fio 3.x (Debian 12's) writes version 3: a timestamp first
    v3 = tmp_path / "v3.iolog"
    v3.write_text(
        "fio version 3 iolog\n24 /mnt/big.bin add\n16009 /mnt/big.bin open\n"
        f"16021 /mnt/big.bin read {2 * MIB} 4096\n16226 /mnt/big.bin read {7 * MIB} 4096\n"
    )
    assert blocks_in_iolog(v3, MIB) == 2


def test_mount_points_undo_the_octal_escapes_of_proc_mounts(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    spaced = tmp_path / "with space"
    spaced.mkdir()
    escaped = str(spaced).replace(" ", "\\040")
    table.write_text(f"wsfuse {escaped} fuse.wsfuse rw 0 0\nproc /proc proc rw 0 0\n")
    assert str(spaced) in mounts.mount_points(table)
    # a mount point under a symlinked or relative directory is found by its real path (the
    # mount point itself is not resolved: that would wait for its daemon)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert mounts.is_mounted(link / "with space", table)
    assert not mounts.is_mounted(tmp_path, table)
