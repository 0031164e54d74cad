"""bench/compare/report: the ratios and targets that decide "met", and the rendering of a saved
run (what docs/performance.md quotes) — checked without running any benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare import report

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def row(fs: str, workload: str, value: float, lat: float | None = 20.0, **sample: Any) -> dict:
    return {
        "fs": fs,
        "workload": workload,
        "latency_ms": lat,
        "value": value,
        "unit": "",
        "runs": [value],
        "sample": {"server": {}, "cpu_s": {}, **sample},
    }


def by_name(targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in targets}


def test_cold_read_is_measured_against_the_lower_ceiling_and_the_best_peer() -> None:
    rows = [
        row("ceiling", "boto3_ranged_best", 1400.0),
        row("ceiling", "passthrough_first", 800.0, lat=None),  # local: no latency
        row("wsfuse", "seq_cold", 640.0),
        row("s3fs", "seq_cold", 400.0),
        row("rclone", "seq_cold", 300.0),
    ]
    t = by_name(report.targets(rows, 20.0))
    cold = t["cold seq read / min(boto3 ranged, passthrough)"]
    assert (cold["value"], cold["met"]) == (0.8, True)  # 640 / min(1400, 800)
    assert "passthrough_first" in cold["detail"]
    peer = t["cold seq read / best peer"]
    assert (peer["value"], peer["met"]) == (1.6, True)  # against s3fs, the faster peer
    assert "s3fs" in peer["detail"]


def test_each_latency_block_is_measured_against_the_local_ceilings_of_its_own_block() -> None:
    """Since session 9 the passthrough is measured again in every latency block (rows tagged
    with the block's latency): the 20 ms targets use the 20 ms block's passthrough."""
    rows = [
        row("ceiling", "boto3_ranged_best", 1400.0, lat=0.0),
        row("ceiling", "boto3_ranged_best", 1400.0),
        row("ceiling", "passthrough_first", 1000.0, lat=0.0),
        row("ceiling", "passthrough_first", 800.0),
        row("wsfuse", "seq_cold", 900.0, lat=0.0),
        row("wsfuse", "seq_cold", 640.0),
    ]
    at = {lat: by_name(report.targets(rows, lat)) for lat in (0.0, 20.0)}
    name = "cold seq read / min(boto3 ranged, passthrough)"
    assert at[0.0][name]["value"] == 0.9  # 900 / 1000
    assert at[20.0][name]["value"] == 0.8  # 640 / 800


def test_a_ceiling_that_was_not_measured_is_named_beside_the_one_used() -> None:
    rows = [row("ceiling", "boto3_ranged_best", 1400.0), row("wsfuse", "seq_cold", 1200.0)]
    cold = by_name(report.targets(rows, 20.0))["cold seq read / min(boto3 ranged, passthrough)"]
    assert cold["value"] == pytest.approx(1200 / 1400, abs=1e-3)
    assert "boto3_ranged_best; not measured: passthrough_first" in cold["detail"]


def test_times_are_lower_is_better_and_missing_numbers_make_no_row() -> None:
    rows = [
        row("ceiling", "boto3_list", 4.0),
        row("wsfuse", "list_cold", 5.0),  # 1.25x the LIST: missed
        row("ceiling", "passthrough_list_warm", 0.2, lat=None),
        row("wsfuse", "list_warm", 0.1),
    ]
    t = by_name(report.targets(rows, 20.0))
    assert (t["ls -l cold / raw paginated LIST (time)"]["met"]) is False
    assert t["ls -l cold / raw paginated LIST (time)"]["value"] == 1.25
    assert (t["ls -l warm / passthrough (time)"]["met"]) is True
    assert "1 GiB write until close / boto3 multipart (issue 4)" not in t  # nothing measured


def test_a_target_of_a_group_that_ran_without_a_number_is_a_row_not_met() -> None:
    """A failed workload or a ceiling that was not measured must show up as a miss, not
    shrink the count; targets of groups (or peers) that did not run stay out."""
    rows = [
        row("ceiling", "boto3_ranged_best", 1400.0),
        row("wsfuse", "seq_cold", 1200.0),
        row("ceiling", "boto3_multipart_1g", 400.0),
    ]
    ran = {"groups": ["seq", "write"], "filesystems": ["wsfuse", "s3fs"]}
    t = by_name(report.targets(rows, 20.0, ran))
    peer = t["cold seq read / best peer"]  # s3fs was mounted but has no number
    assert (peer["value"], peer["met"]) == (None, False)
    assert peer["detail"].startswith("not measured:")
    write = t["1 GiB write until in bucket / boto3 multipart"]  # wsfuse's write failed
    assert (write["value"], write["met"]) == (None, False)
    traffic = t["cold seq read: bytes from S3 / bytes read"]  # no bytes recorded
    assert traffic["met"] is False
    assert t["daemon peak RSS (MiB)"]["met"] is False  # no RSS row
    assert not any(name.startswith(("small files", "ls -l", "random")) for name in t)
    assert "small files name order, 1 reader / rclone" not in t
    only_wsfuse = by_name(report.targets(rows, 20.0, {**ran, "filesystems": ["wsfuse"]}))
    assert "cold seq read / best peer" not in only_wsfuse  # no peer was mounted
    no_ceilings = by_name(
        report.targets([row("wsfuse", "seq_cold", 1200.0)], 20.0, {**ran, "no_ceilings": True})
    )
    assert "1 GiB write until in bucket / boto3 multipart" not in no_ceilings  # none measured
    assert "disk-cache re-read / passthrough" not in no_ceilings
    text = report.markdown(
        {
            "meta": {
                "timestamp": "t",
                "cpus": 2,
                "kernel": "k",
                "commit": "c",
                "dirty": False,
                "repeat": 1,
                "command": "bench/run",
                "latencies_ms": [20.0],
            },
            "rows": rows,
            "targets": list(t.values()),
        }
    )
    assert "| 1 GiB write until in bucket / boto3 multipart | - | ≥ 0.8 | not measured:" in text


def test_traffic_bounds_count_bytes_from_the_server_per_byte_read() -> None:
    mib = 1 << 20
    rows = [
        row(
            "wsfuse",
            "seq_cold",
            500.0,
            bytes=1024 * mib,
            server={"GET": {"requests": 128, "bytes": 1200 * mib}},
        ),
        row(
            "wsfuse",
            "fio_rand_4k",
            40.0,
            ops=100,
            mib_blocks_touched=80,  # some reads shared a block: 90 MiB fetched for 80 is waste
            server={"GET": {"requests": 90, "bytes": 90 * mib}},
        ),
    ]
    rows += [
        row(
            "wsfuse",
            "small_cold_shuffled_8",
            300.0,
            ops=200,
            bytes=200 * 128 * 1024,
            server={"GET": {"requests": 210, "bytes": 205 * 128 * 1024}},
        ),
        row(
            "wsfuse",
            "fio_rand_1m",
            90.0,
            ops=50,
            server={"GET": {"requests": 60, "bytes": 60 * mib}},
        ),
    ]
    t = by_name(report.targets(rows, 20.0))
    over = t["cold seq read: bytes from S3 / bytes read"]
    assert over["value"] == pytest.approx(1200 / 1024, abs=1e-3) and over["met"] is False
    rand = t["random 4 KiB: MiB from S3 per read (≤ one 1 MiB block)"]
    assert (rand["value"], rand["met"]) == (0.9, True)
    touched = t["random 4 KiB: MiB from S3 / distinct 1 MiB blocks read"]
    assert (touched["value"], touched["met"]) == (1.125, False)
    rand1m = t["random 1 MiB: MiB from S3 per read (≤ one 1 MiB block)"]
    assert (rand1m["value"], rand1m["met"]) == (1.2, False)
    shuffled = t["small files shuffled x8: bytes from S3 / bytes read"]
    assert (shuffled["value"], shuffled["met"]) == (1.025, True)
    wasted = t["small files shuffled x8: GETs per file read (no wasted request)"]
    assert (wasted["value"], wasted["met"]) == (1.05, False)


def test_the_reported_run_renders_with_the_targets_it_recorded() -> None:
    # The run `run-latest.md` reports (newer partial runs may sit beside it).
    stamp = (RESULTS / "run-latest.md").read_text().splitlines()[0].rsplit(" ", 1)[-1]
    result = json.loads((RESULTS / f"run-{stamp}.json").read_text())
    text = report.markdown(result)
    assert "### Targets at 20 ms" in text
    recomputed = by_name(report.targets(result["rows"], 20.0, result["meta"]))
    for saved in result["targets"]:
        if saved["latency_ms"] != 20.0:
            continue
        again = recomputed[saved["target"]]
        assert (again["value"], again["met"]) == (saved["value"], saved["met"])
        assert saved["target"] in text


def test_traffic_of_other_keys_is_shown_apart_from_the_workloads_own() -> None:
    """A peer's late uploads of an earlier workload's file are counted "elsewhere" by the
    server; the cell says so instead of adding them to the workload's numbers."""
    own = {"total": {"requests": 1000, "bytes": 0, "received": 62 * report.MiB}}
    row = {"sample": {"server": own}}
    assert report.traffic(row) == " (1000 req, 0 MiB, 62 MiB up)"
    late = {"requests": 64, "bytes": 0, "received": 2048 * report.MiB}
    row = {"sample": {"server": {**own, "elsewhere": late}}}
    assert report.traffic(row) == (
        " (1000 req, 0 MiB, 62 MiB up; other keys meanwhile: 64 req, 2048 MiB up)"
    )
    # another key's read-ahead shows as downloaded MiB; a few bytes of answers do not
    late = {"requests": 5, "bytes": 24 * report.MiB, "received": 0}
    row = {"sample": {"server": {**own, "elsewhere": late}}}
    assert report.traffic(row).endswith("; other keys meanwhile: 5 req, 24 MiB)")
    row = {"sample": {"server": {**own, "elsewhere": {"requests": 2, "bytes": 300}}}}
    assert report.traffic(row).endswith("; other keys meanwhile: 2 req)")
