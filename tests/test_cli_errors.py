"""Bad input gets one clear line on stderr, a non-zero exit, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wsfuse.testing.mounts import mount_points


def run_wsfuse(
    *args: str, timeout: float = 120, keep_mounts: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -m wsfuse ARGS`. A mount point among ARGS that it left mounted (a regression
    that let a refused mount succeed, or a timeout that killed the daemon) is lazily
    unmounted, unless the test mounts on purpose (`keep_mounts`) and unmounts itself."""
    before = mount_points()
    try:
        return subprocess.run(
            [sys.executable, "-m", "wsfuse", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        if not keep_mounts:
            ours = {os.path.realpath(a) for a in args if os.path.isabs(a)}
            for path in mount_points() - before:
                if path in ours:
                    subprocess.run(
                        ["fusermount3", "-u", "-z", path], capture_output=True, check=False
                    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("wsfuse: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("ftp://bucket/x", "unknown storage scheme 'ftp'"),
        ("just-a-name", "not a storage URI"),
        ("s3://Not_A_Bucket", "invalid bucket name"),
        ("s3://bucket/a/../b", "'..' segment"),
        ("file://relative", "must be absolute"),
    ],
)
def test_malformed_uris(uri: str, fragment: str, tmp_path: Path) -> None:
    assert_one_line_error(run_wsfuse("doctor", uri), fragment)
    assert_one_line_error(run_wsfuse("mount", uri, str(tmp_path), "-f"), fragment)


@pytest.mark.parametrize("mode", [["-f"], []], ids=["foreground", "daemon"])
def test_missing_bucket(s3_server: Any, tmp_path: Path, mode: list[str]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_wsfuse(
        "mount",
        "s3://no-such-bucket-here",
        str(mnt),
        *mode,
        "--endpoint-url",
        s3_server.endpoint_url,
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert_one_line_error(result, "no-such-bucket-here", "does not exist")


def test_missing_local_bucket(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_wsfuse("mount", f"file://{tmp_path}/absent", str(mnt), "-f")
    assert_one_line_error(result, "does not exist", "mkdir -p")


def test_bad_credentials(tmp_path: Path, auth_server: str) -> None:
    result = run_wsfuse(
        "mount",
        "s3://authbucket",
        str(tmp_path),
        "-f",
        "--endpoint-url",
        auth_server,
        "--cache-dir",
        str(tmp_path / "c"),
    )
    line = assert_one_line_error(result, "AWS_ACCESS_KEY_ID")
    assert "wsfuse-test-secret" not in result.stderr + result.stdout
    assert "credentials" in line.lower() or "denied" in line.lower()


def test_unreachable_endpoint(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_wsfuse(
        "mount",
        "s3://bucket",
        str(tmp_path),
        "-f",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert_one_line_error(result, "127.0.0.1:9")
    assert time.monotonic() - start < 75  # the retry layer's total deadline, plus start-up


def test_unknown_mount_option(tmp_path: Path) -> None:
    assert_one_line_error(
        run_wsfuse("mount", str(tmp_path), "-o", "bogus=1"), "unknown mount option"
    )
    assert_one_line_error(run_wsfuse("mount", str(tmp_path), "-o", "cache_size"), "needs a value")


def test_bad_size(tmp_path: Path) -> None:
    result = run_wsfuse("mount", str(tmp_path), "--cache-size", "lots")
    assert result.returncode == 2
    assert "not a size" in result.stderr
    assert "Traceback" not in result.stderr
