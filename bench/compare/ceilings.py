"""The ceilings, measured in the same run through the same server latency: what boto3 can get
from this server, what a plain local file gives, and what a minimal Python FUSE passthrough
over a local copy gives (the Python-FUSE ceiling for a perfect cache)."""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.compare import ops
from bench.compare.context import Ctx
from bench.compare.data import BIG_KEY, LIST_PREFIX, SMALL_SIZE, delete_prefix
from bench.compare.filesystems import passthrough_mount
from bench.harness.env import BUCKET, KiB, MiB
from bench.harness.meter import Sample
from bench.harness.mount import Mount

PAGE_CACHE_PASSES = 3


def _repeat(ctx: Ctx, fn: Any, n: int | None = None) -> list[tuple[float, Sample]]:
    return [fn() for _ in range(n or ctx.args.repeat)]


def boto3_get_round(ctx: Ctx, round_no: int) -> None:
    """One round of the GET ceilings: a single-stream GET of the 1 GiB object (in the first
    `--repeat` rounds), and one pass each of 4, 8 and 16 parallel 8 MiB ranged GETs; the
    ceiling is the thread count with the best median over the rounds so far."""
    size = ctx.data.big_size

    def single() -> Sample:
        t0 = time.perf_counter()
        body = ctx.client.get_object(Bucket=BUCKET, Key=BIG_KEY)["Body"]
        total = 0
        while chunk := body.read(MiB):
            total += len(chunk)
        body.close()
        assert total == size
        return Sample(bytes=total, seconds=time.perf_counter() - t0)

    if round_no < ctx.args.repeat:
        s = ctx.measure("boto3 single GET", single)
        ctx.add("ceiling", "boto3_single_get", [(s.mbps, s)], "MB/s")

    def ranged(threads: int) -> Sample:
        def get(off: int) -> int:
            end = min(off + 8 * MiB, size) - 1
            body = ctx.client.get_object(Bucket=BUCKET, Key=BIG_KEY, Range=f"bytes={off}-{end}")
            data = body["Body"].read()
            body["Body"].close()
            return len(data)

        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            total = sum(pool.map(get, range(0, size, 8 * MiB)))
            elapsed = time.perf_counter() - t0
        assert total == size
        return Sample(bytes=total, seconds=elapsed, extra={"threads": threads})

    by_threads: dict[int, list[tuple[float, Sample]]] = ctx.stash.setdefault(
        ("boto3_ranged", ctx.latency), {}
    )
    for threads in (4, 8, 16):
        s = ctx.measure(f"boto3 ranged x{threads}", lambda t=threads: ranged(t))
        by_threads.setdefault(threads, []).append((s.mbps, s))
    medians = {t: statistics.median(v for v, _ in runs) for t, runs in by_threads.items()}
    best = max(medians, key=lambda t: medians[t])
    ctx.add(
        "ceiling",
        "boto3_ranged_best",
        by_threads[best],
        "MB/s",
        replace=True,
        by_threads={t: round(m, 1) for t, m in medians.items()},
    )


def boto3_random_1m(ctx: Ctx) -> None:
    """The ceiling of fio's random 1 MiB reads (one job, one read at a time): 1 MiB ranged
    GETs at random 1 MiB-aligned offsets of the big object, one at a time, for as long as fio
    runs. (Against the parallel ranged GETs a reader that waits for each read would look
    50x too slow: at 20 ms no serial reader gets past ~45 reads per second.)"""
    size = ctx.data.big_size
    rng = random.Random(5)

    def run() -> Sample:
        total = reads = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < ctx.args.fio_runtime:
            off = rng.randrange(size // MiB) * MiB
            end = min(off + MiB, size) - 1
            body = ctx.client.get_object(Bucket=BUCKET, Key=BIG_KEY, Range=f"bytes={off}-{end}")
            total += len(body["Body"].read())
            body["Body"].close()
            reads += 1
        return Sample(bytes=total, seconds=time.perf_counter() - t0, ops=reads)

    s = ctx.measure("boto3 random 1 MiB GETs", run)
    ctx.add("ceiling", "boto3_random_1m_serial", [(s.mbps, s)], "MB/s")


def boto3_small(ctx: Ctx) -> None:
    """GETs of the 128 KiB objects at 1, 8 and 32 concurrent requests (files/s)."""
    keys = ctx.data.small_keys()
    for conc in (1, 8, 32):

        def run(conc: int = conc) -> Sample:
            deadline = time.perf_counter() + ctx.args.small_budget

            def get(key: str) -> int:
                if time.perf_counter() > deadline:
                    return 0
                body = ctx.client.get_object(Bucket=BUCKET, Key=key)["Body"]
                n = len(body.read())
                body.close()
                assert n == SMALL_SIZE
                return 1

            with ThreadPoolExecutor(conc) as pool:
                t0 = time.perf_counter()
                n = sum(pool.map(get, keys))
                elapsed = time.perf_counter() - t0
            return Sample(bytes=n * SMALL_SIZE, seconds=elapsed, ops=n, extra={"conc": conc})

        def m(run: Any = run, conc: int = conc) -> tuple[float, Sample]:
            s = ctx.measure(f"boto3 small x{conc}", run)
            return s.ops / s.seconds, s

        ctx.add("ceiling", f"boto3_small_get_{conc}", _repeat(ctx, m), "files/s")


def write_round(ctx: Ctx, local_big: Path, round_no: int) -> None:
    """One round of the write ceilings: a boto3 multipart upload of 1 GiB (upload_file, 8 MiB
    parts, 10 threads: boto3's defaults) and, in the first `--repeat` rounds, serial PUTs of
    64 KiB objects."""
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)

    def mpu() -> tuple[float, Sample]:
        def run() -> Sample:
            t0 = time.perf_counter()
            ctx.client.upload_file(str(local_big), BUCKET, "ceil/mpu.bin", Config=cfg)
            return Sample(bytes=ctx.data.big_size, seconds=time.perf_counter() - t0)

        s = ctx.measure("boto3 multipart upload", run)
        with ctx.server.no_latency():
            ctx.client.delete_object(Bucket=BUCKET, Key="ceil/mpu.bin")
        return s.mbps, s

    ctx.add("ceiling", "boto3_multipart_1g", [mpu()], "MB/s")
    if round_no >= ctx.args.repeat:
        return

    body = b"x" * (64 * KiB)

    def puts() -> tuple[float, Sample]:
        def run() -> Sample:
            t0 = time.perf_counter()
            deadline = t0 + ctx.args.create_budget
            n = 0
            for i in range(ctx.args.creates):
                if time.perf_counter() > deadline:
                    break
                ctx.client.put_object(Bucket=BUCKET, Key=f"ceil/puts/f-{i:05d}", Body=body)
                n += 1
            return Sample(bytes=n * len(body), seconds=time.perf_counter() - t0, ops=n)

        s = ctx.measure("boto3 serial PUTs", run)
        with ctx.server.no_latency():
            delete_prefix(ctx.client, "ceil/puts/")
        return s.ops / s.seconds, s

    ctx.add("ceiling", "boto3_serial_put_64k", [puts()], "files/s")


def boto3_list(ctx: Ctx) -> None:
    """The raw paginated LIST (delimiter "/", 1,000 keys a page) of the 10,000-key prefix."""

    def run() -> Sample:
        t0 = time.perf_counter()
        n = 0
        pages = ctx.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=LIST_PREFIX, Delimiter="/"
        )
        for page in pages:
            n += len(page.get("Contents", []))
        assert n == ctx.data.list_count, n
        return Sample(seconds=time.perf_counter() - t0, ops=n)

    def m() -> tuple[float, Sample]:
        s = ctx.measure("boto3 LIST", run)
        return s.seconds, s

    ctx.add("ceiling", "boto3_list", _repeat(ctx, m), "s")


def _passthrough(ctx: Ctx, local_root: Path, keep: bool) -> Mount:
    mnt = ctx.fresh("pt")
    return ctx.start(
        passthrough_mount(local_root, mnt, ctx.work / f"pt-{mnt.name}.log", keep_cache=keep)
    )


def big_read(
    ctx: Ctx, what: str, path: Path, *, mount: Mount | None = None, drop: bool = False
) -> tuple[float, Sample]:
    """One measured sequential read of the 1 GiB object at `path`, as (MB/s, sample)."""
    s = ctx.measure(
        what, lambda: ops.sequential_read(path, BIG_KEY, ctx.data.big_size), mount=mount, drop=drop
    )
    return s.mbps, s


def seq_round(ctx: Ctx, local_root: Path, round_no: int) -> None:
    """One round of the local read ceilings: a plain local file read after drop_caches and
    warm; the passthrough's first read without and with keep_cache and, with it, its
    page-cache re-reads (the GET ceilings are `boto3_get_round`)."""
    del round_no  # every round is the same
    big_path = local_root / BIG_KEY
    cold = big_read(ctx, "local read cold", big_path, drop=True)
    ctx.add("ceiling", "local_read_cold", [cold], "MB/s")
    ctx.add("ceiling", "local_read_warm", [big_read(ctx, "local read warm", big_path)], "MB/s")
    firsts: list[tuple[float, Sample]] = []
    for keep in (False, True):
        m = _passthrough(ctx, local_root, keep)
        try:
            path = m.path / BIG_KEY
            firsts.append(big_read(ctx, "passthrough read", path, mount=m, drop=True))
            ctx.add(
                "ceiling", f"passthrough_first_{'keep' if keep else 'nokeep'}", firsts[-1:], "MB/s"
            )
            rereads = [
                big_read(ctx, "passthrough re-read", path, mount=m)
                for _ in range(PAGE_CACHE_PASSES if keep else 0)
            ]
            ctx.add("ceiling", "passthrough_keep_reread", rereads, "MB/s")
        finally:
            ctx.release(m)
    # Until the second open keep_cache changes nothing: both first reads are pooled.
    ctx.add("ceiling", "passthrough_first", firsts, "MB/s")


def local_listing(ctx: Ctx, local_root: Path) -> None:
    """The passthrough's scandir + lstat of the 10,000-key prefix, cold and warm."""
    list_cold, list_warm = [], []
    for _ in range(ctx.args.repeat):
        m = _passthrough(ctx, local_root, False)
        try:
            d = m.path / LIST_PREFIX.rstrip("/")
            s = ctx.measure(
                "passthrough scan cold",
                lambda d=d: ops.scan(d, ctx.data.list_count),
                mount=m,
                drop=True,
            )
            list_cold.append((s.seconds, s))
            s = ctx.measure(
                "passthrough scan warm",
                lambda d=d: ops.scan(d, ctx.data.list_count),
                mount=m,
            )
            list_warm.append((s.seconds, s))
        finally:
            ctx.release(m)
    ctx.add("ceiling", "passthrough_list_cold", list_cold, "s")
    ctx.add("ceiling", "passthrough_list_warm", list_warm, "s")
