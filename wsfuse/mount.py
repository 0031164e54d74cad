"""Mount lifecycle: checks before mounting, the trio main loop, signals, ordered shutdown,
the daemon (background) mode, and unmounting.

Daemon mode re-runs this program in the foreground as a child in its own session, with a
pipe on which the child reports "ready" once the kernel mount answers (or the one-line
error that stopped it); the parent prints that and exits. No fork after threads exist.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyfuse3
import trio

from wsfuse.allocator import tune_allocator
from wsfuse.backends.base import Backend
from wsfuse.cache import BlockCache
from wsfuse.config import MountConfig
from wsfuse.errors import UserError
from wsfuse.fs.core import Filesystem
from wsfuse.fuse_ops import CONTROL_XATTR, Operations

log = logging.getLogger(__name__)

READY_FD_ENV = "WSFUSE_READY_FD"
# Sequential reads arrive from the kernel in read_ahead_kb pieces; 128 KiB is the default.
# 1 MiB is the largest request libfuse 3.14 negotiates (max_pages 256): one block per request.
READ_AHEAD_KB = 1024
# What a system call on the mount point answers once its FUSE connection has ended.
ENDED_ERRNOS = frozenset({errno.ECONNABORTED, errno.ENOTCONN})
# How long the parent waits for the daemon to report; a bucket check retries up to ~60 s.
DAEMON_START_TIMEOUT = 120


def preflight(mountpoint: Path, dev_fuse: Path = Path("/dev/fuse")) -> None:
    """Refuse, with what to do, every mount point the kernel mount would fail on (or worse,
    silently shadow). A dead FUSE mount left by a crashed daemon is unmounted lazily."""
    if not dev_fuse.exists():
        raise UserError(
            f"{dev_fuse} does not exist: load the fuse module (modprobe fuse), or run the "
            "container with --device /dev/fuse --cap-add SYS_ADMIN"
        )
    try:
        st = mountpoint.stat()
    except FileNotFoundError:
        raise UserError(
            f"mount point {mountpoint} does not exist; create it: mkdir -p {mountpoint}"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise UserError(f"cannot use mount point {mountpoint}: {exc.strerror}") from exc
        log.warning("%s is a dead FUSE mount (a crashed daemon?): unmounting it", mountpoint)
        lazy_unmount(mountpoint)
        st = mountpoint.stat()
    if os.path.ismount(mountpoint) and _is_dead(mountpoint):
        log.warning("%s is a dead FUSE mount (a crashed daemon?): unmounting it", mountpoint)
        lazy_unmount(mountpoint)
        st = mountpoint.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UserError(
            f"{mountpoint} is already mounted; unmount it first (wsfuse unmount {mountpoint})"
        )
    try:
        if any(mountpoint.iterdir()):
            raise UserError(
                f"mount point {mountpoint} is not empty; mounting would hide its files. "
                "Use an empty directory"
            )
    except PermissionError:
        raise UserError(f"no permission to read mount point {mountpoint}") from None
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise UserError(
            f"no permission to mount on {mountpoint}: it belongs to uid {st.st_uid}; "
            "use a directory you own, or run as root"
        )


def _is_dead(mountpoint: Path) -> bool:
    """A mount whose daemon is gone answers ENOTCONN. stat() may be served from the kernel's
    attribute cache, statvfs() always asks the daemon."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(mountpoint: Path) -> None:
    result = subprocess.run(
        ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise UserError(
            f"cannot unmount the dead mount at {mountpoint}: {result.stderr.strip()}; "
            f"try: umount -l {mountpoint}"
        )


def unmount(mountpoint: Path) -> None:
    """`wsfuse unmount`: ask the kernel to unmount; the daemon sees it and exits cleanly."""
    if not os.path.ismount(mountpoint):
        try:
            mountpoint.stat()
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                lazy_unmount(mountpoint)
                return
        raise UserError(f"{mountpoint} is not mounted")
    result = subprocess.run(
        ["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        msg = result.stderr.strip() or f"fusermount3 exited with {result.returncode}"
        if "busy" in msg.lower():
            msg += " (files are open under it: close them, or unmount lazily with umount -l)"
        raise UserError(f"cannot unmount {mountpoint}: {msg}")


def control_socket_path(cache_dir: Path) -> Path:
    """Under the cache directory when the path fits a unix socket address (108 bytes)."""
    path = cache_dir / "control.sock"
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(cache_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"wsfuse-{digest}.sock"


def fuse_options(config: MountConfig, source: str) -> set[str]:
    # fsname shows the bucket in `mount`/`df`; commas would split the option string.
    opts = {f"fsname={source.replace(',', '_')}", "subtype=wsfuse", "default_permissions"}
    opts.add("noatime")
    if config.allow_other:
        opts.add("allow_other")
    if config.read_only:
        opts.add("ro")
    return opts


@contextlib.contextmanager
def open_cache(config: MountConfig) -> Iterator[BlockCache]:
    """The block cache; it locks the directory (one daemon per cache directory) and owns the
    index, which the filesystem also uses for listings."""
    cache = BlockCache(
        config.cache_dir,
        block_size=config.block_size,
        capacity=config.cache_size,
        min_free=config.min_free,
    )
    try:
        yield cache
    finally:
        cache.close()


def set_read_ahead(st_dev: int) -> None:
    path = Path(f"/sys/class/bdi/{os.major(st_dev)}:{os.minor(st_dev)}/read_ahead_kb")
    try:
        path.write_text(str(READ_AHEAD_KB))
    except OSError as exc:  # not root, or no sysfs: reads come in 128 KiB pieces
        log.info("could not set %s (%s): reads arrive as 128 KiB requests", path, exc.strerror)


def report_ready(message: str) -> None:
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), (message + "\n").encode())
        os.close(int(fd))


async def serve_control(fs: Filesystem, path: Path, *, task_status: trio.TaskStatus[None]) -> None:
    """Answer `wsfuse status` on a unix socket: one JSON document per connection."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket left by a killed daemon
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(os.fspath(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(json.dumps(fs.statistics()).encode() + b"\n")

    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _main(backend: Backend, config: MountConfig, mountpoint: Path, source: str) -> None:
    with open_cache(config) as cache:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(backend, config, cache, nursery, index=cache.index)
            if not config.read_only:
                await fs.writeback.recover_pending()
            control = control_socket_path(config.cache_dir)
            await nursery.start(serve_control, fs, control)
            ops = Operations(fs, config, os.fspath(control))
            pyfuse3.init(ops, os.fspath(mountpoint), fuse_options(config, source))
            try:
                nursery.start_soon(_after_mount, mountpoint, source)
                nursery.start_soon(_on_signals)
                await pyfuse3.main(min_tasks=8, max_tasks=64)
            finally:
                nursery.cancel_scope.cancel()
                pyfuse3.close(unmount=True)
                log.info("unmounted %s", mountpoint)


async def _after_mount(mountpoint: Path, source: str) -> None:
    # stat() of the root goes through our own main loop, so it runs in a thread; its answer
    # proves the kernel mount works end to end.
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
    except OSError as exc:
        if exc.errno not in ENDED_ERRNOS:
            raise
        # Unmounted while starting (a signal, `wsfuse unmount`): the main loop is ending
        # cleanly on its own; nothing is ready to report.
        log.info("%s was unmounted before it was ready", mountpoint)
        return
    set_read_ahead(st.st_dev)
    log.info("mounted %s at %s", source, mountpoint)
    report_ready("ready")


async def _on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def recover(backend: Backend, config: MountConfig) -> list[str]:
    """`wsfuse recover`: what the next mount would do with pending uploads, without mounting."""

    async def run() -> list[str]:
        with open_cache(config) as cache:
            async with trio.open_nursery() as nursery:
                fs = Filesystem(backend, config, cache, nursery, index=cache.index)
                report = await fs.writeback.recover_pending()
                nursery.cancel_scope.cancel()
        return report

    return trio.run(run)


def run_foreground(backend: Backend, config: MountConfig, mountpoint: Path, source: str) -> None:
    """Mount and serve until unmounted or signalled."""
    preflight(mountpoint)
    tune_allocator()  # before trio starts worker threads
    trio.run(_main, backend, config, mountpoint, source)


def spawn_daemon(argv: Sequence[str], log_file: Path) -> int:
    """Run `wsfuse mount ... --foreground` in the background; return once it is mounted."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{READY_FD_ENV: str(write_fd)})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log_out:
        child = subprocess.Popen(
            [sys.executable, "-m", "wsfuse", *argv, "--foreground", "--log-file", str(log_file)],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            pass_fds=(write_fd,),
            env=env,
            start_new_session=True,
        )
    os.close(write_fd)
    message = b""
    with os.fdopen(read_fd, "rb") as reader:
        message = reader.readline()
    text = message.decode(errors="replace").strip()
    if text == "ready":
        return 0
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    if text.startswith("error: "):
        print(f"wsfuse: {text}", file=sys.stderr)
    else:
        print(f"wsfuse: error: the mount daemon exited ({code}); see {log_file}", file=sys.stderr)
    return 1


def read_status(mountpoint: Path) -> dict[str, object]:
    try:
        control = os.getxattr(mountpoint, CONTROL_XATTR.decode())
    except OSError as exc:
        raise UserError(f"{mountpoint} is not a wsfuse mount ({exc.strerror})") from None
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(os.fsdecode(control))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise UserError(f"cannot reach the wsfuse daemon of {mountpoint}: {exc}") from None
    result: dict[str, object] = json.loads(b"".join(chunks))
    return result
