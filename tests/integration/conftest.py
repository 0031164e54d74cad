"""Real FUSE mounts: the daemon runs as a subprocess (`python -m wsfuse mount ... -f`) over the
local S3 server, and every mount is unmounted at the end of its test, even when it fails."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fresh_bucket_name
from wsfuse.testing.mounts import is_mounted

FUSE_AVAILABLE = Path("/dev/fuse").exists() and shutil.which("fusermount3") is not None
pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason="needs /dev/fuse and fusermount3")

# Blocks are 1 MiB by default (wsfuse.config.MountConfig.block_size).
from wsfuse.config import DEFAULTS  # noqa: E402
from wsfuse.mount import read_status  # noqa: E402

BLOCK = DEFAULTS.block_size


_is_mounted = is_mounted


def _answers(path: Path) -> bool:
    """statvfs goes to the daemon (stat may be answered from the kernel's cache): a live mount
    answers, a dead one (left by a killed daemon) says ENOTCONN."""
    try:
        os.statvfs(path)
    except OSError:
        return False
    return True


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    log_file: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30) -> Mount:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A dead FUSE mount left there on purpose (the daemon was killed, and the kernel
            # had not yet auto-unmounted it): replacing it is wsfuse's job under test.
            if exc.errno != errno.ENOTCONN:
                raise
        log = open(self.log_file, "ab")  # noqa: SIM115 - kept open for the daemon's life
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsfuse",
                "mount",
                *self.args,
                str(self.path),
                "-f",
                "--cache-dir",
                str(self.cache_dir),
                "--log-level",
                "debug",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **self.extra_env},
        )
        log.close()
        deadline = time.monotonic() + timeout
        try:
            while not (_is_mounted(self.path) and _answers(self.path)):
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"not mounted after {timeout}s:\n{self.log()}")
                time.sleep(0.02)
        except BaseException:
            self.stop()  # a mount that did not come up is not left behind by any caller
            raise
        return self

    def status(self) -> dict[str, Any]:
        """The daemon's counters (`wsfuse status --json`), over its control socket."""
        return read_status(self.path)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        """Unmount and wait for the daemon; lazily unmount and kill it if it will not go."""
        if self.proc is None:
            if _is_mounted(self.path):  # e.g. a daemon the test killed
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
            return
        if _is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, check=False)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if _is_mounted(self.path):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.path)], capture_output=True, check=False
            )
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.path)], capture_output=True, check=False
        )


@dataclass
class S3Bucket:
    server: Any
    name: str

    @property
    def uri(self) -> str:
        return f"s3://{self.name}"

    _client: Any = None

    def put(self, key: str, data: bytes) -> None:
        if self._client is None:
            self._client = self.server.client()  # building a boto3 client takes ~0.3 s
        with self.server.no_latency():
            self._client.put_object(Bucket=self.name, Key=key, Body=data)

    def put_many(self, items: dict[str, bytes]) -> None:
        """Seed many objects at once, straight into the server's store (no requests)."""
        self.server.put_objects(self.name, items)

    def delete(self, key: str) -> None:
        if self._client is None:
            self._client = self.server.client()
        with self.server.no_latency():
            self._client.delete_object(Bucket=self.name, Key=key)

    def gets(self, key: str | None = None) -> int:
        return int(self.server.count("GET", key=key, bucket=self.name))

    def get_bytes(self, key: str | None = None) -> int:
        return int(self.server.bytes_sent("GET", key=key, bucket=self.name))


#: The mounts' caches keep `min_free` free on their disk and otherwise stop caching (by design):
#: then the tests that count GETs would fail for a reason that has nothing to do with them.
NEEDED_FREE = DEFAULTS.min_free + (2 << 30)


@pytest.fixture(scope="session", autouse=True)
def _room_for_the_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    free = shutil.disk_usage(tmp_path_factory.getbasetemp()).free
    if free < NEEDED_FREE:
        pytest.fail(
            f"only {free / (1 << 30):.1f} GiB free for the tests' caches under "
            f"{tmp_path_factory.getbasetemp()}; the mounts stop caching below "
            f"{DEFAULTS.min_free >> 30} GiB (--min-free), and {NEEDED_FREE >> 30} GiB are "
            "needed: free some space",
            pytrace=False,
        )


@pytest.fixture
def bucket(s3_server: Any) -> S3Bucket:
    name = fresh_bucket_name("fuse")
    s3_server.create_bucket(name)
    return S3Bucket(s3_server, name)


@pytest.fixture
def mounter(tmp_path: Path, bucket: S3Bucket) -> Iterator[Any]:
    """`mounter(*extra_args, cache_dir=None) -> Mount` for the test's bucket; every mount is
    unmounted after the test."""
    mounts: list[Mount] = []
    counter = iter(range(1000))

    def make(*extra: str, cache_dir: Path | None = None, uri: str | None = None) -> Mount:
        n = next(counter)
        m = Mount(
            path=tmp_path / f"mnt{n}",
            cache_dir=cache_dir or tmp_path / "cache",
            log_file=tmp_path / f"daemon{n}.log",
            args=[uri or bucket.uri, "--endpoint-url", bucket.server.endpoint_url, *extra],
        )
        mounts.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in mounts:
            m.stop()
