"""bench/compare/filesystems: the options each filesystem is recorded with are the command line
it runs, word for word, without the run's secrets or paths."""

from __future__ import annotations

from pathlib import Path

from bench.compare.filesystems import RCLONE_OPTIONS, S3FS_OPTIONS, specs
from bench.harness.env import ACCESS_KEY, SECRET_KEY

URL = "http://127.0.0.1:65000"


def test_recorded_commands_are_the_argv_with_placeholders(tmp_path: Path) -> None:
    work = tmp_path / f"{ACCESS_KEY}-run-1"  # as bench/run names it
    work.mkdir()
    described = {name: spec.describe() for name, spec in specs(URL, work).items()}
    for text in described.values():
        assert SECRET_KEY not in text and URL not in text and str(tmp_path) not in text
    assert "passwd_file=WORK/s3fs.passwd" in described["s3fs"]
    assert "--config WORK/rclone.conf" in described["rclone"]
    assert described["wsfuse"].startswith(
        "python -m wsfuse mount s3://bench MNT --endpoint-url URL -f --cache-dir DIR"
    )
    assert ",".join(S3FS_OPTIONS) in described["s3fs"]
    assert " ".join(RCLONE_OPTIONS) in described["rclone"]
    assert "--s3-secret-access-key SECRET" in described["rclone"]
    assert "the harness sets read_ahead_kb=1024" in described["s3fs"]
