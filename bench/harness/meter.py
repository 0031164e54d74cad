"""One measured workload (`Sample`) and the `Meter` around it.

The meter resets the server's counters, snapshots CPU seconds of every party and of the whole
machine, and afterwards fills the sample with the deltas, the server's requests and bytes and
the daemon's peak RSS. Per-workload traffic is the point: peers read far ahead, so speed alone
would flatter them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness.mount import Mount
from bench.harness.procs import (
    cpu_seconds,
    kernel_threads_cpu,
    machine_cpu,
    self_cpu,
)
from bench.harness.server import Server


@dataclass
class Sample:
    """One measured workload."""

    bytes: int = 0
    seconds: float = 0.0
    ops: int = 0
    server: dict[str, dict[str, int]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "MB/s": round(self.mbps, 1),
            "server": self.server,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()},
            "rss": self.rss,
            **self.extra,
        }
        if self.ops:
            out["ops"] = self.ops
            out["ops/s"] = round(self.ops / self.seconds, 1) if self.seconds else 0.0
        if self.latencies_ms:
            lat = sorted(self.latencies_ms)
            out["p50_ms"] = round(lat[len(lat) // 2], 3)
            out["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3)
        return out


#: Machine-wide counters in a sample's `cpu`, not CPU time of one of our processes.
NOT_PROCESSES = frozenset({"machine_busy", "iowait", "steal"})


class Meter:
    """CPU seconds of the server, a daemon, this process and the kernel's threads, and of the
    whole machine (the rest is other sessions' work on the shared cores), and server stats."""

    def __init__(self, server: Server, daemon: Mount | None, *, children: bool = False) -> None:
        self.server = server
        self.daemon = daemon
        self.children = children

    def _snapshot(self) -> dict[str, float]:
        return {
            "server": cpu_seconds(self.server.pid),
            "daemon": cpu_seconds(self.daemon.pid) if self.daemon else 0.0,
            "reader": self_cpu(self.children),
            "kernel_threads": kernel_threads_cpu(),
            **machine_cpu(),
        }

    def __enter__(self) -> Meter:
        self.server.reset()
        self.start = self._snapshot()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.end = self._snapshot()

    def fill(self, sample: Sample, quiet: float = 0.3, prefixes: tuple[str, ...] = ()) -> Sample:
        """`sample` with its CPU, RSS and traffic; the traffic once no request has ended for
        `quiet` s, and with `prefixes` only that of the workload's own keys, other keys'
        apart (see `Server.settled_stats`)."""
        cpu = {k: self.end[k] - self.start[k] for k in self.start}
        if self.daemon is None:
            del cpu["daemon"]
        else:
            sample.rss = self.daemon.rss()
        ours = sum(v for k, v in cpu.items() if k not in NOT_PROCESSES)
        cpu["others"] = max(0.0, cpu["machine_busy"] - ours)
        sample.cpu = cpu
        sample.server, settle = self.server.settled_stats(quiet=quiet, prefixes=prefixes)
        if settle > quiet + 1.0:  # traffic went on after the workload: say so beside it
            sample.extra["traffic_settle_s"] = round(settle, 2)
        return sample
