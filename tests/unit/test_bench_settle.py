"""bench/harness/settle: a run waits until ext4's recently-deleted-inode window (360 s) after
the previous run's clean-up has passed, at most `--settle` seconds, and never fails over it."""

from __future__ import annotations

from pathlib import Path

from bench.harness import settle


def waits(marker: Path, now: float, max_wait: float = 360.0) -> tuple[float, list[float]]:
    slept: list[float] = []
    announced: list[float] = []
    got = settle.settle(
        max_wait, announced.append, marker=marker, now=lambda: now, sleep=slept.append
    )
    assert slept == announced == ([got] if got else [])
    return got, slept


def test_a_run_right_after_a_clean_up_waits_out_the_rest_of_the_window(tmp_path: Path) -> None:
    marker = tmp_path / "cleanup"
    settle.mark_cleanup(marker, now=lambda: 1000.0)
    assert waits(marker, now=1100.0) == (260.0, [260.0])
    assert waits(marker, now=1100.0, max_wait=30.0) == (30.0, [30.0])  # --settle caps it


def test_no_wait_once_the_window_has_passed_or_without_a_record(tmp_path: Path) -> None:
    marker = tmp_path / "cleanup"
    assert waits(marker, now=5.0) == (0.0, [])  # no earlier run
    settle.mark_cleanup(marker, now=lambda: 1000.0)
    assert waits(marker, now=1000.0 + settle.WINDOW) == (0.0, [])
    assert waits(marker, now=1200.0, max_wait=0.0) == (0.0, [])  # --settle 0
    marker.write_text("not a time\n")
    assert waits(marker, now=1000.0) == (0.0, [])


def test_recording_the_clean_up_never_fails_a_run(tmp_path: Path) -> None:
    settle.mark_cleanup(tmp_path / "missing-dir" / "cleanup")  # OSError swallowed
    settle.mark_cleanup(tmp_path / "cleanup", now=lambda: 42.5)
    assert (tmp_path / "cleanup").read_text() == "42.500\n"
