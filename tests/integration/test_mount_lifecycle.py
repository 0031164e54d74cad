"""Mounting and unmounting: checks before mounting, daemon mode, signals, dead mounts, -o."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mount, S3Bucket, _is_mounted
from tests.test_cli_errors import assert_one_line_error, run_wsfuse


def test_mount_point_problems_are_one_line_errors(tmp_path: Path, bucket: S3Bucket) -> None:
    endpoint = ["--endpoint-url", bucket.server.endpoint_url, "--cache-dir", str(tmp_path / "c")]
    missing = tmp_path / "missing"
    assert_one_line_error(
        run_wsfuse("mount", bucket.uri, str(missing), *endpoint), "does not exist"
    )
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_line_error(
        run_wsfuse("mount", bucket.uri, str(a_file), *endpoint), "not a directory"
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    assert_one_line_error(run_wsfuse("mount", bucket.uri, str(full), *endpoint), "not empty")


def test_already_mounted_and_second_daemon_on_cache(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    m = mounter()
    result = run_wsfuse(
        "mount", bucket.uri, str(m.path), "--endpoint-url", bucket.server.endpoint_url
    )
    assert_one_line_error(result, "already mounted")
    other = tmp_path / "other"
    other.mkdir()
    result = run_wsfuse(
        "mount",
        bucket.uri,
        str(other),
        "-f",
        "--endpoint-url",
        bucket.server.endpoint_url,
        "--cache-dir",
        str(m.cache_dir),
    )
    assert_one_line_error(result, "in use by another wsfuse process")
    assert not _is_mounted(other)


def test_daemon_mode_returns_when_ready_and_unmount_stops_it(
    bucket: S3Bucket, tmp_path: Path
) -> None:
    bucket.put("hello.txt", b"hello\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "daemon.log"
    try:
        result = run_wsfuse(
            "mount",
            bucket.uri,
            str(mnt),
            "--endpoint-url",
            bucket.server.endpoint_url,
            "--cache-dir",
            str(tmp_path / "c"),
            "--log-file",
            str(log),
            keep_mounts=True,
        )
        assert result.returncode == 0, result.stderr
        assert _is_mounted(mnt)  # mounted when the command returned, not later
        assert (mnt / "hello.txt").read_bytes() == b"hello\n"
        result = run_wsfuse("unmount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not _is_mounted(mnt)
        assert "unmounted" in log.read_text()
    finally:
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(bucket: S3Bucket, mounter: Any, signum: int) -> None:
    m: Mount = mounter()
    assert m.proc is not None
    m.proc.send_signal(signum)
    assert m.proc.wait(timeout=20) == 0
    assert not _is_mounted(m.path)
    assert "unmounted" in m.log()


def test_dead_mount_is_detected_and_replaced(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put("f", b"data")
    m: Mount = mounter()
    assert m.proc is not None
    m.proc.kill()  # leaves "Transport endpoint is not connected"
    m.proc.wait()
    m.proc = None
    with pytest.raises(OSError) as err:
        os.statvfs(m.path)
    assert err.value.errno == errno.ENOTCONN
    m2 = Mount(m.path, m.cache_dir, m.log_file.with_suffix(".2.log"), m.args).start()
    try:
        assert (m2.path / "f").read_bytes() == b"data"
        assert "dead FUSE mount" in m2.log()
    finally:
        m2.stop()


def test_o_options_mirror_long_flags(bucket: S3Bucket, tmp_path: Path) -> None:
    bucket.put("x", b"1234")
    mnt = tmp_path / "mnt"
    m = Mount(
        mnt,
        tmp_path / "c",
        tmp_path / "d.log",
        [
            bucket.uri,
            "-o",
            f"endpoint_url={bucket.server.endpoint_url},read-only,uid=1234,"
            "gid=4321,file_mode=600,dir-mode=0700,metadata_ttl=5,cache_size=1G,"
            "cache-written-max=1M,nofail,_netdev",
        ],
    ).start()
    try:
        st = (mnt / "x").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, 0o400)
        assert mnt.stat().st_mode & 0o777 == 0o700
        with pytest.raises(OSError) as err:
            open(mnt / "x", "wb").close()
        assert err.value.errno in (errno.EROFS, errno.EACCES)
    finally:
        m.stop()


def test_statfs_is_sensible(bucket: S3Bucket, mounter: Any) -> None:
    m = mounter()
    st = os.statvfs(m.path)
    assert st.f_bavail > 0 and st.f_blocks > 0 and st.f_namemax == 255
    out = subprocess.run(["df", "-h", str(m.path)], capture_output=True, text=True, check=True)
    assert bucket.uri in out.stdout


def test_python_m_wsfuse_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wsfuse", "mount", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in [
        "--cache-dir",
        "--cache-size",
        "--cache-written-max",
        "--metadata-ttl",
        "--allow-other",
        "--uid",
        "--gid",
        "--file-mode",
        "--dir-mode",
        "--read-only",
        "--log-level",
        "--log-file",
        "--foreground",
        "--endpoint-url",
        "--region",
        "--profile",
        "--addressing-style",
        "--provider",
    ]:
        assert flag in out


def test_fstab_mount_helper(bucket: S3Bucket, tmp_path: Path) -> None:
    bucket.put("from-fstab", b"ok")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    helper = Path(__file__).parents[2] / "packaging" / "mount.fuse.wsfuse"
    env = {**os.environ, "WSFUSE": f"{Path(sys.executable).parent}/wsfuse"}
    opts = (
        f"rw,_netdev,nofail,endpoint_url={bucket.server.endpoint_url},"
        f"cache_dir={tmp_path / 'c'},log_file={tmp_path / 'log'}"
    )
    try:
        result = subprocess.run(
            [str(helper), bucket.uri, str(mnt), "-n", "-o", opts],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert (mnt / "from-fstab").read_bytes() == b"ok"
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "wsfuse"), "unmount", str(mnt)], check=False
        )
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def _wait_staging_empty(cache_dir: Path, timeout: float = 10.0) -> None:
    """RELEASE (which ends a written file's staging) follows close() asynchronously."""
    deadline = time.monotonic() + timeout
    while any((cache_dir / "staging").glob("*")):
        assert time.monotonic() < deadline, "the staging file outlived the upload"
        time.sleep(0.02)


def test_cache_written_max_reaches_the_daemon(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    """By default a small written file is read back from the cache (no GET); with
    `-o cache_written_max=0` it is not kept, so reading it back GETs it."""
    for name, extra in (("kept", ()), ("not-kept", ("-o", "cache_written_max=0"))):
        cache = tmp_path / f"cache-{name}"
        m = mounter(*extra, cache_dir=cache)
        (m.path / name).write_bytes(b"written here\n" * 100)
        _wait_staging_empty(cache)
        assert (m.path / name).read_bytes() == b"written here\n" * 100
        m.stop()
    assert bucket.gets("kept") == 0
    assert bucket.gets("not-kept") >= 1
