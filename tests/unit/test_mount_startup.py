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


def test_preflight_without_dev_fuse_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(mount.UserError) as err:
        mount.preflight(tmp_path, dev_fuse=tmp_path / "no-such-device")
    message = str(err.value)
    assert "does not exist" in message
    assert "modprobe fuse" in message and "--device /dev/fuse" in message


def test_preflight_refuses_a_mount_point_the_user_does_not_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = tmp_path / "theirs"
    mnt.mkdir()
    owner = mnt.stat().st_uid
    monkeypatch.setattr(mount.os, "geteuid", lambda: owner + 1)  # an ordinary other user
    with pytest.raises(mount.UserError) as err:
        mount.preflight(mnt, dev_fuse=Path(os.devnull))
    assert "no permission to mount" in str(err.value)
    assert f"belongs to uid {owner}" in str(err.value)
    monkeypatch.setattr(mount.os, "geteuid", lambda: owner)  # the owner may
    mount.preflight(mnt, dev_fuse=Path(os.devnull))
