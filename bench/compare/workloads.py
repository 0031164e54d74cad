"""The workloads of issue 5, run on one filesystem (wsfuse or a peer) at a time; `sequential`
and `writes` do one round each (bench/compare/rounds.py interleaves them with the ceilings).

Every cold workload starts from a fresh mount on an empty cache directory after drop_caches;
every workload is bounded (`--timeout` aborts the FUSE connection, small-file and create
workloads stop at their time budget and report the rate over what they did).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from bench.compare import ops
from bench.compare.ceilings import PAGE_CACHE_PASSES, big_read
from bench.compare.context import Ctx, Poller
from bench.compare.data import BIG_KEY, LIST_PREFIX, SMALL_PREFIX, delete_prefix
from bench.compare.filesystems import FsSpec
from bench.harness.env import BUCKET, KiB, log
from bench.harness.meter import Sample
from bench.harness.mount import Mount
from bench.harness.server import harness_client


def _mount(ctx: Ctx, spec: FsSpec, cache: Path) -> Mount:
    mnt = ctx.fresh(f"mnt-{spec.name}")
    return ctx.start(spec.make(mnt, cache, ctx.work / f"{mnt.name}.log"))


def sequential(ctx: Ctx, spec: FsSpec, round_no: int) -> None:
    """One round: cold read (fresh mount, empty cache), page-cache re-reads (same mount,
    reopened), disk-cache re-read (new mount on the same cache, drop_caches)."""
    del round_no  # every round is the same
    cold, page, disk = [], [], []
    cache = ctx.fresh(f"cache-{spec.name}")
    try:
        m = _mount(ctx, spec, cache)
        try:
            path = m.path / BIG_KEY
            cold.append(big_read(ctx, f"{spec.name} cold read", path, mount=m, drop=True))
            # As many passes as the passthrough's keep_cache ceiling, same median.
            for _ in range(PAGE_CACHE_PASSES):
                page.append(big_read(ctx, f"{spec.name} page-cache re-read", path, mount=m))
        finally:
            ctx.release(m)
        m = _mount(ctx, spec, cache)
        try:
            path = m.path / BIG_KEY
            disk.append(big_read(ctx, f"{spec.name} disk-cache re-read", path, mount=m, drop=True))
        finally:
            ctx.release(m)
    finally:  # what was measured counts even if a later step failed
        ctx.remove(cache)
        ctx.add(spec.name, "seq_cold", cold, "MB/s")
        ctx.add(spec.name, "seq_page_reread", page, "MB/s")
        ctx.add(spec.name, "seq_disk_reread", disk, "MB/s")


def random_reads(ctx: Ctx, spec: FsSpec) -> None:
    """fio random 4 KiB and 1 MiB reads of the 1 GiB object, each on a fresh mount and cache,
    for `--fio-runtime` seconds."""
    for bs, name, unit in (("4k", "fio_rand_4k", "IOPS"), ("1m", "fio_rand_1m", "MB/s")):
        runs = []
        for _ in range(ctx.args.repeat):
            cache = ctx.fresh(f"cache-{spec.name}")
            try:
                m = _mount(ctx, spec, cache)
                try:
                    path = m.path / BIG_KEY
                    os.stat(path)
                    s = ctx.measure(
                        f"{spec.name} fio {bs}",
                        lambda p=path, b=bs: ops.fio_random(
                            p, b, ctx.args.fio_runtime, ctx.data.big_size, ctx.workload_timeout()
                        ),
                        mount=m,
                        drop=True,
                        children=True,
                    )
                    runs.append((s.ops / s.seconds if unit == "IOPS" else s.mbps, s))
                finally:
                    ctx.release(m)
            finally:
                ctx.remove(cache)
        ctx.add(spec.name, name, runs, unit)


def small_files(ctx: Ctx, spec: FsSpec) -> None:
    """The 128 KiB files, cold then warm on one mount, for 1 and 8 readers in name order and
    shuffled (8 readers take interleaved slices). The cold pass includes the listdir."""
    for readers in (1, 8):
        for order in ("name", "shuffled"):
            cold, warm = [], []
            for _ in range(ctx.args.repeat):
                cache = ctx.fresh(f"cache-{spec.name}")
                try:
                    m = _mount(ctx, spec, cache)
                    try:
                        d = m.path / SMALL_PREFIX.rstrip("/")
                        got: list[list[str]] = []

                        def cold_pass(
                            d: Path = d, order: str = order, r: int = readers, got: list = got
                        ) -> Sample:
                            s, names = ops.read_files(
                                d, order, r, ctx.args.small_budget, prefix=SMALL_PREFIX
                            )
                            got.append(names)
                            return s

                        s = ctx.measure(f"{spec.name} small cold", cold_pass, mount=m, drop=True)
                        cold.append((s.ops / s.seconds, s))
                        names = got[0]

                        def warm_pass(
                            d: Path = d, order: str = order, r: int = readers, names: list = names
                        ) -> Sample:
                            return ops.read_files(
                                d, order, r, ctx.args.small_budget, names=names, prefix=SMALL_PREFIX
                            )[0]

                        s = ctx.measure(f"{spec.name} small warm", warm_pass, mount=m)
                        warm.append((s.ops / s.seconds, s))
                    finally:
                        ctx.release(m)
                finally:
                    ctx.remove(cache)
            ctx.add(spec.name, f"small_cold_{order}_{readers}", cold, "files/s")
            ctx.add(spec.name, f"small_warm_{order}_{readers}", warm, "files/s")


def listing(ctx: Ctx, spec: FsSpec) -> None:
    """os.scandir + lstat of the 10,000-key prefix, cold (fresh mount) and warm."""
    cold, warm = [], []
    try:
        for _ in range(ctx.args.repeat):
            cache = ctx.fresh(f"cache-{spec.name}")
            try:
                m = _mount(ctx, spec, cache)
                try:
                    d = m.path / LIST_PREFIX.rstrip("/")
                    n = ctx.data.list_count
                    s = ctx.measure(
                        f"{spec.name} scan cold", partial(ops.scan, d, n), mount=m, drop=True
                    )
                    cold.append((s.seconds, s))
                    s = ctx.measure(f"{spec.name} scan warm", partial(ops.scan, d, n), mount=m)
                    warm.append((s.seconds, s))
                finally:
                    ctx.release(m)
            finally:
                ctx.remove(cache)
    finally:  # what was measured counts even if a later step failed
        ctx.add(spec.name, "list_cold", cold, "s")
        ctx.add(spec.name, "list_warm", warm, "s")


def writes(ctx: Ctx, spec: FsSpec, round_no: int) -> None:
    """One round: a 1 GiB sequential write (until close; until in the bucket) and, in the
    first `--repeat` rounds, 1 GiB to a temporary name + rename (until the rename returns;
    until the final object is in the bucket) and `--creates` x 64 KiB files by one writer
    (until closed; until all are listed)."""
    size = ctx.data.big_size
    poller = Poller(harness_client(ctx.server.url))
    res: dict[str, list] = {
        k: [] for k in ("close", "bucket", "rn_close", "rn_bucket", "cr", "crl")
    }
    # Names unique to this round: a peer that uploads late (rclone's write-back) can leave an
    # object behind that would make the next round's mkdir fail. Each workload has its own
    # directory, and its traffic is that of the keys starting with that directory's name (its
    # marker and HEADs of the directory included; no later round's name extends an earlier
    # one's while that one is measured): another workload's late uploads show apart. The
    # clean-up deletes by the same name: files, the marker `x/` and s3fs's `x_$folder$`.
    run = f"{spec.name}-{ctx.latency:g}ms-{round_no}"
    cache = ctx.fresh(f"cache-{spec.name}")
    try:
        m = _mount(ctx, spec, cache)
        try:
            key = f"w-{run}/ckpt.bin"
            os.mkdir(m.path / f"w-{run}")
            # until close, and until the object is in the bucket, in one pass
            s = ctx.measure(
                f"{spec.name} write 1 GiB",
                partial(_write_and_wait, m, poller, key, size, ctx.workload_timeout()),
                mount=m,
                quiet=WRITE_QUIET,
                prefixes=(f"w-{run}",),
            )
            res["close"].append((size / s.extra["close_s"] / 1e6, s))
            res["bucket"].append((s.mbps, s))
            with ctx.server.no_latency():
                ctx.client.delete_object(Bucket=BUCKET, Key=key)
            if round_no < ctx.args.repeat:
                tmp = f"r-{run}/ckpt.tmp"
                final = f"r-{run}/ckpt-final.bin"
                os.mkdir(m.path / f"r-{run}")
                s = ctx.measure(
                    f"{spec.name} write 1 GiB + rename",
                    partial(
                        _write_rename_and_wait, m, poller, tmp, final, size, ctx.workload_timeout()
                    ),
                    mount=m,
                    quiet=WRITE_QUIET,
                    prefixes=(f"r-{run}",),
                )
                res["rn_close"].append((size / s.extra["close_s"] / 1e6, s))
                res["rn_bucket"].append((s.mbps, s))
                with ctx.server.no_latency():
                    delete_prefix(ctx.client, f"r-{run}")
                d = f"c-{run}"
                os.mkdir(m.path / d)
                s = ctx.measure(
                    f"{spec.name} creates",
                    partial(_create_and_wait, ctx, m, poller, d),
                    mount=m,
                    quiet=WRITE_QUIET,
                    prefixes=(d,),
                )
                res["cr"].append((s.ops / s.extra["close_s"], s))
                if s.extra["listed"]:
                    res["crl"].append((s.ops / s.seconds, s))
                else:  # no rate for "until listed" when they never all were
                    ctx.failures.append(
                        f"{spec.name} creates: not all listed {ctx.args.timeout:.0f} s after "
                        "the last close (no until-listed rate for this run)"
                    )
                with ctx.server.no_latency():
                    delete_prefix(ctx.client, d)
            with ctx.server.no_latency():
                delete_prefix(ctx.client, f"w-{run}")
        finally:
            ctx.release(m)
    finally:
        try:
            with ctx.server.no_latency():  # what a peer uploaded after the deletes above
                for directory in (f"w-{run}", f"r-{run}", f"c-{run}"):
                    delete_prefix(ctx.client, directory)
        except Exception as exc:  # never hide the workload's own error
            log(f"cleaning up {run}: {exc}")
        finally:
            ctx.remove(cache)
            # what was measured counts even if a later step failed
            ctx.add(spec.name, "write_1g_close", res["close"], "MB/s")
            ctx.add(spec.name, "write_1g_bucket", res["bucket"], "MB/s")
            ctx.add(spec.name, "write_tmp_rename_close", res["rn_close"], "MB/s")
            ctx.add(spec.name, "write_tmp_rename_bucket", res["rn_bucket"], "MB/s")
            ctx.add(spec.name, "create_64k_closed", res["cr"], "files/s")
            ctx.add(spec.name, "create_64k_listed", res["crl"], "files/s")


#: After a write workload, the traffic is counted until the server has been this long without a
#: request ending: longer than rclone's --vfs-write-back (1 s), so that uploads it starts after
#: the workload are counted with it, not with the next one.
WRITE_QUIET = 2.5


def _write_and_wait(m: Mount, poller: Poller, key: str, size: int, timeout: float):
    s = ops.write_file(m.path / key, size)
    close_s = s.seconds
    t0 = _now()
    if not poller.wait(lambda: poller.size(key) == size, timeout):
        raise TimeoutError(f"{key} not in the bucket {timeout:.0f}s after close")
    s.seconds = close_s + (_now() - t0)
    s.extra["close_s"] = round(close_s, 4)
    return s


def _write_rename_and_wait(
    m: Mount, poller: Poller, tmp: str, final: str, size: int, timeout: float
):
    s = ops.write_file(m.path / tmp, size)
    t0 = _now()
    os.rename(m.path / tmp, m.path / final)
    rename_s = _now() - t0
    close_s = s.seconds + rename_s
    t0 = _now()
    if not poller.wait(lambda: poller.size(final) == size, timeout):
        raise TimeoutError(f"{final} not in the bucket {timeout:.0f}s after the rename")
    s.seconds = close_s + (_now() - t0)
    s.extra.update(
        close_s=round(close_s, 4),
        write_s=round(close_s - rename_s, 4),
        rename_s=round(rename_s, 4),
        tmp_left=poller.size(tmp) is not None,
    )
    return s


def _create_and_wait(ctx: Ctx, m: Mount, poller: Poller, d: str):
    s = ops.create_files(m.path / d, ctx.args.creates, 64 * KiB, ctx.args.create_budget)
    close_s = s.seconds
    t0 = _now()
    n = s.ops
    ok = poller.wait(lambda: poller.count(d + "/f-") >= n, ctx.workload_timeout(), interval=0.1)
    if not ok:
        log(f"{m.name}: only {poller.count(d + '/f-')} of {n} created files listed")
    s.seconds = close_s + (_now() - t0)
    s.extra["close_s"] = round(close_s, 4)
    s.extra["listed"] = ok
    return s


def _now() -> float:
    import time

    return time.perf_counter()
