"""The bench's meter: machine-wide I/O wait and steal are recorded beside the processes' CPU
and never counted as our processes' work (which would hide other sessions' load)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench.harness import meter as meter_module
from bench.harness.meter import NOT_PROCESSES, Meter, Sample


class _Server:
    """What Meter needs of the bench's S3 server: a pid to read CPU from, and request stats."""

    pid = os.getpid()

    def reset(self) -> None:
        pass

    def stats(self) -> dict[str, dict[str, int]]:
        return {}

    def settled_stats(
        self, quiet: float = 0.5, prefixes: tuple[str, ...] = ()
    ) -> tuple[dict[str, dict[str, int]], float]:
        return {}, 0.0


def test_waits_are_recorded_and_kept_out_of_our_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter(
        [
            {"machine_busy": 100.0, "iowait": 10.0, "steal": 1.0},
            {"machine_busy": 104.0, "iowait": 12.5, "steal": 1.75},
        ]
    )
    monkeypatch.setattr(meter_module, "machine_cpu", lambda: next(readings))
    m: Any = Meter(_Server(), None)  # type: ignore[arg-type]
    with m:
        end = time.process_time() + 0.05
        while time.process_time() < end:  # some CPU of our own, so the sums are not all 0
            pass
    cpu = m.fill(Sample(bytes=1, seconds=m.elapsed)).cpu
    assert cpu["iowait"] == pytest.approx(2.5)
    assert cpu["steal"] == pytest.approx(0.75)
    assert cpu["machine_busy"] == pytest.approx(4.0)
    ours = sum(v for k, v in cpu.items() if k not in NOT_PROCESSES | {"others"})
    assert ours > 0
    assert cpu["others"] == pytest.approx(max(0.0, cpu["machine_busy"] - ours))


def test_machine_cpu_reads_proc_stat_once_for_all_three() -> None:
    from bench.harness.procs import machine_busy, machine_cpu

    first = machine_cpu()
    assert set(first) == {"machine_busy", "iowait", "steal"}
    assert all(v >= 0 for v in first.values())
    later = machine_cpu()
    assert all(later[k] >= first[k] for k in first)  # counters since boot only grow
    assert machine_busy()[0] >= later["machine_busy"]  # the same count, read later


def _settling_server(totals: list[int]) -> tuple[Any, list[float]]:
    """A Server whose request total moves through `totals` (then stays), on a fake clock."""
    from pathlib import Path

    from bench.harness.server import Server

    server: Any = Server(Path("/nonexistent.log"))
    readings = iter(totals)
    last = [totals[0]]

    server.asked_prefixes = []

    def stats(reset: bool = False, prefixes: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
        server.asked_prefixes.append(prefixes)
        last[0] = next(readings, last[0])
        return {"total": {"requests": last[0], "bytes": 0, "received": 0}}

    now = [0.0]
    server.stats = stats
    return server, now


def test_traffic_is_read_once_the_server_has_been_quiet() -> None:
    """Read-ahead still in flight when a workload returns is counted with it: the stats are
    read again until two readings `quiet` s apart agree."""
    server, now = _settling_server([10, 14, 15, 15])
    stats, waited = server.settled_stats(
        quiet=0.3, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0]
    )
    assert stats["total"]["requests"] == 15
    assert waited == pytest.approx(0.9)


def test_traffic_that_never_stops_is_read_after_the_longest_wait() -> None:
    server, now = _settling_server(list(range(1000)))
    stats, waited = server.settled_stats(
        quiet=0.5,
        max_wait=2.0,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    assert waited == pytest.approx(2.0)
    assert stats["total"]["requests"] == 4  # the last reading


def test_a_settle_over_a_second_is_recorded_beside_the_traffic() -> None:
    class Slow(_Server):
        def settled_stats(
            self, quiet: float = 0.5, prefixes: tuple[str, ...] = ()
        ) -> tuple[dict[str, dict[str, int]], float]:
            return {"total": {"requests": 3}}, 2.5

    m: Any = Meter(Slow(), None)  # type: ignore[arg-type]
    with m:
        pass
    sample = m.fill(Sample())
    assert sample.server == {"total": {"requests": 3}}
    assert sample.extra["traffic_settle_s"] == 2.5


def test_a_workload_counts_only_its_own_keys_when_it_names_them() -> None:
    """The prefixes a write workload names reach the server's stats at every reading, and
    through the meter: what another key's late upload costs is reported apart."""
    server, now = _settling_server([5, 6, 8, 8])
    stats, _ = server.settled_stats(
        quiet=0.3,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
        prefixes=("c-run",),
    )
    assert stats["total"]["requests"] == 8
    assert server.asked_prefixes == [("c-run",)] * 4

    asked: list[tuple[str, ...]] = []

    class Named(_Server):
        def settled_stats(
            self, quiet: float = 0.5, prefixes: tuple[str, ...] = ()
        ) -> tuple[dict[str, dict[str, int]], float]:
            asked.append(prefixes)
            return {"total": {"requests": 1}, "elsewhere": {"requests": 9}}, 0.3

    m: Any = Meter(Named(), None)  # type: ignore[arg-type]
    with m:
        pass
    sample = m.fill(Sample(), prefixes=("w-run/ckpt.bin",))
    assert asked == [("w-run/ckpt.bin",)]
    assert sample.server["elsewhere"] == {"requests": 9}
