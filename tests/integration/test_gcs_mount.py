"""The same filesystem over the GCS emulator: write, metadata from listings, rename, remount."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from tests.integration.conftest import Mount


def test_gcs_mount_roundtrip(gcs_server: Any, tmp_path: Path) -> None:
    gcs_server.create_bucket("wsfuse-gcs-mount")
    args = ["gs://wsfuse-gcs-mount/pre", "--endpoint-url", gcs_server.endpoint_url]
    mnt = tmp_path / "mnt"
    m = Mount(mnt, tmp_path / "c1", tmp_path / "d1.log", args).start()
    big = os.urandom(20 << 20)
    try:
        (mnt / "hello.txt").write_text("hi gcs\n")
        os.makedirs(mnt / "d" / "e")
        (mnt / "d" / "e" / "big.bin").write_bytes(big)
        os.chmod(mnt / "hello.txt", 0o600)
        os.symlink("hello.txt", mnt / "ln")
        assert (mnt / "d" / "e" / "big.bin").read_bytes() == big
        os.rename(mnt / "d", mnt / "d2")
        assert os.listdir(mnt / "d2" / "e") == ["big.bin"]
    finally:
        m.stop()
    names = gcs_server.object_names("wsfuse-gcs-mount")
    assert "pre/d2/e/big.bin" in names and "pre/hello.txt" in names
    assert not any(n.startswith("pre/d/") for n in names)
    m2 = Mount(mnt, tmp_path / "c2", tmp_path / "d2.log", args).start()  # empty cache
    try:
        assert sorted(os.listdir(mnt)) == ["d2", "hello.txt", "ln"]
        assert stat.S_IMODE(os.lstat(mnt / "hello.txt").st_mode) == 0o600
        assert os.readlink(mnt / "ln") == "hello.txt"
        assert (mnt / "d2" / "e" / "big.bin").read_bytes() == big
    finally:
        m2.stop()
