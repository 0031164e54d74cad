"""bench/compare/rounds and Ctx.add: the sequential reads and the 1 GiB write are measured as
interleaved rounds of the ceilings and the filesystems (each round starting one place further
along), and every round's run lands in the same row, whose value is the median over the rounds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.compare import rounds
from bench.compare.context import Ctx
from bench.harness.meter import Sample


def make_ctx(tmp_path: Path, **args: Any) -> Ctx:
    defaults = {"no_ceilings": False, "seq_repeat": 3, "repeat": 1, "groups": ["seq"]}
    ns = argparse.Namespace(**{**defaults, **args})
    server = SimpleNamespace(latency_ms=20.0)
    return Ctx(ns, tmp_path, server, None, None, 0.0)  # type: ignore[arg-type]


def test_each_round_starts_one_place_further_along() -> None:
    assert rounds.rotations(["ceiling", "wsfuse", "s3fs"], 4) == [
        ["ceiling", "wsfuse", "s3fs"],
        ["wsfuse", "s3fs", "ceiling"],
        ["s3fs", "ceiling", "wsfuse"],
        ["ceiling", "wsfuse", "s3fs"],
    ]
    assert rounds.rotations([], 3) == []


def test_runs_added_round_by_round_make_one_row_with_their_median(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    for v in (300.0, 100.0, 200.0):
        ctx.add("wsfuse", "seq_cold", [(v, Sample(seconds=1 / v))], "MB/s")
    rows = [r for r in ctx.results if r["workload"] == "seq_cold"]
    assert len(rows) == 1
    assert rows[0]["runs"] == [300.0, 100.0, 200.0]
    assert rows[0]["value"] == 200.0
    assert rows[0]["sample"]["seconds"] == round(1 / 200, 4)  # the median run's sample
    ctx.add("wsfuse", "seq_cold", [(400.0, Sample())], "MB/s")
    assert ctx.results[0]["value"] == 250.0  # even count: the mean of the middle two


def test_a_row_is_per_latency_block_and_replace_starts_it_over(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx.add("ceiling", "boto3_ranged_best", [(1000.0, Sample())], "MB/s", by_threads={8: 1000})
    ctx.server.latency_ms = 0.0  # type: ignore[misc]
    ctx.add("ceiling", "boto3_ranged_best", [(2000.0, Sample())], "MB/s")
    assert [(r["latency_ms"], r["value"]) for r in ctx.results] == [(20.0, 1000.0), (0.0, 2000.0)]
    ctx.add(
        "ceiling", "boto3_ranged_best", [(1500.0, Sample())], "MB/s", replace=True, by_threads={}
    )
    assert [(r["latency_ms"], r["value"]) for r in ctx.results] == [(20.0, 1000.0), (0.0, 1500.0)]
    assert ctx.results[1]["runs"] == [1500.0]


def trace_group(
    ctx: Ctx, group: str, monkeypatch: pytest.MonkeyPatch, local_root: Path | None
) -> list[str]:
    calls: list[str] = []
    monkeypatch.setitem(
        rounds.ROUND_RUNNERS, group, lambda ctx, spec, r: calls.append(f"{spec.name}:{r}")
    )
    monkeypatch.setattr(
        rounds,
        "_round_ceilings",
        lambda g, root: [("ceilings", lambda ctx, r: calls.append(f"ceiling:{r}"))],
    )
    guarded: list[str] = []

    def guard(what: str, fn: Callable[[], None]) -> None:
        guarded.append(what)
        fn()

    specs = [SimpleNamespace(name="wsfuse"), SimpleNamespace(name="s3fs")]
    rounds.run_group(ctx, group, specs, local_root, guard)  # type: ignore[arg-type]
    assert len(guarded) == len(calls)  # every step runs under the guard (time, failures)
    return calls


def test_paired_groups_interleave_the_ceilings_and_every_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = trace_group(make_ctx(tmp_path), "seq", monkeypatch, tmp_path)
    assert calls == [
        "ceiling:0", "wsfuse:0", "s3fs:0",
        "wsfuse:1", "s3fs:1", "ceiling:1",
        "s3fs:2", "ceiling:2", "wsfuse:2",
    ]  # fmt: skip


def test_no_ceilings_leaves_only_the_filesystems_in_the_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(tmp_path, no_ceilings=True)
    calls = trace_group(ctx, "write", monkeypatch, tmp_path)
    assert calls == ["wsfuse:0", "s3fs:0", "s3fs:1", "wsfuse:1", "wsfuse:2", "s3fs:2"]


def test_other_groups_run_once_per_filesystem_after_their_ceilings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setitem(rounds.PER_FS, "list", lambda ctx, spec: calls.append(spec.name))
    monkeypatch.setattr(rounds.ceilings, "boto3_list", lambda ctx: calls.append("LIST"))
    monkeypatch.setattr(
        rounds.ceilings, "local_listing", lambda ctx, root: calls.append("passthrough")
    )
    specs = [SimpleNamespace(name="wsfuse"), SimpleNamespace(name="rclone")]
    rounds.run_group(make_ctx(tmp_path), "list", specs, tmp_path, lambda w, fn: fn())  # type: ignore[arg-type]
    assert calls == ["LIST", "passthrough", "wsfuse", "rclone"]


def test_a_failed_local_ceiling_leaves_the_get_ceilings_of_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def broken_passthrough(ctx: Ctx, root: Path, r: int) -> None:
        raise OSError("mount failed")

    monkeypatch.setattr(rounds.ceilings, "seq_round", broken_passthrough)
    monkeypatch.setattr(rounds.ceilings, "boto3_get_round", lambda ctx, r: calls.append(f"GET:{r}"))
    monkeypatch.setitem(rounds.ROUND_RUNNERS, "seq", lambda ctx, spec, r: None)
    failures: list[str] = []

    def guard(what: str, fn: Callable[[], None]) -> None:  # as __main__._guard: record, go on
        try:
            fn()
        except OSError:
            failures.append(what)

    rounds.run_group(make_ctx(tmp_path), "seq", [], tmp_path, guard)
    assert calls == ["GET:0", "GET:1", "GET:2"]
    assert failures == [f"local ceilings, round {r}" for r in (1, 2, 3)]


def test_random_measures_its_serial_get_ceiling_whatever_else_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fio reads one block at a time: its 1 MiB ceiling is serial random 1 MiB GETs, measured
    with the random group, not the parallel ranged GETs of the sequential rounds."""
    calls: list[str] = []
    monkeypatch.setattr(rounds.ceilings, "boto3_get_round", lambda ctx, r: calls.append(f"GET:{r}"))
    monkeypatch.setattr(rounds.ceilings, "boto3_random_1m", lambda ctx: calls.append("random"))
    monkeypatch.setitem(rounds.PER_FS, "random", lambda ctx, spec: calls.append(spec.name))
    specs = [SimpleNamespace(name="wsfuse")]
    for groups in (["seq", "random"], ["random"]):
        calls.clear()
        ctx = make_ctx(tmp_path, groups=groups)
        rounds.run_group(ctx, "random", specs, tmp_path, lambda w, fn: fn())  # type: ignore[arg-type]
        assert calls == ["random", "wsfuse"], groups


def test_groups_run_in_their_fixed_order_whatever_order_only_names_them() -> None:
    from bench.compare.__main__ import parse_args

    assert parse_args(["--only", "write,random,seq"]).groups == ["seq", "random", "write"]
