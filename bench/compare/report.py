"""The table: absolute numbers, ratios to the ceilings and to the best peer, the targets of
issues 4 and 5 with met yes/no; Markdown and JSON under bench/results/ (`--render` rebuilds
the Markdown and the plot from a JSON with this version's rules)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.env import RESULTS, MiB

PEERS = ("s3fs", "rclone")
FS = ("wsfuse", *PEERS)


@dataclass(frozen=True)
class W:
    id: str
    title: str
    ceilings: tuple[str, ...] = ()  # the min of these (their latency, or local)
    lower_is_better: bool = False


WORKLOADS = [
    W("seq_cold", "cold sequential read 1 GiB", ("boto3_ranged_best", "passthrough_first")),
    W("seq_page_reread", "page-cache re-read", ("passthrough_keep_reread",)),
    W("seq_disk_reread", "disk-cache re-read (new mount, drop_caches)", ("passthrough_first",)),
    W("fio_rand_4k", "fio random 4 KiB reads"),
    W("fio_rand_1m", "fio random 1 MiB reads", ("boto3_random_1m_serial",)),
    W("small_cold_name_1", "2,000 x 128 KiB cold, 1 reader, name order", ("boto3_small_get_1",)),
    W("small_cold_name_8", "... cold, 8 readers, name order", ("boto3_small_get_32",)),
    W("small_cold_shuffled_1", "... cold, 1 reader, shuffled", ("boto3_small_get_1",)),
    W("small_cold_shuffled_8", "... cold, 8 readers, shuffled", ("boto3_small_get_8",)),
    W("small_warm_name_1", "... warm, 1 reader, name order"),
    W("small_warm_name_8", "... warm, 8 readers, name order"),
    W("small_warm_shuffled_1", "... warm, 1 reader, shuffled"),
    W("small_warm_shuffled_8", "... warm, 8 readers, shuffled"),
    W("list_cold", "scandir+lstat 10,000 keys cold (s)", ("boto3_list",), True),
    W("list_warm", "scandir+lstat 10,000 keys warm (s)", ("passthrough_list_warm",), True),
    W("write_1g_close", "1 GiB write, until close", ("boto3_multipart_1g",)),
    W("write_1g_bucket", "1 GiB write, until in bucket", ("boto3_multipart_1g",)),
    W("write_tmp_rename_close", "1 GiB to temp + rename, until rename", ("boto3_multipart_1g",)),
    W(
        "write_tmp_rename_bucket",
        "1 GiB to temp + rename, until in bucket",
        ("boto3_multipart_1g",),
    ),
    W("create_64k_closed", "1,000 x 64 KiB creates, until closed", ("boto3_serial_put_64k",)),
    W("create_64k_listed", "1,000 x 64 KiB creates, until listed", ("boto3_serial_put_64k",)),
    W("daemon_peak_rss", "daemon peak RSS (MiB, all workloads)", (), True),
]
BY_ID = {w.id: w for w in WORKLOADS}
#: The workload group (bench/run --only) each traffic-bounded workload belongs to.
GROUP_OF = {
    "seq_cold": "seq",
    "seq_page_reread": "seq",
    "seq_disk_reread": "seq",
    "fio_rand_4k": "random",
    "fio_rand_1m": "random",
    **{
        f"small_{s}_{o}_{n}": "small"
        for s in ("cold", "warm")
        for o in ("name", "shuffled")
        for n in (1, 8)
    },
}


def find(rows: list[dict[str, Any]], fs: str, workload: str, lat: float | None) -> dict | None:
    for r in rows:
        if r["fs"] == fs and r["workload"] == workload and r["latency_ms"] in (lat, None):
            return r
    return None


def value(rows: list[dict[str, Any]], fs: str, workload: str, lat: float | None) -> float | None:
    r = find(rows, fs, workload, lat)
    return None if r is None else float(r["value"])


def ceiling(rows: list[dict[str, Any]], w: W, lat: float) -> tuple[float | None, str]:
    """The binding ceiling and its name; a ceiling that was not measured (it failed, or ran
    out of time) is named as missing, since the others alone may be a more lenient bound."""
    vals = [(value(rows, "ceiling", c, lat), c) for c in w.ceilings]
    missing = [c for v, c in vals if not v]
    vals = [(v, c) for v, c in vals if v]
    if not vals:
        return None, ""
    v, c = (max if w.lower_is_better else min)(vals)
    return v, c + (f"; not measured: {', '.join(missing)}" if missing else "")


def best_peer(rows: list[dict[str, Any]], w: W, lat: float) -> tuple[float | None, str]:
    vals = [(value(rows, p, w.id, lat), p) for p in PEERS]
    vals = [(v, p) for v, p in vals if v]
    if not vals:
        return None, ""
    return (min if w.lower_is_better else max)(vals)


def traffic(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    srv = r["sample"].get("server", {})
    total = srv.get("total", {}).get("requests", 0)
    got = srv.get("GET", {}).get("bytes", 0)
    sent = srv.get("total", {}).get("received", 0)  # request bodies: uploads
    up = f", {sent / MiB:.0f} MiB up" if sent else ""
    # requests for keys that are not the workload's (a peer still uploading an earlier
    # workload's file): counted apart by the server, shown apart here
    other = srv.get("elsewhere")
    if other:
        parts = [f"{other.get('requests', 0)} req"]
        if other.get("bytes", 0) >= MiB / 2:  # not the few bytes of each PUT's answer
            parts.append(f"{other['bytes'] / MiB:.0f} MiB")
        if other.get("received"):
            parts.append(f"{other['received'] / MiB:.0f} MiB up")
        up += "; other keys meanwhile: " + ", ".join(parts)
    return f" ({total} req, {got / MiB:.0f} MiB{up})"


def settled_note(seconds: float) -> str:
    """The wait before the run started (bench/harness/settle.py), which the wall time omits."""
    if not seconds:
        return ""
    return f" (after waiting {seconds:.0f} s for the previous run's clean-up to settle)"


def memory_note(meta: dict[str, Any]) -> str:
    """How slow fresh memory was at the start and the end (bench/harness/memprobe.py): every
    number of the run follows it."""
    probes = meta.get("fresh_page_us")
    if not probes:
        return ""
    reporting = {True: "on", False: "off", None: "no balloon"}[meta.get("free_page_reporting")]
    start, end = probes
    return (
        f". Fresh memory: {start:.1f} µs per 4 KiB page at the start, {end:.1f} at the end "
        f"(free page reporting: {reporting})"
    )


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def others(r: dict[str, Any] | None) -> str:
    """Cores other sessions used during the workload: above ~0.25 the numbers are noisy."""
    if r is None:
        return "-"
    cpu, secs = r["sample"].get("cpu_s", {}), r["sample"].get("seconds") or 0
    return f"{cpu['others'] / secs:.2f}" if "others" in cpu and secs else "-"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def targets(
    rows: list[dict[str, Any]], lat: float, ran: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The targets of issues 5 (and 4's write ratios) as rows: value, target, met.

    `ran`: the run's `meta` ("groups", "filesystems"). A target whose workload group ran (and
    whose filesystems were mounted) but which has no number -- a failed or skipped workload, a
    ceiling that was not measured -- is a row marked "not measured", never met: a failure
    must not shrink the count of targets instead of showing up in it. Without `ran`, such
    targets are left out (partial runs of one group, tests)."""
    out: list[dict[str, Any]] = []
    groups = set(ran.get("groups", ())) if ran else set()
    mounted = set(ran.get("filesystems", ())) if ran else set()
    if ran and not ran.get("no_ceilings"):
        mounted.add("ceiling")  # measured unless --no-ceilings

    def v(fs: str, w: str) -> float | None:
        return value(rows, fs, w, lat)

    def add(
        name: str,
        val: float | None,
        op: str,
        target: float,
        detail: str,
        group: str | None,  # None: any group (the RSS of whatever ran)
        needs: tuple[str, ...] = ("wsfuse",),
    ) -> None:
        if val is None:
            if not (groups if group is None else group in groups) or not set(needs) <= mounted:
                return
            met, shown = False, None
            detail = f"not measured: {detail}"
        else:
            met = val >= target if op == ">=" else val <= target
            shown = round(val, 3)
        out.append(
            {
                "target": name,
                "latency_ms": lat,
                "value": shown,
                "op": op,
                "goal": target,
                "detail": detail,
                "met": met,
            }
        )

    cold = v("wsfuse", "seq_cold")
    c, cname = ceiling(rows, BY_ID["seq_cold"], lat)
    add(
        "cold seq read / min(boto3 ranged, passthrough)",
        ratio(cold, c),
        ">=",
        0.8,
        f"{fmt(cold)} / {fmt(c)} ({cname})",
        "seq",
        ("wsfuse", "ceiling"),
    )
    bp, pname = best_peer(rows, BY_ID["seq_cold"], lat)
    add(
        "cold seq read / best peer",
        ratio(cold, bp),
        ">=",
        1.5,
        f"{fmt(cold)} / {fmt(bp) if bp else 'no peer measured'} ({pname})",
        "seq",
        ("wsfuse", "s3fs") if "s3fs" in mounted else ("wsfuse", "rclone"),
    )
    disk, pt = v("wsfuse", "seq_disk_reread"), v("ceiling", "passthrough_first")
    add(
        "disk-cache re-read / passthrough",
        ratio(disk, pt),
        ">=",
        0.8,
        f"{fmt(disk)} / {fmt(pt)}",
        "seq",
        ("wsfuse", "ceiling"),
    )
    page, ptk = v("wsfuse", "seq_page_reread"), v("ceiling", "passthrough_keep_reread")
    add(
        "page-cache re-read / passthrough keep_cache",
        ratio(page, ptk),
        ">=",
        0.9,
        f"{fmt(page)} / {fmt(ptk)}",
        "seq",
        ("wsfuse", "ceiling"),
    )
    s8, b32 = v("wsfuse", "small_cold_name_8"), v("ceiling", "boto3_small_get_32")
    add(
        "small files name order, 8 readers / boto3 GETs x32",
        ratio(s8, b32),
        ">=",
        0.8,
        f"{fmt(s8)} / {fmt(b32)} files/s",
        "small",
        ("wsfuse", "ceiling"),
    )
    s1, rc = v("wsfuse", "small_cold_name_1"), v("rclone", "small_cold_name_1")
    add(
        "small files name order, 1 reader / rclone",
        ratio(s1, rc),
        ">=",
        5.0,
        f"{fmt(s1)} / {fmt(rc)} files/s",
        "small",
        ("wsfuse", "rclone"),
    )
    for r, conc in ((1, 1), (8, 8)):
        sh, b = v("wsfuse", f"small_cold_shuffled_{r}"), v("ceiling", f"boto3_small_get_{conc}")
        add(
            f"small files shuffled, {r} reader(s) / boto3 GETs x{conc}",
            ratio(sh, b),
            ">=",
            0.8,
            f"{fmt(sh)} / {fmt(b)} files/s",
            "small",
            ("wsfuse", "ceiling"),
        )
    lc, bl = v("wsfuse", "list_cold"), v("ceiling", "boto3_list")
    add(
        "ls -l cold / raw paginated LIST (time)",
        ratio(lc, bl),
        "<=",
        1.2,
        f"{fmt(lc)} s / {fmt(bl)} s",
        "list",
        ("wsfuse", "ceiling"),
    )
    lw, pl = v("wsfuse", "list_warm"), v("ceiling", "passthrough_list_warm")
    add(
        "ls -l warm / passthrough (time)",
        ratio(lw, pl),
        "<=",
        1.2,
        f"{fmt(lw)} s / {fmt(pl)} s",
        "list",
        ("wsfuse", "ceiling"),
    )
    mpu = v("ceiling", "boto3_multipart_1g")
    wb, wc = v("wsfuse", "write_1g_bucket"), v("wsfuse", "write_1g_close")
    add(
        "1 GiB write until in bucket / boto3 multipart",
        ratio(wb, mpu),
        ">=",
        0.8,
        f"{fmt(wb)} / {fmt(mpu)} MB/s",
        "write",
        ("wsfuse", "ceiling"),
    )
    add(
        "1 GiB write until close / boto3 multipart (issue 4)",
        ratio(wc, mpu),
        ">=",
        0.8,
        f"{fmt(wc)} / {fmt(mpu)} MB/s",
        "write",
        ("wsfuse", "ceiling"),
    )
    rn = v("wsfuse", "write_tmp_rename_bucket")
    add(
        "1 GiB temp + rename until in bucket / boto3 multipart (issue 4: measured, kept cheap)",
        ratio(rn, mpu),
        ">=",
        0.5,
        f"{fmt(rn)} / {fmt(mpu)} MB/s (goal 0.5 is ours)",
        "write",
        ("wsfuse", "ceiling"),
    )
    cr, puts = v("wsfuse", "create_64k_closed"), v("ceiling", "boto3_serial_put_64k")
    add(
        "64 KiB creates until closed / serial boto3 PUTs",
        ratio(cr, puts),
        ">=",
        0.8,
        f"{fmt(cr)} / {fmt(puts)} files/s",
        "write",
        ("wsfuse", "ceiling"),
    )
    rss = v("wsfuse", "daemon_peak_rss")
    add(
        "daemon peak RSS (MiB)",
        rss,
        "<=",
        300,
        "VmHWM, max over every wsfuse mount of the run",
        None,
    )

    def per_unit(wid: str, name: str, field: str, per: str, goal: float, unit: str) -> None:
        """A traffic bound: the server's GET `field` ("bytes" or "requests") per `per` of the
        workload ("bytes" read, or "ops": files or reads); bytes per op in MiB."""
        r = find(rows, "wsfuse", wid, lat)
        den = r["sample"].get(per) if r else None
        if not r or not den:
            add(name, None, "<=", goal, f"no {wid} run with {per}", GROUP_OF[wid])
            return
        num = r["sample"]["server"].get("GET", {}).get(field, 0)
        scale = MiB if field == "bytes" and per != "bytes" else 1
        shown = f"{num / MiB:.0f} MiB" if field == "bytes" else f"{num} GETs"
        of = f"{den / MiB:.0f} MiB" if per == "bytes" else f"{den} {unit}"
        add(name, num / scale / den, "<=", goal, f"{shown} / {of}", GROUP_OF[wid])

    for wid, what in (
        ("seq_cold", "cold seq read"),
        ("seq_page_reread", "page-cache re-read"),
        ("seq_disk_reread", "disk-cache re-read"),
        *(
            (f"small_{state}_{order}_{n}", f"small files{state_label} {label} x{n}")
            for state, state_label in (("cold", ""), ("warm", " warm"))
            for order, label in (("name", "name order"), ("shuffled", "shuffled"))
            for n in (1, 8)
        ),
    ):
        per_unit(wid, f"{what}: bytes from S3 / bytes read", "bytes", "bytes", 1.1, "")
    # shuffled: no order to exploit, so no request that a file read did not need
    for readers in (1, 8):
        per_unit(
            f"small_cold_shuffled_{readers}",
            f"small files shuffled x{readers}: GETs per file read (no wasted request)",
            "requests",
            "ops",
            1.0,
            "files",
        )
    # fio's random offsets are aligned to its block size: one 1 MiB block per read at most,
    # and no more than the blocks its reads touched (read-ahead must not read everything)
    for wid, what in (("fio_rand_4k", "random 4 KiB"), ("fio_rand_1m", "random 1 MiB")):
        per_unit(
            wid, f"{what}: MiB from S3 per read (≤ one 1 MiB block)", "bytes", "ops", 1.0, "reads"
        )
        per_unit(
            wid,
            f"{what}: MiB from S3 / distinct 1 MiB blocks read",
            "bytes",
            "mib_blocks_touched",
            1.0,
            "blocks",
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = result["rows"]
    lines = [
        f"# bench/run, {meta['timestamp']}",
        "",
        f"{meta['cpus']} CPUs, kernel {meta['kernel']}, commit {meta['commit']}"
        f"{' (dirty)' if meta['dirty'] else ''}, {meta['repeat']} run(s) per workload "
        f"({meta.get('seq_repeat', meta['repeat'])} for the sequential reads, the 1 GiB "
        "write and their ceilings; medians"
        f"{', measured as interleaved rounds' if meta.get('interleaved') else ''}), "
        f"wall time {meta.get('wall_seconds', 0):.0f} s"
        f"{settled_note(meta.get('settled_s', 0))}; command: `{meta['command']}`"
        f"{memory_note(meta)}",
        "",
        "Values: MB/s, files/s, IOPS (higher is better) or seconds / MiB (marked, lower is "
        "better); each filesystem's cell adds the server requests and GET MiB of that workload. "
        "`x ceiling` and `x best peer` are wsfuse's value divided by theirs (for rows in seconds "
        "or MiB, lower is better, so there a ratio below 1 is wsfuse ahead). Small-file and "
        "create workloads stop at their time budget: their rate is over the files done.",
        "",
    ]
    ceil_rows = [r for r in rows if r["fs"] == "ceiling"]
    if ceil_rows:
        lines += [
            "## Ceilings",
            "",
            "| ceiling | latency | value | unit | runs | server traffic |",
            "|---|---|---|---|---|---|",
        ]
        for r in ceil_rows:
            lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:g} ms"
            extra = f" {r['by_threads']}" if "by_threads" in r else ""
            lines.append(
                f"| {r['workload']}{extra} | {lat} | {fmt(r['value'])} | {r['unit']} | {r['runs']} | {traffic(r).strip(' ()')} |"
            )
        lines.append("")
    for lat in meta["latencies_ms"]:
        lines += [
            f"## Workloads at {lat:g} ms",
            "",
            "| workload | unit | ceiling | wsfuse | s3fs | rclone | x ceiling | x best peer "
            "| others' cores (wsfuse run) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in WORKLOADS:
            cells = {fs: find(rows, fs, w.id, lat) for fs in FS}
            if not any(cells.values()):
                continue
            cv, cname = ceiling(rows, w, lat)
            bp, _ = best_peer(rows, w, lat)
            ws = cells["wsfuse"]
            wv = None if ws is None else float(ws["value"])
            unit = next(c["unit"] for c in cells.values() if c)
            unit += " (lower better)" if w.lower_is_better else ""
            vals = [
                f"{fmt(c['value'])}{traffic(c) if w.id != 'daemon_peak_rss' else ''}" if c else "-"
                for c in cells.values()
            ]
            ceil_txt = f"{fmt(cv)} ({cname})" if cv else "-"
            lines.append(
                f"| {w.title} | {unit} | {ceil_txt} | "
                + " | ".join(vals)
                + f" | {fmt(ratio(wv, cv))} | {fmt(ratio(wv, bp))} | {others(ws)} |"
            )
        lines.append("")
        tg = [t for t in result.get("targets", []) if t["latency_ms"] == lat]
        if tg:
            lines += [
                f"### Targets at {lat:g} ms",
                "",
                "| target | value | goal | detail | met |",
                "|---|---|---|---|---|",
            ]
            for t in tg:
                op = "≥" if t["op"] == ">=" else "≤"
                lines.append(
                    f"| {t['target']} | {'-' if t['value'] is None else t['value']} | {op} "
                    f"{t['goal']} | {t['detail']} | {'yes' if t['met'] else '**no**'} |"
                )
            lines.append("")
    if meta.get("options"):
        lines += ["## Mount options (exact)", ""]
        lines += [f"- **{k}**: `{v}`" for k, v in meta["options"].items()]
        lines.append("")
    if meta.get("versions"):
        lines.append("Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()))
        lines.append("")
    if meta.get("skipped") or meta.get("failures"):
        lines += ["## Skipped / failed", ""]
        lines += [f"- {s}" for s in meta.get("skipped", []) + meta.get("failures", [])]
        lines.append("")
    return "\n".join(lines) + "\n"


def finish(result: dict[str, Any], json_path: Path | None = None, *, latest: bool = True) -> str:
    """Compute the targets, write JSON (unless re-rendering), Markdown and the plot."""
    result["targets"] = [
        t
        for lat in result["meta"]["latencies_ms"]
        for t in targets(result["rows"], lat, result["meta"])
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = result["meta"]["timestamp"]
    if json_path is None:
        json_path = RESULTS / f"run-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    png = json_path.with_suffix(".png")
    try:
        from bench.compare.plot import plot

        plot(result, png)
        text += f"\nPlot: `{png.relative_to(RESULTS.parent.parent) if png.is_relative_to(RESULTS.parent.parent) else png}`\n"
        if latest:
            (RESULTS / "run-latest.png").write_bytes(png.read_bytes())
    except Exception as exc:
        text += f"\n(no plot: {exc})\n"
    if latest:  # an interrupted run keeps its JSON but does not replace the latest table
        (RESULTS / "run-latest.md").write_text(text)
    return text
