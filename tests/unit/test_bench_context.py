"""bench/compare/context: scratch directories the harness is done with are deleted at the end
of the run while the disk has room (deleting a cache's thousand block files slows the next
workload's file creations on a journal-less ext4), and at once when it has not."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.compare import context
from bench.compare.context import Ctx


def make_ctx(tmp_path: Path) -> Ctx:
    return Ctx(argparse.Namespace(), tmp_path, None, None, None, 0.0)  # type: ignore[arg-type]


def scratch(ctx: Ctx, name: str) -> Path:
    path = ctx.fresh(name)
    (path / "block").write_bytes(b"x" * 10)
    return path


def test_a_removed_directory_stays_until_the_trash_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "_free_bytes", lambda path: context.DEFER_REMOVAL_FREE)
    ctx = make_ctx(tmp_path)
    first, second = scratch(ctx, "cache"), scratch(ctx, "cache")
    ctx.remove(first)
    ctx.remove(second)
    assert first.exists() and second.exists()
    assert ctx.trash == [first, second]
    ctx.empty_trash()
    assert not first.exists() and not second.exists()
    assert ctx.trash == []


def test_a_removed_directory_goes_at_once_when_the_disk_is_short_of_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "_free_bytes", lambda path: context.DEFER_REMOVAL_FREE - 1)
    ctx = make_ctx(tmp_path)
    path = scratch(ctx, "cache")
    ctx.remove(path)
    assert not path.exists()
    assert ctx.trash == []


def test_free_bytes_reads_the_filesystem_and_is_zero_for_a_missing_path(tmp_path: Path) -> None:
    assert context._free_bytes(tmp_path) > 0
    assert context._free_bytes(tmp_path / "missing") == 0


def test_a_workload_may_not_run_far_past_the_budget(tmp_path: Path) -> None:
    """--timeout bounds one workload, and the run's deadline bounds it too (a minute of grace
    for the workload that started just before it; never below 30 s)."""
    import time

    ctx = make_ctx(tmp_path)
    ctx.args.timeout = 300.0
    ctx.deadline = time.monotonic() + 3600
    assert ctx.workload_timeout() == 300.0
    ctx.deadline = time.monotonic() + 60
    assert 110 < ctx.workload_timeout() <= 120
    ctx.deadline = time.monotonic() - 600
    assert ctx.workload_timeout() == 30.0
