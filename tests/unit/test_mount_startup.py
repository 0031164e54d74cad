"""The daemon's start-up report when the mount ends before it was ready."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsfuse import mount

MOUNTPOINT = Path("/mnt/wsfuse-test-mountpoint")
_real_stat = os.stat


def _stat_failing_with(code: int) -> Callable[..., os.stat_result]:
    """os.stat, except that the mount point's fails with `code`."""

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(path) == MOUNTPOINT:
            raise OSError(code, "from the test", str(path))
        return _real_stat(path, *args, **kwargs)

    return stat


async def test_an_unmount_while_starting_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SIGINT or `wsfuse unmount` while the start-up stat of the root is in flight: the stat
    # fails with ECONNABORTED and the daemon must end cleanly (exit 0), not with a traceback.
    reported: list[str] = []
    monkeypatch.setattr(mount, "report_ready", reported.append)
    monkeypatch.setattr(mount.os, "stat", _stat_failing_with(errno.ECONNABORTED))
    with caplog.at_level(logging.INFO, logger="wsfuse.mount"):
        await mount._after_mount(MOUNTPOINT, "s3://b")
    assert reported == []
    assert "unmounted before it was ready" in caplog.text


async def test_a_mount_that_does_not_answer_at_start_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mount, "report_ready", lambda message: None)
    monkeypatch.setattr(mount.os, "stat", _stat_failing_with(errno.EIO))
    with pytest.raises(OSError, match="from the test"):
        await mount._after_mount(MOUNTPOINT, "s3://b")
