"""The order of a latency block: each workload group beside its own ceilings.

The targets are ratios, and on this shared 2-core VM the machine drifts over minutes (a noisy
neighbour, ext4's recently-deleted-inode scan after a clean-up, the first cold read of a
block): measured ten minutes apart, the same code's cold read against the passthrough moved
0.68-1.02 and the page-cache re-read 0.68-1.30 (docs/performance.md, sessions 9-10). So the
groups whose targets are ratios to a ceiling or a peer — the sequential reads and the 1 GiB
write — run as interleaved rounds: one repetition of the ceilings, then one of each filesystem,
again `seq_repeat` times, each round starting one place further along the list so that no one
is always first after the block's set-up (the cyclic order, and so each one's neighbour, stays
the same). Each row is the median over its rounds, as before; the pairs it is divided by were
measured in the same minutes.
The other groups run once per filesystem after their ceilings, as their targets are either
absolute (RSS, traffic) or measured against ceilings that do not drift as much (LIST, small
GETs at 20 ms latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.compare import ceilings, workloads
from bench.compare.context import Ctx
from bench.compare.data import BIG_KEY
from bench.compare.filesystems import FsSpec

#: Groups measured as interleaved rounds of ceilings and filesystems.
PAIRED = ("seq", "write")
PER_FS = {
    "random": workloads.random_reads,
    "small": workloads.small_files,
    "list": workloads.listing,
}
ROUND_RUNNERS = {"seq": workloads.sequential, "write": workloads.writes}
CEILING = "ceiling"

Guard = Callable[[str, Callable[[], None]], None]


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Round r starts r places along `names`: over len(names) rounds each takes every place."""
    n = len(names)
    return [[*names[r % n :], *names[: r % n]] for r in range(rounds)] if n else []


def run_group(
    ctx: Ctx,
    group: str,
    specs: Sequence[FsSpec],
    local_root: Path | None,
    guard: Guard,
) -> None:
    """One workload group of one latency block, with its ceilings (none when `local_root` is
    None and the group needs it, or with --no-ceilings)."""
    with_ceilings = not ctx.args.no_ceilings
    if group in PAIRED:
        steps = _round_ceilings(group, local_root) if with_ceilings else []
        by_name = {s.name: s for s in specs}
        names = ([CEILING] if steps else []) + list(by_name)
        for r, order in enumerate(rotations(names, ctx.args.seq_repeat)):
            for name in order:
                if name == CEILING:
                    # each ceiling its own step: a failed passthrough mount leaves the GETs
                    for what, step in steps:
                        guard(f"{what}, round {r + 1}", lambda step=step, r=r: step(ctx, r))
                else:
                    spec = by_name[name]
                    guard(
                        f"{name} {group}, round {r + 1}",
                        lambda spec=spec, r=r: ROUND_RUNNERS[group](ctx, spec, r),
                    )
        return
    if with_ceilings:
        _once_ceilings(ctx, group, local_root, guard)
    for spec in specs:
        guard(f"{spec.name} {group}", lambda spec=spec: PER_FS[group](ctx, spec))


def _round_ceilings(
    group: str, local_root: Path | None
) -> list[tuple[str, Callable[[Ctx, int], None]]]:
    """The ceilings of one round of a paired group, as (name, step) pairs."""
    if group == "seq":
        steps: list[tuple[str, Callable[[Ctx, int], None]]] = []
        if local_root is not None:
            steps.append(("local ceilings", lambda ctx, r: ceilings.seq_round(ctx, local_root, r)))
        return [*steps, ("boto3 GET ceilings", ceilings.boto3_get_round)]
    if local_root is None:
        return []
    return [
        ("boto3 write ceilings", lambda ctx, r: ceilings.write_round(ctx, local_root / BIG_KEY, r))
    ]


def _once_ceilings(ctx: Ctx, group: str, local_root: Path | None, guard: Guard) -> None:
    if group == "random":
        guard("boto3 random 1 MiB GETs", lambda: ceilings.boto3_random_1m(ctx))
    elif group == "small":
        guard("boto3 small ceilings", lambda: ceilings.boto3_small(ctx))
    elif group == "list":
        guard("boto3 LIST ceiling", lambda: ceilings.boto3_list(ctx))
        if local_root is not None:
            guard("passthrough listing", lambda: ceilings.local_listing(ctx, local_root))
