"""A time bound for one workload: a read that hangs in a FUSE daemon never returns on its
own, so when the time is up the watchdog aborts the mount's FUSE connection (the blocked call
fails with ENOTCONN) and the workload raises TimeoutError."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

from bench.harness.env import log


class Abortable(Protocol):
    def abort(self) -> None: ...


@contextlib.contextmanager
def watchdog(seconds: float, mount: Abortable | None, what: str) -> Iterator[None]:
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        log(f"TIMEOUT: {what} took more than {seconds:.0f}s: aborting the FUSE connection")
        if mount is not None:
            mount.abort()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if fired.is_set():
        raise TimeoutError(f"{what} took more than {seconds:.0f}s")
