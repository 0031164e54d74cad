"""`wsfuse doctor`: every check printed, exit 0 only when all is well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_cli_errors import run_wsfuse


def test_doctor_all_well_with_write_test(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "hello").write_text("hi")
    result = run_wsfuse(
        "doctor", f"file://{bucket}", "--write-test", "--cache-dir", str(tmp_path / "c")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    # scripts/setup.sh builds pyfuse3 with wsfuse's edits (packaging/pyfuse3/build.py)
    assert "pyfuse3 is installed, with wsfuse's edits" in result.stdout
    assert "is writable (wrote, read back and deleted" in result.stdout
    assert "PROBLEM" not in result.stdout
    # the test object is gone again (".wsfuse" is the local bucket's work area)
    assert sorted(p.name for p in bucket.iterdir() if p.name != ".wsfuse") == ["hello"]


def test_doctor_reports_each_problem(tmp_path: Path, s3_server: Any) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    result = run_wsfuse(
        "doctor",
        "s3://no-such-doctor-bucket",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--cache-dir",
        str(blocked),
    )
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert any("cache directory" in p for p in problems)
    assert any("no-such-doctor-bucket" in p and "does not exist" in p for p in problems)
    assert "Traceback" not in result.stdout + result.stderr
