"""What every ceiling and workload needs: the server, a client, scratch directories, the
mounts alive now (stopped on any exit), the time budget and the results list.

A result is one dict: `fs` (wsfuse, s3fs, rclone, or a ceiling's name), `workload`,
`latency_ms` (the block's; the local ceilings go through no latency but are measured in every
block; None in results before session 9), `value` in `unit`, `runs` (every repeat), and the
median run's `sample` (seconds, bytes, ops, server requests/bytes by kind, CPU s, RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare.data import DataSets
from bench.harness.env import BUCKET, log
from bench.harness.meter import Meter, Sample
from bench.harness.mount import Mount, wsfuse_status
from bench.harness.procs import drop_caches, wait_for_quiet
from bench.harness.server import Server
from bench.harness.watchdog import watchdog

#: Scratch directories are kept until the end of the run while this much disk is free.
DEFER_REMOVAL_FREE = 24 << 30


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class OutOfTime(Exception):
    """The run's time budget is spent: the remaining workloads are skipped."""


class Poller:
    """The harness's own checks against the bucket ("is it there yet?"), on a client whose
    requests the server neither delays nor counts (`harness_client`)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        except Exception:
            return None

    def count(self, prefix: str) -> int:
        n = 0
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": BUCKET, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kw)
            n += page.get("KeyCount", 0)
            token = page.get("NextContinuationToken")
            if not token:
                return n

    def wait(self, done: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    server: Server
    client: Any
    data: DataSets
    deadline: float
    results: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    trash: list[Path] = field(default_factory=list)  # scratch directories removed at the end
    stash: dict[Any, Any] = field(default_factory=dict)  # a ceiling's state across rounds
    _runs: dict[tuple[str, str, float | None], list[tuple[float, Sample]]] = field(
        default_factory=dict
    )
    _counter: int = 0

    @property
    def latency(self) -> float:
        return self.server.latency_ms

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime(what)

    def workload_timeout(self) -> float:
        """`--timeout`, but no later than the budget's end (plus a minute for the workload
        that started just before it: it is cut off, not the whole run's report)."""
        return max(30.0, min(self.args.timeout, self.deadline - time.monotonic() + 60.0))

    def fresh(self, name: str) -> Path:
        self._counter += 1
        path = self.work / f"{name}-{self._counter}"
        path.mkdir(parents=True)
        return path

    def start(self, mount: Mount) -> Mount:
        self.mounts.append(mount)
        return mount.start()

    def release(self, m: Mount) -> None:
        m.stop()
        if m.peak_rss:
            self.peak_rss[m.name] = max(self.peak_rss.get(m.name, 0), m.peak_rss)
        with contextlib.suppress(ValueError):
            self.mounts.remove(m)
        with contextlib.suppress(OSError):
            m.path.rmdir()

    def release_all(self) -> None:
        for m in list(self.mounts):
            try:
                self.release(m)
            except Exception as exc:
                log(f"cleaning up {m.path}: {exc}")

    def remove(self, path: Path) -> None:
        """Done with a scratch directory (a cache, a staging area): deleted at the end of the
        run, not now, while the disk has room. On this machine's ext4 without a journal, a
        new inode is never one deleted in the last 60-360 s: the allocator tests every such
        inode of the group, one inode-table lookup each, before each file it creates. So the
        1,024 block files a cold read leaves behind, deleted, made the next cold read's
        cache writes cost 1.6 instead of 0.7 CPU-s/GiB (docs/performance.md, session 9): a
        penalty of the harness's clean-up, not of the filesystem measured."""
        if _free_bytes(path) >= DEFER_REMOVAL_FREE:
            self.trash.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)

    def empty_trash(self) -> None:
        for path in self.trash:
            shutil.rmtree(path, ignore_errors=True)
        self.trash.clear()

    def measure(
        self,
        what: str,
        fn: Callable[[], Sample],
        *,
        mount: Mount | None = None,
        drop: bool = False,
        children: bool = False,
        quiet: float = 0.3,
        prefixes: tuple[str, ...] = (),
    ) -> Sample:
        """One time-bounded workload with its CPU, traffic and RSS (its traffic counted until
        the server has been `quiet` s without a request ending; with `prefixes`, the traffic
        of those keys, other keys' apart: `Server.settled_stats`)."""
        self.check_time(what)
        if drop:
            drop_caches()
        busy_before = wait_for_quiet(self.args.quiet_wait)
        before = wsfuse_status(mount)
        with (
            watchdog(self.workload_timeout(), mount, what),
            Meter(self.server, mount, children=children) as meter,
        ):
            sample = fn()
        sample = meter.fill(sample, quiet, prefixes)
        sample.cpu["busy_before"] = busy_before
        after = wsfuse_status(mount)
        if after:
            sample.extra["daemon_stats"] = {
                k: v - before.get(k, 0) if isinstance(v, int) and k in before else v
                for k, v in after.items()
                if k in CUMULATIVE or k.startswith(("rss", "memory"))
            }
        return sample

    def add(
        self,
        fs: str,
        workload: str,
        values: list[tuple[float, Sample]],
        unit: str,
        *,
        latency: bool = True,
        replace: bool = False,
        **extra: Any,
    ) -> None:
        """Record runs of one workload; its row holds the median of every run recorded so far
        in this latency block. The interleaved rounds (bench/compare/rounds.py) add one run per
        round to the same row; `replace` starts the row's runs over (a best-of ceiling)."""
        if not values:
            return
        lat = self.latency if latency else None
        key = (fs, workload, lat)
        runs = list(values) if replace else self._runs.get(key, []) + list(values)
        self._runs[key] = runs
        ordered = sorted(runs, key=lambda v: v[0])
        value, sample = ordered[(len(ordered) - 1) // 2]
        if len(ordered) % 2 == 0:
            value = statistics.median(v for v, _ in ordered)
        row = {
            "fs": fs,
            "workload": workload,
            "latency_ms": lat,
            "value": round(value, 4),
            "unit": unit,
            "runs": [round(v, 3) for v, _ in runs],
            "sample": sample.summary(),
            **extra,
        }
        for i, old in enumerate(self.results):
            if (old["fs"], old["workload"], old["latency_ms"]) == key:
                self.results[i] = row
                break
        else:
            self.results.append(row)
        log(f"{fs:11s} {workload:26s} {lat} ms: {value:.4g} {unit} {row['runs']}")


CUMULATIVE = frozenset(
    {
        "cache_hits",
        "cache_misses",
        "backend_requests",
        "backend_bytes",
        "demand_fetches",
        "prefetches",
        "prefetch_cancelled",
        "prefetch_skipped_budget",
        "fast_link_streams",
        "streamed_parts_from_memory",
        "streamed_parts_read_back",
    }
)
