"""How each filesystem is mounted: wsfuse with default settings, and the peers tuned for
throughput as their documentation recommends (shared/reference/measurements.md), so that
wsfuse is compared with them at their best. The exact argv is recorded in every result.

All three run in the foreground as our children (we hold their PIDs and stop only those).
The harness sets the mount's `read_ahead_kb` to 1024 for the peers too (wsfuse and the
passthrough do it themselves), so every FUSE mount gets the same kernel read-ahead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness.env import ACCESS_KEY, BUCKET, ENV, PYTHON, ROOT, SECRET_KEY
from bench.harness.mount import Mount

S3FS_OPTIONS = [
    "use_path_request_style",
    "ensure_diskfree=2048",
    "parallel_count=16",
    "multipart_size=32",
    "multireq_max=32",
    "max_stat_cache_size=200000",
    "stat_cache_expire=3600",
    "enable_noobj_cache",
    "kernel_cache",
    "max_background=64",
    "congestion_threshold=48",
    "listobjectsv2",
    "big_writes",
    "max_write=131072",
    "entry_timeout=60",
    "attr_timeout=60",
    "dbglevel=warn",
]

RCLONE_OPTIONS = [
    "--vfs-cache-mode",
    "full",
    "--vfs-read-chunk-size",
    "32M",
    "--vfs-read-chunk-size-limit",
    "off",
    "--buffer-size",
    "32M",
    "--vfs-read-ahead",
    "256M",
    "--transfers",
    "16",
    "--s3-upload-concurrency",
    "8",
    "--s3-chunk-size",
    "32M",
    "--dir-cache-time",
    "1h",
    "--attr-timeout",
    "60s",
    "--use-server-modtime",
    "--vfs-fast-fingerprint",
    "--s3-provider",
    "Other",
    "--s3-force-path-style",
    # upload 1 s after close (default 5 s): its best "until in bucket" that still works; with
    # 0s, a rename right after close races the upload and rclone 1.60 loses the file
    # ("Failed to calculate src hash ... no such file", the object never appears)
    "--vfs-write-back",
    "1s",
    "--s3-no-check-bucket",
]


@dataclass
class FsSpec:
    """A filesystem under test: `make(mountpoint, cache_dir, log_file)` returns a Mount."""

    name: str
    binary: str | None
    make: Callable[[Path, Path, Path], Mount]
    describe: Callable[[], str]

    def available(self) -> bool:
        return self.binary is None or shutil.which(self.binary) is not None


def specs(url: str, work: Path) -> dict[str, FsSpec]:
    # Over HTTPS (bench/run --tls) the clients trust the run's own certificate: boto3 and
    # wsfuse through AWS_CA_BUNDLE, rclone through --ca-cert; s3fs has no CA-file option and
    # skips the check instead.
    ca = ENV.get("AWS_CA_BUNDLE") if url.startswith("https:") else None
    s3fs_tls = ["no_check_certificate", "ssl_verify_hostname=0"] if ca else []
    rclone_tls = ["--ca-cert", ca] if ca else []

    def wsfuse(mnt: Path, cache: Path, log: Path) -> Mount:
        argv = [PYTHON, "-m", "wsfuse", "mount", f"s3://{BUCKET}", str(mnt)]
        argv += ["--endpoint-url", url, "-f", "--cache-dir", str(cache)]
        return Mount("wsfuse", argv, mnt, log, wait_read_ahead=1024)

    passwd = work / "s3fs.passwd"

    def s3fs(mnt: Path, cache: Path, log: Path) -> Mount:
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        os.chmod(passwd, 0o600)
        opts = [f"url={url}", f"passwd_file={passwd}", f"use_cache={cache}", *S3FS_OPTIONS]
        opts += s3fs_tls
        argv = ["s3fs", BUCKET, str(mnt), "-f", "-o", ",".join(opts)]
        return Mount("s3fs", argv, mnt, log, wait_read_ahead=None, set_read_ahead=1024)

    rclone_conf = work / "rclone.conf"

    def rclone(mnt: Path, cache: Path, log: Path) -> Mount:
        rclone_conf.touch()
        argv = ["rclone", "mount", f":s3:{BUCKET}", str(mnt), "--config", str(rclone_conf)]
        argv += ["--s3-endpoint", url, "--s3-access-key-id", ACCESS_KEY]
        argv += ["--s3-secret-access-key", SECRET_KEY, "--s3-region", "us-east-1"]
        argv += ["--cache-dir", str(cache), *RCLONE_OPTIONS, *rclone_tls, "--log-level", "NOTICE"]
        env = {k: v for k, v in ENV.items() if k != "AWS_CA_BUNDLE"}  # rclone refuses it
        return Mount("rclone", argv, mnt, log, env=env, wait_read_ahead=None, set_read_ahead=1024)

    def passthrough_desc() -> str:
        return exact_command(
            lambda mnt, cache, log: passthrough_mount(cache, mnt, log, keep_cache=True), url, work
        ).replace("--keep-cache", "[--keep-cache]")

    return {
        "wsfuse": FsSpec("wsfuse", None, wsfuse, lambda: exact_command(wsfuse, url, work)),
        "s3fs": FsSpec("s3fs", "s3fs", s3fs, lambda: exact_command(s3fs, url, work)),
        "rclone": FsSpec("rclone", "rclone", rclone, lambda: exact_command(rclone, url, work)),
        "passthrough": FsSpec("passthrough", None, lambda *a: _unused(), passthrough_desc),
    }


def exact_command(make: Callable[[Path, Path, Path], Mount], url: str, work: Path) -> str:
    """The command line `make` runs, word for word, with the run's own paths, endpoint and
    credentials as placeholders (MNT, DIR, LOG, WORK, URL, KEY, SECRET), and what the harness
    or the filesystem sets besides it."""
    m = make(Path("/MNT"), Path("/DIR"), Path("/LOG"))
    subs = {  # longest first: the work directory's name may contain the access key
        str(work): "WORK",
        PYTHON: "python",
        str(ROOT): "ROOT",
        url: "URL",
        SECRET_KEY: "SECRET",
        ACCESS_KEY: "KEY",
    }
    words = []
    for arg in m.argv:
        word = arg
        for old, new in subs.items():
            word = word.replace(old, new)
        words.append(re.sub(r"(^|[=,])/(MNT|DIR|LOG)\b", r"\1\2", word))
    notes = []
    if m.wait_read_ahead:
        notes.append(f"sets read_ahead_kb={m.wait_read_ahead} itself")
    if m.set_read_ahead:
        notes.append(f"the harness sets read_ahead_kb={m.set_read_ahead}")
    if "AWS_CA_BUNDLE" in ENV and "AWS_CA_BUNDLE" not in m.env:
        notes.append("AWS_CA_BUNDLE unset")
    text = " ".join(shlex.quote(w) for w in words)
    return f"{text} ({'; '.join(notes)})" if notes else text


def _unused() -> Mount:
    raise NotImplementedError


def passthrough_mount(source: Path, mnt: Path, log: Path, *, keep_cache: bool) -> Mount:
    argv = [PYTHON, str(ROOT / "bench" / "passthrough.py"), str(source), str(mnt)]
    if keep_cache:
        argv.append("--keep-cache")
    return Mount("passthrough", argv, mnt, log, wait_read_ahead=1024)


def versions() -> dict[str, str]:
    import subprocess

    out = {}
    for name, cmd in (("s3fs", ["s3fs", "--version"]), ("rclone", ["rclone", "version"])):
        if shutil.which(cmd[0]):
            text = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
            out[name] = text.splitlines()[0] if text else "?"
    if shutil.which("fio"):
        out["fio"] = subprocess.run(
            ["fio", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return out
