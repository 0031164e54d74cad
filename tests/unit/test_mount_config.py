"""wsfuse mount's flags and their `-o` spellings reach MountConfig (cli.mount_config), and the
flags a user leaves out keep the documented defaults (config.DEFAULTS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsfuse.cachedir import cache_dir_for, default_cache_root
from wsfuse.cli import mount_config, parse_command_line
from wsfuse.config import DEFAULTS, GiB, MiB, MountConfig
from wsfuse.storage_uri import parse_uri

URI = parse_uri("s3://bucket/prefix")


def config_of(*argv: str) -> MountConfig:
    return mount_config(parse_command_line(["mount", "s3://bucket/prefix", *argv]), URI)


def test_defaults_when_no_flag_is_given() -> None:
    config = config_of("/mnt/ws", "-f")
    assert config.cache_dir == cache_dir_for(URI, default_cache_root())
    for field in (
        "cache_size",
        "min_free",
        "cache_written_max",
        "metadata_ttl",
        "uid",
        "gid",
        "file_mode",
        "dir_mode",
        "read_only",
        "allow_other",
    ):
        assert getattr(config, field) == getattr(DEFAULTS, field), field


def test_long_flags_reach_the_config(tmp_path: Path) -> None:
    config = config_of(
        "/mnt/ws",
        "--cache-dir", str(tmp_path),
        "--cache-size", "2G",
        "--min-free", "512M",
        "--cache-written-max", "0",
        "--metadata-ttl", "0",
        "--uid", "1234",
        "--gid", "4321",
        "--file-mode", "600",
        "--dir-mode", "700",
        "--read-only",
        "--allow-other",
    )  # fmt: skip
    assert config.cache_dir == tmp_path
    assert (config.cache_size, config.min_free, config.cache_written_max) == (2 * GiB, 512 * MiB, 0)
    assert (config.metadata_ttl, config.uid, config.gid) == (0, 1234, 4321)
    assert (config.file_mode, config.dir_mode) == (0o600, 0o700)
    assert config.read_only and config.allow_other


@pytest.mark.parametrize("spelling", ["cache_written_max", "cache-written-max"])
def test_o_options_in_either_spelling_reach_the_config(spelling: str, tmp_path: Path) -> None:
    config = config_of(
        "-o", f"{spelling}=1M,metadata_ttl=5,cache-size=3G,ro,cache_dir={tmp_path}", "/mnt/ws"
    )
    assert config.cache_written_max == MiB
    assert config.metadata_ttl == 5
    assert config.cache_size == 3 * GiB
    assert config.cache_dir == tmp_path
    assert config.read_only


def test_the_cache_root_is_the_nodes_nvme_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvme = tmp_path / "local_storage"
    nvme.mkdir()
    assert default_cache_root(nvme) == nvme / "wsfuse"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root(tmp_path / "absent") == tmp_path / "xdg" / "wsfuse"


def test_each_bucket_uri_gets_its_own_cache_subdirectory(tmp_path: Path) -> None:
    uris = ["s3://bucket", "s3://bucket/prefix", "gs://bucket", "s3://other"]
    dirs = [cache_dir_for(parse_uri(u), tmp_path) for u in uris]
    assert len(set(dirs)) == len(uris)
    assert all(d.parent == tmp_path for d in dirs)
    assert cache_dir_for(parse_uri("s3://bucket/prefix"), tmp_path) == dirs[1]  # stable
    assert "bucket_prefix" in dirs[1].name  # readable
