"""The bench records how slow fresh memory was (a VM that reports free pages to its host pays
a host fault per fresh page) and whether the balloon device reports free pages."""

from __future__ import annotations

from pathlib import Path

from bench.compare import report
from bench.harness import memprobe


def virtio_device(root: Path, name: str, device: str, features: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "device").write_text(device + "\n")
    (root / name / "features").write_text(features + "\n")


def test_free_page_reporting_is_the_balloons_feature_bit_5(tmp_path: Path) -> None:
    bits = "0110" + "0{}" + "0" * 58
    virtio_device(tmp_path, "virtio1", "0x0002", "1" * 64)  # a disk: not asked
    virtio_device(tmp_path, "virtio0", "0x0005", bits.format(1))
    assert memprobe.free_page_reporting(tmp_path) is True
    (tmp_path / "virtio0" / "features").write_text(bits.format(0) + "\n")
    assert memprobe.free_page_reporting(tmp_path) is False


def test_no_balloon_or_no_sysfs_is_none(tmp_path: Path) -> None:
    virtio_device(tmp_path, "virtio1", "0x0002", "1" * 64)
    assert memprobe.free_page_reporting(tmp_path) is None
    assert memprobe.free_page_reporting(tmp_path / "missing") is None


def test_the_probe_times_a_fresh_page() -> None:
    assert 0 < memprobe.fresh_page_us(1 << 20) < 1e6


def test_the_report_header_says_how_slow_memory_was() -> None:
    meta = {"fresh_page_us": [10.84, 4.1], "free_page_reporting": True}
    note = report.memory_note(meta)
    assert "10.8 µs per 4 KiB page at the start, 4.1 at the end" in note
    assert "free page reporting: on" in note
    assert report.memory_note({}) == ""  # runs recorded before the probe existed
    assert "no balloon" in report.memory_note({**meta, "free_page_reporting": None})
