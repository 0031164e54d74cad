"""Emulated time-to-first-byte for the test servers, shared by the S3 and GCS servers.

Real object stores answer after tens of milliseconds; prefetch, single-flight and parallel-part
tests only mean something when a request takes that long. The delay is slept outside any server
lock so that parallel requests overlap, and the emulator counts how many requests were asleep
at the same time (`peak_overlap`): tests prove overlap from that count, never from wall-clock
time, which a loaded CI machine stretches at will.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class LatencyEmulator:
    """`latency` seconds of sleep per request, except inside `no_latency()` (harness set-up)."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self._lock = threading.Lock()
        self._exempt = 0
        self._sleeping = 0
        self._peak = 0
        self._delayed = 0

    @contextlib.contextmanager
    def no_latency(self) -> Iterator[None]:
        """Within this block requests are answered without the emulated latency."""
        with self._lock:
            self._exempt += 1
        try:
            yield
        finally:
            with self._lock:
                self._exempt -= 1

    def delay(self) -> None:
        """Sleep the configured latency for one request (call with no server lock held)."""
        with self._lock:
            seconds = 0.0 if self._exempt else self.latency
            if seconds <= 0:
                return
            self._delayed += 1
            self._sleeping += 1
            self._peak = max(self._peak, self._sleeping)
        try:
            time.sleep(seconds)
        finally:
            with self._lock:
                self._sleeping -= 1

    @property
    def delayed(self) -> int:
        """How many requests have been delayed since the last `reset_overlap()`."""
        with self._lock:
            return self._delayed

    @property
    def peak_overlap(self) -> int:
        """The most requests that were inside their delay at one moment."""
        with self._lock:
            return self._peak

    def reset_overlap(self) -> None:
        with self._lock:
            self._peak = self._sleeping
            self._delayed = 0


class EmulatesLatency:
    """The test servers' face of their `delays`: `server.latency = 0.02` and
    `with server.no_latency():`."""

    delays: LatencyEmulator

    @property
    def latency(self) -> float:
        """Seconds every request waits before it is answered (time-to-first-byte)."""
        return self.delays.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.delays.latency = seconds

    def no_latency(self) -> contextlib.AbstractContextManager[None]:
        """Within this block requests are answered without the emulated latency."""
        return self.delays.no_latency()
