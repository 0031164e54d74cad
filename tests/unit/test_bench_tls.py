"""bench/run --tls: every client of the run is told to trust the run's certificate (boto3 and
wsfuse through AWS_CA_BUNDLE, rclone through --ca-cert; s3fs, which has no CA-file option,
skips the check), and nothing changes over plain HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import filesystems
from bench.harness import env


def _mount_argv(spec: filesystems.FsSpec, tmp_path: Path) -> list[str]:
    mount = spec.make(tmp_path / "mnt", tmp_path / "cache", tmp_path / "log")
    return [str(a) for a in mount.argv]


def test_peers_trust_the_runs_certificate_over_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(env.ENV, "AWS_CA_BUNDLE", "/run/cert.pem")
    specs = filesystems.specs("https://127.0.0.1:9", tmp_path)
    s3fs = _mount_argv(specs["s3fs"], tmp_path)
    assert "no_check_certificate" in s3fs[-1] and "url=https://127.0.0.1:9" in s3fs[-1]
    rclone = _mount_argv(specs["rclone"], tmp_path)
    assert rclone[rclone.index("--ca-cert") + 1] == "/run/cert.pem"
    assert "--ca-cert" in specs["rclone"].describe()
    assert "https://127.0.0.1:9" in _mount_argv(specs["wsfuse"], tmp_path)


def test_nothing_changes_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(env.ENV, "AWS_CA_BUNDLE", "/run/cert.pem")
    specs = filesystems.specs("http://127.0.0.1:9", tmp_path)
    assert "no_check_certificate" not in _mount_argv(specs["s3fs"], tmp_path)[-1]
    assert "--ca-cert" not in _mount_argv(specs["rclone"], tmp_path)
