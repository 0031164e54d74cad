"""Read throughput of wsfuse against ceilings measured in the same run, on this machine.

One command:

    .venv/bin/python bench/read_bench.py [--quick] [--latency 20] [--size 1G] [--rss-size 4G]
        [--profile] [--repeat N] [--random-reads 2000] [--quiet-wait S] [--render JSON]

What it does (as root: it mounts, writes /proc/sys/vm/drop_caches and the mounts'
read_ahead_kb):

1. starts the local S3 server (`python -m wsfuse.testing.s3server`) in its own process, so it
   does not share a GIL with the clients, seeds a ramp-data object of SIZE by multipart upload
   without latency, then sets the emulated time-to-first-byte for each latency in turn
   (0 and 20 ms by default) through the server's admin path (`/_wsfuse/latency`), which also
   serves its request counters (`/_wsfuse/stats`);
2. ceilings: boto3 downloading the object as 8 MiB ranged GETs with 4, 8 and 16 threads (the
   best counts), and `bench/passthrough.py` (pyfuse3 + os.pread over a local copy) read with
   1 MiB reads after drop_caches, without and with keep_cache (the second read with keep_cache
   is the page-cache ceiling);
3. wsfuse (`python -m wsfuse mount s3://BUCKET MNT -f --cache-dir DIR`, default settings): cold
   sequential read (empty cache, drop_caches), re-read from the page cache (same mount,
   reopened: keep_cache), re-read from the disk cache (new mount on the same cache directory,
   drop_caches), random 4 KiB preads on a fresh cache; for each: the server's requests and
   bytes, CPU seconds of server, daemon and reader, and the daemon's peak RSS (VmHWM);
4. the ratios against their targets.

Other sessions may share the machine's cores: each workload first waits (up to --quiet-wait s)
for the machine to go idle, records how much CPU other processes used meanwhile, and the
medians are taken over the runs they left alone ("clean" runs) when there are any.
docs/performance.md explains the results and what limits them.

Prints a Markdown table, writes bench/results/read-<timestamp>.json and read-latest.md.
`--profile` adds one more cold read and disk-cache re-read per latency with py-spy attached to
the daemon (not counted in the table) and prints the top functions (py-spy must be installed in
the venv: `.venv/bin/pip install py-spy`).

Every mount is unmounted and every process this script started is stopped at the end, even on
failure; a read that hangs longer than `--timeout` seconds aborts its FUSE connection.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare.ops import sequential_read
from bench.harness.env import BUCKET, PYTHON, RESULTS, ROOT, GiB, MiB, log, parse_size
from bench.harness.gitstate import git_state
from bench.harness.meter import Meter, Sample
from bench.harness.mount import Mount
from bench.harness.mount import wsfuse_status as daemon_stats
from bench.harness.procs import drop_caches, sigterm_as_interrupt, wait_for_quiet
from bench.harness.server import (
    PART,
    Server,
    s3_client,
    seed,
    write_local_copy,
)
from bench.harness.watchdog import watchdog
from wsfuse.testing.ramp import ramp

KEY = "data/ramp.bin"
RSS_KEY = "data/ramp-rss.bin"
# A run during which other processes used more than this many cores is not "clean".
BUSY_OTHERS_MAX = 0.25
# Page-cache re-reads take ~0.3 s per GiB: each round measures this many passes.
PAGE_CACHE_PASSES = 3
# How the wsfuse daemon is started (`--daemon-cmd` replaces it, e.g. to try a patched build).
WSFUSE_ARGV = [PYTHON, "-m", "wsfuse"]

TARGETS = {
    "cold": 0.8,  # cold read / min(boto3 ceiling, passthrough ceiling)
    "disk": 0.8,  # disk-cache re-read / passthrough without keep_cache
    "page": 0.9,  # page-cache re-read / passthrough with keep_cache
    "rss_mib": 300,
}


# ---------------------------------------------------------------------------- processes


CUMULATIVE_STATS = frozenset(
    {
        "cache_hits",
        "cache_misses",
        "cache_corrupt",
        "backend_requests",
        "backend_bytes",
        "demand_fetches",
        "prefetches",
        "prefetch_cancelled",
        "prefetch_skipped_budget",
    }
)


# ---------------------------------------------------------------------------- measuring


def random_reads(path: Path, key: str, size: int, count: int, seed_: int = 42) -> Sample:
    rng = random.Random(seed_)
    pages = size // 4096
    offsets = [rng.randrange(pages) * 4096 for _ in range(count)]
    lat = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        t0 = time.perf_counter()
        for off in offsets:
            t = time.perf_counter()
            data = os.pread(fd, 4096, off)
            lat.append((time.perf_counter() - t) * 1000)
            if data != ramp(key, off, 4096):
                raise AssertionError(f"{path}: wrong bytes at {off}")
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    distinct_blocks = len({o // MiB for o in offsets})
    return Sample(
        bytes=count * 4096,
        seconds=elapsed,
        ops=count,
        latencies_ms=lat,
        extra={"distinct_1MiB_blocks": distinct_blocks},
    )


def boto3_download(client: Any, key: str, size: int, threads: int, rng: int = PART) -> Sample:
    def get(off: int) -> int:
        end = min(off + rng, size) - 1
        body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{end}")["Body"]
        data = body.read()
        body.close()
        return len(data)

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        total = sum(pool.map(get, range(0, size, rng)))
        elapsed = time.perf_counter() - t0
    assert total == size, (total, size)
    return Sample(bytes=total, seconds=elapsed, extra={"threads": threads})


# ---------------------------------------------------------------------------- profiling


class Profiler:
    """py-spy record attached to a daemon for the duration of a `with` block."""

    def __init__(self, pid: int, out: Path, *, gil: bool = False, rate: int = 250) -> None:
        self.out = out
        exe = shutil.which("py-spy", path=str(ROOT / ".venv" / "bin")) or shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "-o", str(out)]
        argv += ["--rate", str(rate), "--nonblocking", "--threads"]
        if gil:
            argv.append("--gil")
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        time.sleep(1.0)  # py-spy attaches and starts sampling
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and per thread, of a py-spy raw file."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": f"no profile at {raw}"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        funcs = [_short_frame(f) for f in frames[1:]] or [frames[0]]
        self_counts[funcs[-1]] += n
        for fn in set(funcs):
            incl[fn] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(1, total), 1)) for name, n in c.most_common(top)]

    return {
        "samples": total,
        "self_pct": share(self_counts),
        "inclusive_pct": share(incl),
        "threads_pct": share(threads),
    }


def _short_frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function and file.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if parts else file
    return f"{name} ({short})"


# ---------------------------------------------------------------------------- the run


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    server: Server
    client: Any
    size: int
    mounts: list[Mount] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    _counter: int = 0

    def fresh(self, name: str) -> Path:
        self._counter += 1
        path = self.work / f"{name}-{self._counter}"
        path.mkdir(parents=True)
        return path

    def mount_wsfuse(self, cache_dir: Path) -> Mount:
        mnt = self.fresh("mnt")
        argv = [*WSFUSE_ARGV, "mount", f"s3://{BUCKET}", str(mnt)]
        argv += ["--endpoint-url", self.server.url, "-f", "--cache-dir", str(cache_dir)]
        m = Mount("wsfuse", argv, mnt, self.work / f"wsfuse-{self._counter}.log")
        self.mounts.append(m)
        return m.start()

    def mount_passthrough(self, source: Path, *, keep_cache: bool) -> Mount:
        mnt = self.fresh("pt")
        argv = [PYTHON, str(ROOT / "bench" / "passthrough.py"), str(source), str(mnt)]
        if keep_cache:
            argv.append("--keep-cache")
        m = Mount("passthrough", argv, mnt, self.work / f"pt-{self._counter}.log")
        self.mounts.append(m)
        return m.start()

    def release(self, m: Mount) -> None:
        m.stop()
        with contextlib.suppress(ValueError):
            self.mounts.remove(m)
        with contextlib.suppress(OSError):
            m.path.rmdir()

    def measured(
        self, daemon: Mount | None, what: str, fn: Callable[[], Sample], *, drop: bool = False
    ) -> Sample:
        if drop:
            drop_caches()
        busy_before = wait_for_quiet(self.args.quiet_wait)
        before = daemon_stats(daemon)
        with watchdog(self.args.timeout, daemon, what), Meter(self.server, daemon) as meter:
            sample = fn()
        sample = meter.fill(sample)
        sample.cpu["busy_before"] = busy_before
        after = daemon_stats(daemon)
        if after:
            sample.extra["daemon_stats"] = {
                k: v - before.get(k, 0) if k in CUMULATIVE_STATS else v for k, v in after.items()
            }
        return sample

    def record(
        self, workload: str, latency: float | None, samples: list[Sample], **kw: Any
    ) -> None:
        rates = [s.mbps for s in samples]
        # Other sessions share the 2 cores: the median is over the runs they left alone
        # (if any), and the table says how many those were.
        clean = [s for s in samples if s.cpu.get("others", 0.0) / s.seconds <= BUSY_OTHERS_MAX]
        chosen = clean or samples
        chosen_rates = [s.mbps for s in chosen]
        best = chosen[chosen_rates.index(statistics.median_high(chosen_rates))]
        row = {
            "workload": workload,
            "latency_ms": latency,
            "MB/s": round(statistics.median(chosen_rates), 1),
            "runs_MB/s": [round(r, 1) for r in rates],
            "clean_runs": len(clean),
            "sample": best.summary(),
            **kw,
        }
        self.rows.append(row)
        extra = f" ({kw})" if kw else ""
        log(f"{workload} @ {latency} ms: {row['MB/s']} MB/s {row['runs_MB/s']}{extra}")

    # -------------------------------------------------------------- the workloads

    def passthrough_ceilings(self, local_dir: Path, local_file: Path) -> None:
        n = self.args.repeat
        no_keep, keep_first, keep_again = [], [], []
        for _ in range(n):
            m = self.mount_passthrough(local_dir, keep_cache=False)
            try:
                path = m.path / local_file.name
                no_keep.append(self.measured(m, "passthrough read", self._seq(path), drop=True))
            finally:
                self.release(m)
            m = self.mount_passthrough(local_dir, keep_cache=True)
            try:
                path = m.path / local_file.name
                keep_first.append(self.measured(m, "passthrough read", self._seq(path), drop=True))
                for _ in range(PAGE_CACHE_PASSES):  # short and noisy: a few passes each
                    keep_again.append(self.measured(m, "passthrough re-read", self._seq(path)))
            finally:
                self.release(m)
        self.record("passthrough, no keep_cache, after drop_caches", None, no_keep)
        self.record("passthrough, keep_cache, first read after drop_caches", None, keep_first)
        self.record("passthrough, keep_cache, re-read (page cache)", None, keep_again)
        # Until the second open, keep_cache changes nothing: both first reads are the same
        # workload, and pooling them halves the noise of the ceiling the ratios divide by.
        self.record(POOLED_PT, None, no_keep + keep_first)

    def _seq(self, path: Path, key: str = KEY, size: int | None = None) -> Callable[[], Sample]:
        return lambda: sequential_read(path, key, self.size if size is None else size)

    def boto3_ceiling(self, latency: float) -> None:
        by_threads: dict[int, list[Sample]] = {}
        for threads in (4, 8, 16):
            by_threads[threads] = [
                self.measured(
                    None,
                    f"boto3 x{threads}",
                    functools.partial(boto3_download, self.client, KEY, self.size, threads),
                )
                for _ in range(self.args.repeat)
            ]
            log(
                f"boto3 {threads} threads @ {latency} ms: "
                f"{[round(s.mbps) for s in by_threads[threads]]} MB/s"
            )
        best_threads = max(
            by_threads, key=lambda t: statistics.median(s.mbps for s in by_threads[t])
        )
        best = by_threads[best_threads]
        self.record(
            "boto3 8 MiB ranged GETs (best of 4/8/16 threads)",
            latency,
            best,
            threads=best_threads,
            by_threads={
                t: round(statistics.median(s.mbps for s in v), 1) for t, v in by_threads.items()
            },
        )

    def wsfuse_sequential(self, latency: float, *, profile: bool = False) -> None:
        rounds = 1 if profile else self.args.repeat
        cold, page, disk = [], [], []
        for _ in range(rounds):
            cache = self.fresh("cache")
            m = self.mount_wsfuse(cache)
            try:
                path = m.path / KEY
                os.stat(path)  # lookup (LIST) outside the measurement, as a warm namespace
                with self._maybe_profile(profile, m, f"cold-{latency:g}ms"):
                    cold.append(self.measured(m, "wsfuse cold read", self._seq(path), drop=True))
                for _ in range(0 if profile else PAGE_CACHE_PASSES):
                    page.append(self.measured(m, "wsfuse page-cache re-read", self._seq(path)))
            finally:
                self.release(m)
            m = self.mount_wsfuse(cache)
            try:
                path = m.path / KEY
                os.stat(path)
                with self._maybe_profile(profile, m, f"disk-{latency:g}ms"):
                    disk.append(
                        self.measured(m, "wsfuse disk-cache re-read", self._seq(path), drop=True)
                    )
            finally:
                self.release(m)
                shutil.rmtree(cache, ignore_errors=True)
        if profile:
            log(
                f"profiled @ {latency} ms: cold {cold[0].mbps:.0f} MB/s, "
                f"disk {disk[0].mbps:.0f} MB/s (py-spy attached; not in the table)"
            )
            self.profiles[f"rates-{latency:g}ms"] = {
                "cold_MB/s": round(cold[0].mbps, 1),
                "disk_MB/s": round(disk[0].mbps, 1),
            }
            return
        self.record("wsfuse cold read (empty cache, drop_caches)", latency, cold)
        self.record("wsfuse re-read from the page cache (same mount, reopen)", latency, page)
        self.record("wsfuse re-read from the disk cache (new mount, drop_caches)", latency, disk)

    @contextlib.contextmanager
    def _maybe_profile(self, on: bool, m: Mount, name: str) -> Iterator[None]:
        if not on:
            yield
            return
        out = self.work / f"profile-{name}.txt"
        with Profiler(m.pid, out):
            yield
        self.profiles[name] = summarize_profile(out)
        keep = RESULTS / "profiles"
        keep.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(out, keep / out.name)

    def wsfuse_random(self, latency: float) -> None:
        cache = self.fresh("cache")
        m = self.mount_wsfuse(cache)
        try:
            path = m.path / KEY
            os.stat(path)
            count = self.args.random_reads
            sample = self.measured(
                m,
                "wsfuse random reads",
                lambda: random_reads(path, KEY, self.size, count),
                drop=True,
            )
        finally:
            self.release(m)
            shutil.rmtree(cache, ignore_errors=True)
        gets = sample.server.get("GET", {"requests": 0, "bytes": 0})
        self.rows.append(
            {
                "workload": f"wsfuse random 4 KiB preads, cold ({count})",
                "latency_ms": latency,
                "MB/s": round(sample.mbps, 2),
                "sample": sample.summary(),
            }
        )
        log(
            f"random @ {latency} ms: {sample.ops / sample.seconds:.0f} reads/s, "
            f"{gets['requests']} GETs, {gets['bytes'] / MiB:.0f} MiB"
        )

    def wsfuse_rss(self, latency: float, size: int) -> None:
        cache = self.fresh("cache")
        m = self.mount_wsfuse(cache)
        try:
            path = m.path / RSS_KEY
            os.stat(path)
            sample = self.measured(m, "wsfuse RSS read", self._seq(path, RSS_KEY, size), drop=True)
        finally:
            self.release(m)
            shutil.rmtree(cache, ignore_errors=True)
        self.record(f"wsfuse cold read of {size / GiB:g} GiB (RSS)", latency, [sample])


# ---------------------------------------------------------------------------- reporting


def fmt_server(sample: dict[str, Any]) -> str:
    s = sample.get("server", {})
    get = s.get("GET", {"requests": 0, "bytes": 0})
    other = s.get("total", {"requests": 0})["requests"] - get["requests"]
    text = f"{get['requests']} / {get['bytes'] / MiB:.0f}"
    return text + (f" (+{other} other)" if other else "")


def fmt_cpu(sample: dict[str, Any]) -> str:
    c = sample.get("cpu_s", {})
    secs = sample.get("seconds") or 1

    def part(name: str) -> str:
        return f"{c[name]:.1f}" if name in c else "-"

    busy = c.get("machine_busy")
    cores = f"{busy / secs:.2f}" if busy is not None else "-"
    others = f"{c['others'] / secs:.2f}" if "others" in c else "-"
    # three columns: our CPU seconds, machine busy cores, other sessions' busy cores
    return (
        f"{part('daemon')} / {part('server')} / {part('reader')} / {part('kernel_threads')} | "
        f"{cores} | {others}"
    )


def fmt_rss(sample: dict[str, Any]) -> str:
    hwm = sample.get("rss", {}).get("VmHWM")
    return f"{hwm / MiB:.0f}" if hwm else "-"


POOLED_PT = "passthrough, first read after drop_caches (both mounts pooled)"


def ratios(rows: list[dict[str, Any]], latencies: list[float]) -> list[dict[str, Any]]:
    """The target ratios, each with its value, the rates it came from and whether it is met."""

    def rate(prefix: str, latency: float | None) -> float | None:
        for r in rows:
            if r["workload"].startswith(prefix) and r["latency_ms"] == latency:
                return float(r["MB/s"])
        return None

    out: list[dict[str, Any]] = []
    pt_cold = rate(POOLED_PT, None) or rate("passthrough, no keep_cache", None)
    pt_page = rate("passthrough, keep_cache, re-read", None)
    for lat in latencies:
        boto = rate("boto3", lat)
        cold = rate("wsfuse cold read (empty", lat)
        disk = rate("wsfuse re-read from the disk", lat)
        page = rate("wsfuse re-read from the page", lat)
        if cold and boto and pt_cold:
            ceiling = min(boto, pt_cold)
            out.append(
                {
                    "ratio": "cold read / min(boto3, passthrough)",
                    "latency_ms": lat,
                    "value": round(cold / ceiling, 3),
                    "detail": f"{cold:.0f} / min({boto:.0f}, {pt_cold:.0f})",
                    "target": TARGETS["cold"],
                }
            )
        if disk and pt_cold:
            out.append(
                {
                    "ratio": "disk-cache re-read / passthrough first read",
                    "latency_ms": lat,
                    "value": round(disk / pt_cold, 3),
                    "detail": f"{disk:.0f} / {pt_cold:.0f}",
                    "target": TARGETS["disk"],
                }
            )
        if page and pt_page:
            out.append(
                {
                    "ratio": "page-cache re-read / passthrough keep_cache re-read",
                    "latency_ms": lat,
                    "value": round(page / pt_page, 3),
                    "detail": f"{page:.0f} / {pt_page:.0f}",
                    "target": TARGETS["page"],
                }
            )
    hwm = [
        (r["sample"].get("rss", {}).get("VmHWM", 0), r["workload"], r["latency_ms"])
        for r in rows
        if r["sample"].get("rss")
    ]
    if hwm:
        peak, workload, lat = max(hwm)
        out.append(
            {
                "ratio": "daemon peak RSS (MiB, max over workloads)",
                "latency_ms": lat,
                "value": round(peak / MiB, 1),
                "detail": workload,
                "target": TARGETS["rss_mib"],
                "lower_is_better": True,
            }
        )
    for r in out:
        ok = r["value"] <= r["target"] if r.get("lower_is_better") else r["value"] >= r["target"]
        r["met"] = bool(ok)
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Read benchmark, {meta['timestamp']}",
        "",
        f"{meta['cpus']} CPUs, {meta['kernel']}, object {meta['size'] / GiB:g} GiB, "
        f"{meta['repeat']} run(s) per workload (median), commit {meta['commit']}"
        f"{' (dirty)' if meta['dirty'] else ''}; command: `{meta['command']}`",
        "",
        "| workload | latency | MB/s | runs (clean) | GETs / MiB from S3 | CPU s daemon / server / "
        "reader / kernel threads | cores busy | of which others | daemon VmHWM MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = r["sample"]
        lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:g} ms"
        rate = f"{r['MB/s']:.0f}"
        if "ops/s" in s:
            rate = f"{s['ops/s']:.0f} reads/s (p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.1f} ms)"
        runs = ", ".join(f"{x:.0f}" for x in r.get("runs_MB/s", []))
        if "clean_runs" in r:
            runs += f" ({r['clean_runs']})"
        if "threads" in r:
            runs += (
                f" (x{r['threads']}; "
                + ", ".join(f"{t}: {v:.0f}" for t, v in r["by_threads"].items())
                + ")"
            )
        lines.append(
            f"| {r['workload']} | {lat} | {rate} | {runs} | {fmt_server(s)} | {fmt_cpu(s)} | "
            f"{fmt_rss(s)} |"
        )
    lines += [
        "",
        "| ratio | latency | value | detail (MB/s) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for q in result["ratios"]:
        lat = "-" if q["latency_ms"] is None else f"{q['latency_ms']:g} ms"
        op = "≤" if q.get("lower_is_better") else "≥"
        lines.append(
            f"| {q['ratio']} | {lat} | {q['value']} | {q['detail']} | {op} {q['target']} | "
            f"{'yes' if q['met'] else '**no**'} |"
        )
    if result.get("profiles"):
        lines += ["", "## py-spy (daemon, extra profiled runs)", ""]
        for name, prof in result["profiles"].items():
            if "self_pct" not in prof:
                lines.append(f"- {name}: {prof}")
                continue
            lines.append(f"### {name}: {prof['samples']} samples")
            lines.append("")
            lines.append("self: " + "; ".join(f"{n} {p}%" for n, p in prof["self_pct"][:10]))
            lines.append("")
            lines.append(
                "inclusive: " + "; ".join(f"{n} {p}%" for n, p in prof["inclusive_pct"][:12])
            )
            lines.append("")
            lines.append("threads: " + "; ".join(f"{n} {p}%" for n, p in prof["threads_pct"][:8]))
            lines.append("")
    return "\n".join(lines) + "\n"


def render(path: Path) -> int:
    """Recompute the ratios of a saved result with this version's rules; rewrite its Markdown."""
    result = json.loads(path.read_text())
    rows = result["rows"]
    if not any(r["workload"] == POOLED_PT for r in rows):
        firsts = [
            r for r in rows if r["workload"].startswith("passthrough") and "first" in r["workload"]
        ]
        firsts += [r for r in rows if r["workload"].startswith("passthrough, no keep_cache")]
        runs = [x for r in firsts for x in r["runs_MB/s"]]
        if runs:
            rows.append(
                {
                    "workload": POOLED_PT,
                    "latency_ms": None,
                    "MB/s": round(statistics.median(runs), 1),
                    "runs_MB/s": runs,
                    "sample": firsts[0]["sample"],
                }
            )
    result["ratios"] = ratios(rows, result["meta"]["latencies_ms"])
    path.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (RESULTS / "read-latest.md").write_text(text)
    print(text)
    return 0


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per workload (< 10 min)")
    parser.add_argument(
        "--latency",
        type=float,
        action="append",
        help="emulated time-to-first-byte in ms (repeatable; default: 0 and 20)",
    )
    parser.add_argument("--size", type=parse_size, default=GiB, help="object size (default 1G)")
    parser.add_argument("--rss-size", type=parse_size, help="also a cold read of this size (RSS)")
    parser.add_argument("--repeat", type=int, help="runs per workload (default 3; --quick: 1)")
    parser.add_argument("--random-reads", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="extra runs with py-spy")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per workload")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10,
        help="before each workload, wait up to this long for the machine to be idle",
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--no-ceilings", action="store_true", help="skip boto3 and passthrough")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-render a saved result (ratios, table)"
    )
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    args.repeat = args.repeat or (1 if args.quick else 3)
    latencies = args.latency or [0.0, 20.0]
    if os.geteuid() != 0:
        print("read_bench: run as root (mounts, drop_caches, read_ahead_kb)", file=sys.stderr)
        return 2

    started = time.time()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wsfuse-read-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    server = Server(work / "s3server.log")
    bench: Bench | None = None
    interrupted = False

    sigterm_as_interrupt()
    try:
        server.start()
        log(f"S3 server pid {server.pid} at {server.url}; workdir {work}")
        client = s3_client(server.url)
        server.set_latency(0)
        rate = seed(client, KEY, args.size)
        log(f"seeded {args.size / GiB:g} GiB at {rate:.0f} MB/s")
        if args.rss_size:
            rate = seed(client, RSS_KEY, args.rss_size)
            log(f"seeded {args.rss_size / GiB:g} GiB (RSS object) at {rate:.0f} MB/s")
        bench = Bench(args, work, server, client, args.size)
        if not args.no_ceilings:
            local_dir = work / "local"
            local_file = local_dir / "ramp.bin"
            write_local_copy(local_file, KEY, args.size)
            bench.passthrough_ceilings(local_dir, local_file)
            local_file.unlink()
        for lat in latencies:
            server.set_latency(lat)
            if not args.no_ceilings:
                bench.boto3_ceiling(lat)
            bench.wsfuse_sequential(lat)
            bench.wsfuse_random(lat)
        if args.rss_size:
            server.set_latency(latencies[-1])
            bench.wsfuse_rss(latencies[-1], args.rss_size)
        if args.profile:
            for lat in latencies:
                server.set_latency(lat)
                bench.wsfuse_sequential(lat, profile=True)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        if bench is not None:
            for m in list(bench.mounts):
                bench.release(m)
        server.stop()
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if bench is None or interrupted:
        return 1

    commit, dirty = git_state()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = {
        "meta": {
            "timestamp": stamp,
            "command": " ".join(["bench/read_bench.py", *sys.argv[1:]]),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "size": args.size,
            "rss_size": args.rss_size,
            "repeat": args.repeat,
            "latencies_ms": latencies,
            "commit": commit,
            "dirty": dirty,
            "wall_seconds": round(time.time() - started, 1),
            "targets": TARGETS,
        },
        "rows": bench.rows,
        "ratios": ratios(bench.rows, latencies),
        "profiles": bench.profiles,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"read-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (RESULTS / "read-latest.md").write_text(text)
    print(text)
    log(f"done in {time.time() - started:.0f}s: bench/results/read-{stamp}.json, read-latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
