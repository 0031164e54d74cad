"""bench/run: wsfuse side by side with s3fs-fuse, rclone and the ceilings, in one run.

    bench/run [--quick] [--latency 20] [--peers wsfuse,s3fs,rclone]
              [--only seq,random,small,list,write] [--render JSON]

As root (mounts, drop_caches, read_ahead_kb, apt-get for missing peers). Starts the local S3
server in its own process, seeds the data sets without latency, then for each latency runs each
workload group beside its ceilings (the sequential reads and the 1 GiB write as interleaved
rounds of ceilings and filesystems, bench/compare/rounds.py); prints one table and writes
bench/results/run-<stamp>.json, run-<stamp>.png, run-latest.md and run-latest.png. Every mount,
the server and the scratch directory are cleaned up on any exit, Ctrl-C included; only the
processes this run started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import rounds
from bench.compare.context import Ctx, OutOfTime
from bench.compare.data import DataSets, local_copies, seed_all
from bench.compare.filesystems import specs, versions
from bench.compare.report import finish
from bench.harness import memprobe, settle
from bench.harness.env import MiB, log, parse_size
from bench.harness.gitstate import git_state
from bench.harness.meter import Sample
from bench.harness.procs import sigterm_as_interrupt
from bench.harness.server import Server, s3_client, use_tls

GROUPS = ("seq", "random", "small", "list", "write")
APT = {"s3fs": "s3fs", "rclone": "rclone", "fio": "fio"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 run each (3 for the sequential reads and writes), short budgets (~20 min)",
    )
    p.add_argument(
        "--latency",
        type=float,
        action="append",
        help="ms (repeatable; default 20, then 0)",
    )
    p.add_argument("--peers", default="wsfuse,s3fs,rclone", help="filesystems to mount, in order")
    p.add_argument("--only", help=f"workload groups, comma-separated: {','.join(GROUPS)}")
    p.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve the bucket over HTTPS (a self-signed certificate every client verifies; "
        "s3fs only skips the check): real S3 endpoints are HTTPS",
    )
    p.add_argument("--repeat", type=int, help="runs per workload (default 3, --quick 1)")
    p.add_argument("--size", type=parse_size, default=1 << 30, help="the big object (default 1G)")
    p.add_argument("--small-count", type=int, default=2000)
    p.add_argument("--list-count", type=int, default=10_000)
    p.add_argument("--creates", type=int, default=1000, help="64 KiB files created (default 1000)")
    p.add_argument(
        "--small-budget", type=float, help="s per small-file pass (default 120, --quick 15)"
    )
    p.add_argument(
        "--create-budget", type=float, help="s for the creates (default 300, --quick 30)"
    )
    p.add_argument("--fio-runtime", type=float, help="s per fio job (default 20, --quick 6)")
    p.add_argument("--timeout", type=float, default=300, help="s per workload before aborting")
    p.add_argument(
        "--quiet-wait", type=float, help="s to wait for an idle machine (default 10, --quick 2)"
    )
    p.add_argument(
        "--budget",
        type=float,
        help="minutes for the whole run, from its start (installing the peers included, the "
        "--settle wait not: it has its own bound); then skip the rest (default 150, --quick 25)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=settle.WINDOW,
        help="s to wait at most for ext4's recently-deleted-inode window after the previous "
        "run's clean-up (bench/harness/settle.py; default 360, 0: do not wait)",
    )
    p.add_argument(
        "--workdir", type=Path, help="scratch directory (default: a temp dir in /var/tmp)"
    )
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--no-install", action="store_true", help="do not apt-get missing peers/fio")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render a saved result")
    args = p.parse_args(argv)
    q = args.quick
    args.repeat = args.repeat or (1 if q else 3)
    # The cold/disk/page reads, the 1 GiB write and their ceilings decide the read and write
    # targets and move +-20% (the multipart ceiling +-40%) from one pass to the next on this
    # VM: even --quick takes the median of 3 (about +4 minutes).
    args.seq_repeat = max(args.repeat, 3)
    # 20 ms first: its block carries the targets, so a run cut short by its budget (or by a
    # long --settle) loses the 0 ms block, not the one that decides
    args.latencies = args.latency or [20.0, 0.0]
    args.small_budget = args.small_budget or (15.0 if q else 120.0)
    args.create_budget = args.create_budget or (30.0 if q else 300.0)
    args.fio_runtime = args.fio_runtime or (6.0 if q else 20.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if q else 10.0)
    args.budget = args.budget or (25.0 if q else 150.0)
    args.groups = [g.strip() for g in (args.only or ",".join(GROUPS)).split(",") if g.strip()]
    bad = [g for g in args.groups if g not in GROUPS]
    if bad:
        p.error(f"unknown workload group(s) {bad}; choose from {GROUPS}")
    args.groups = [g for g in GROUPS if g in args.groups]  # always in this order
    args.fs = [f.strip() for f in args.peers.split(",") if f.strip()]
    return args


def ensure_tools(args: argparse.Namespace, skipped: list[str]) -> None:
    """apt-get what is missing (as root), else say what is missing and skip it."""
    need = [f for f in args.fs if f in APT]
    if "random" in args.groups:
        need.append("fio")
    missing = [t for t in need if shutil.which(t) is None]
    if missing and not args.no_install and os.geteuid() == 0:
        log(f"installing {missing} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *[APT[t] for t in missing]],
            check=False,
            env=env,
            timeout=900,
        )
    for t in need:
        if shutil.which(t) is None:
            skipped.append(f"{t}: not installed (apt-get install -y {APT[t]}); skipped")
            log(skipped[-1])
            if t == "fio":
                args.groups = [g for g in args.groups if g != "random"]
            else:
                args.fs = [f for f in args.fs if f != t]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        import json

        print(finish(json.loads(args.render.read_text()), args.render))
        return 0
    if os.geteuid() != 0:
        print("bench/run: run as root (mounts, drop_caches, read_ahead_kb)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()  # before the wait below, which may take minutes
    # The whole run, apt included. The --settle wait is not counted: it has its own bound,
    # and counting it cut a run's 0 ms block short after a 341 s wait (session 18).
    deadline = time.monotonic() + args.budget * 60
    skipped: list[str] = []
    ensure_tools(args, skipped)
    settled = settle.settle(
        args.settle,
        lambda s: log(
            f"waiting {s:.0f} s for ext4 to stop counting the previous run's deleted "
            "files as recent (--settle, bench/harness/settle.py)"
        ),
    )
    deadline += settled
    started = time.time()
    fresh_at_start = memprobe.fresh_page_us()
    data = DataSets(big_size=args.size, small_count=args.small_count, list_count=args.list_count)
    g = set(args.groups)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wsfuse-bench-run-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    server = Server(work / "s3server.log", tls=use_tls(work) if args.tls else None)
    ctx: Ctx | None = None
    interrupted = False
    try:
        server.start()
        log(f"S3 server pid {server.pid} at {server.url}; workdir {work}")
        client = s3_client(server.url)
        server.set_latency(0)
        ctx = Ctx(args, work, server, client, data, deadline)
        seed_all(
            client, data, big=bool(g & {"seq", "random"}), small="small" in g, listing="list" in g
        )
        fs_specs = specs(server.url, work)
        ctx.options = {
            name: fs_specs[name].describe()
            for name in [*args.fs, "passthrough"]
            if name in fs_specs
        }
        local_root = None
        if not args.no_ceilings and g & {"seq", "list", "write"}:
            local_root = local_copies(
                work / "local", data, big=bool(g & {"seq", "write"}), listing="list" in g
            )
        run_specs = []
        for fs in args.fs:
            if fs not in fs_specs or fs == "passthrough":
                skipped.append(f"unknown filesystem {fs!r}")
            else:
                run_specs.append(fs_specs[fs])
        for lat in args.latencies:
            server.set_latency(lat)
            ctx.peak_rss.clear()
            # Every ceiling is measured again in each block, beside the workloads it is the
            # ceiling of (the local ones go through no latency): the machine's state drifts
            # over a half-hour run. rounds.py says which groups are interleaved with theirs.
            try:
                for group in args.groups:
                    rounds.run_group(
                        ctx, group, run_specs, local_root, lambda what, fn: _guard(ctx, what, fn)
                    )
            finally:  # also for a block cut short: what the mounts so far reached
                for spec in run_specs:
                    if spec.name in ctx.peak_rss:
                        rss = ctx.peak_rss[spec.name] / MiB
                        ctx.add(spec.name, "daemon_peak_rss", [(rss, Sample())], "MiB")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        # A second Ctrl-C or SIGTERM must not stop the clean-up half-way, leaving mounts, the
        # server or daemons behind: during it they are only noted.
        held = {s: signal.signal(s, _note_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if ctx is not None:
                ctx.release_all()
                ctx.empty_trash()
            server.stop()
            if not args.keep_workdir and args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
            if ctx is not None:  # it created and deleted files
                settle.mark_cleanup()
        finally:
            for signum, handler in held.items():
                signal.signal(signum, handler)
    if ctx is None:
        return 1
    commit, dirty = git_state()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    result = {
        "meta": {
            "timestamp": stamp,
            "command": " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "commit": commit,
            "dirty": dirty,
            "repeat": args.repeat,
            "seq_repeat": args.seq_repeat,
            # seq and write rounds alternate ceilings and filesystems (bench/compare/rounds.py)
            "interleaved": [g for g in args.groups if g in rounds.PAIRED],
            "latencies_ms": args.latencies,
            "groups": args.groups,
            "no_ceilings": args.no_ceilings,
            "filesystems": args.fs,
            "data": {
                "big": data.big_size,
                "small": data.small_count,
                "list": data.list_count,
                "creates": args.creates,
            },
            "budgets_s": {
                "small": args.small_budget,
                "create": args.create_budget,
                "fio": args.fio_runtime,
            },
            "options": ctx.options,
            "versions": versions(),
            "skipped": skipped,
            "failures": ctx.failures + (["interrupted (partial result)"] if interrupted else []),
            "wall_seconds": round(time.time() - started, 1),
            "settled_s": round(settled, 1),  # waited before the start, see settle.py
            # µs per fresh 4 KiB page before and after the run (memprobe.py): how slow this
            # VM's memory was, which every filesystem's numbers follow
            "fresh_page_us": [round(fresh_at_start, 2), round(memprobe.fresh_page_us(), 2)],
            "free_page_reporting": memprobe.free_page_reporting(),
        },
        "rows": ctx.results,
    }
    text = finish(result, latest=not interrupted)
    print(text)
    log(f"done in {time.time() - started:.0f}s: bench/results/run-{stamp}.json, run-latest.md")
    return 1 if interrupted else 0


def _note_signal(signum: int, frame: object) -> None:
    log(f"{signal.Signals(signum).name} during the clean-up: finishing it first")


def _guard(ctx: Ctx, what: str, fn) -> None:
    """Run one part; a failure is recorded and the run goes on; out of time skips it."""
    try:
        ctx.check_time(what)
        fn()
    except OutOfTime as exc:
        ctx.failures.append(f"{what}: skipped, the time budget was spent ({exc})")
        log(ctx.failures[-1])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        ctx.failures.append(f"{what}: {type(exc).__name__}: {exc}"[:600])
        log(f"FAILED {ctx.failures[-1]}")
        ctx.release_all()


if __name__ == "__main__":
    sys.exit(main())
