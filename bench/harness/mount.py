"""A FUSE daemon (wsfuse, the passthrough, s3fs, rclone) run in the foreground as our child.

Foreground, so the PID we hold is the daemon's (CPU, peak RSS, and we stop only what we
started). `stop()` always unmounts (`fusermount3 -u`, then lazily), then stops the process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.env import ENV, log
from bench.harness.procs import stop_process, vm_status
from wsfuse.testing.mounts import is_mounted


def unmount(path: Path) -> None:
    """Unmount a FUSE mount of either libfuse generation; lazily if it is busy."""
    if not is_mounted(path):
        return
    for tool in ("fusermount3", "fusermount"):
        subprocess.run([tool, "-u", str(path)], capture_output=True, check=False, timeout=60)
        if not is_mounted(path):
            return
    for tool in ("fusermount3", "fusermount"):
        subprocess.run([tool, "-u", "-z", str(path)], capture_output=True, check=False, timeout=60)
        if not is_mounted(path):
            return
    # Neither fusermount would (not in PATH, or the mount table and mtab disagree): as root,
    # the kernel's own lazy unmount.
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=60)
    if is_mounted(path):
        log(f"could not unmount {path}: unmount it by hand (umount -l)")


def read_ahead_path(mountpoint: Path) -> Path:
    st = os.stat(mountpoint)
    return Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")


@dataclass
class Mount:
    """One daemon. `wait_read_ahead`: the daemon sets the mount's read_ahead_kb to this itself
    (wsfuse, the passthrough), so "mounted" means that value is there; `set_read_ahead`: the
    harness writes it after mounting (peers that do not)."""

    name: str
    argv: list[str]
    path: Path
    log_file: Path
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))
    wait_read_ahead: int | None = 1024
    set_read_ahead: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    st_dev: int = 0
    read_ahead_kb: int = 0
    peak_rss: int = 0

    def start(self, timeout: float = 60) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not mounted after {timeout}s: {self.log()}")
            if is_mounted(self.path):
                with contextlib.suppress(OSError):
                    os.statvfs(self.path)
                    if self.wait_read_ahead is None:
                        break
                    ra = read_ahead_path(self.path)
                    if ra.read_text().strip() == str(self.wait_read_ahead):
                        break
            time.sleep(0.02)
        self.st_dev = os.stat(self.path).st_dev
        if self.set_read_ahead is not None:
            try:
                read_ahead_path(self.path).write_text(str(self.set_read_ahead))
            except OSError as exc:
                log(f"{self.name}: cannot set read_ahead_kb: {exc}")
        self.read_ahead_kb = int(read_ahead_path(self.path).read_text())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> dict[str, int]:
        """VmHWM/VmRSS of the daemon now; also remembers the highest VmHWM seen."""
        if self.proc is None:
            return {}
        st = vm_status(self.proc.pid)
        self.peak_rss = max(self.peak_rss, st.get("VmHWM", 0))
        return st

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def abort(self) -> None:
        """Abort the FUSE connection: blocked calls fail with ENOTCONN instead of hanging."""
        with contextlib.suppress(OSError):
            Path(f"/sys/fs/fuse/connections/{os.minor(self.st_dev)}/abort").write_text("1")

    def stop(self) -> None:
        self.rss()
        unmount(self.path)
        stop_process(self.proc)
        unmount(self.path)
        self.proc = None


def wsfuse_status(mount: Mount | None) -> dict[str, Any]:
    """`wsfuse status` of a wsfuse mount (its numeric counters), or {}."""
    if mount is None or mount.name != "wsfuse":
        return {}
    try:
        from wsfuse.mount import read_status

        status = read_status(mount.path)
    except Exception as exc:
        log(f"cannot read the status of {mount.path}: {exc}")
        return {}
    return {k: v for k, v in status.items() if isinstance(v, int | float)}
