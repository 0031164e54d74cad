"""Write-path failures through a real mount: the server refusing uploads, the daemon killed
mid-write, a full cache disk. Nothing acknowledged or written may be lost."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mount, S3Bucket, _is_mounted


def status(m: Mount) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "wsfuse", "status", str(m.path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_refused_upload_fails_close_keeps_data_and_next_mount_uploads_it(
    bucket: S3Bucket, mounter: Any
) -> None:
    m = mounter()
    bucket.server.fail_next(1000, status=500, code="InternalError", kind="PUT")
    try:
        with pytest.raises(OSError) as err, open(m.path / "report.txt", "wb") as f:
            f.write(b"results worth keeping")
        assert err.value.errno == errno.EIO
    finally:
        bucket.server.clear_faults()
    client = bucket.server.client()
    assert client.list_objects_v2(Bucket=bucket.name).get("KeyCount", 0) == 0  # nothing partial
    pending = status(m)["pending_uploads"]
    assert [p["key"] for p in pending] == ["report.txt"]
    assert (m.path / "report.txt").read_bytes() == b"results worth keeping"  # still readable here
    assert client.list_objects_v2(Bucket=bucket.name).get("KeyCount", 0) == 0
    m.stop()
    assert client.list_objects_v2(Bucket=bucket.name).get("KeyCount", 0) == 0, m.log()
    m2 = mounter()  # same cache directory: recovery runs before mounting
    body = client.get_object(Bucket=bucket.name, Key="report.txt")["Body"].read()
    assert body == b"results worth keeping"
    assert status(m2)["pending_uploads"] == []
    assert "uploaded" in m2.log(), m.log() + "\n-----\n" + m2.log()


def test_kill9_mid_write_keeps_closed_files_and_lists_the_unclosed_one(
    bucket: S3Bucket, mounter: Any
) -> None:
    m = mounter()
    for i in range(3):
        (m.path / f"done{i}").write_bytes(f"closed {i}".encode() * 1000)
    f = open(m.path / "partial.bin", "wb")  # noqa: SIM115 - the daemon dies while it is open
    f.write(os.urandom(40 << 20))  # past the multipart threshold: parts are streaming
    f.flush()
    m.kill9()
    with contextlib.suppress(OSError):
        f.close()
    client = bucket.server.client()
    m2 = mounter()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket.name).get("Contents", [])}
    assert keys == {"done0", "done1", "done2"}
    for i in range(3):
        assert (m2.path / f"done{i}").read_bytes() == f"closed {i}".encode() * 1000
    assert client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    pending = status(m2)["pending_uploads"]
    assert [p["key"] for p in pending] == ["partial.bin"]
    assert Path(pending[0]["staging"]).stat().st_size > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_cache_disk_gives_enospc_not_corruption(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        m = mounter("--min-free", "0", cache_dir=small / "cache")
        with pytest.raises(OSError) as err, open(m.path / "huge", "wb") as f:
            for _ in range(64):
                f.write(b"z" * (1 << 20))
        assert err.value.errno == errno.ENOSPC, m.log()[-3000:]
        (m.path / "small.txt").write_bytes(b"still fine")  # frees nothing, but small fits
        m.stop()
        client = bucket.server.client()
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket.name).get("Contents", [])}
        assert "huge" not in keys  # never a truncated object
    finally:
        for mp in [p for p in tmp_path.glob("mnt*") if _is_mounted(p)]:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
        subprocess.run(["umount", "-l", str(small)], check=False)
