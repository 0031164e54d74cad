"""Differential, model-based test of the write path: random sequences of POSIX operations run on
the mount and on a reference directory (a plain local directory, the model), and after EVERY
step the results, the errno, the whole tree (kinds, modes, sizes, contents, link targets) and
every open handle (fstat, contents read through it) must agree. Handles stay open across steps
on both sides (parallel fds), so files are written, renamed over, truncated and unlinked while
open. After fsync() or close() of a writable handle returns 0, the object at the file's path must
hold exactly its bytes; at the end of each case, with every handle closed, the bucket must be
the reference tree by the s3fs conventions (files, `dir/` markers, symlink objects, `mode`
metadata, and no stray key); at the end of the test a fresh mount with an EMPTY cache must show
every case's tree again.

Self-test: the `selftest` variants run the very same harness with a plain directory in place of
the mount (and that directory read as the bucket), so both sides are local and everything must
agree; `WSFUSE_MODEL_SELFTEST=1` turns every variant into a self-test. `test_harness_*` prove the
harness does catch divergences.

Mount variants (why two TTLs):
- `mount-ttl60` (the default `--metadata-ttl`): listings and attributes come from wsfuse's
  caches and the kernel's, so a single writer must see its own changes with no help from the
  store (a stale listing, size or negative entry after rename/unlink/truncate shows here).
  Cheap per step (~10 ms), so it gets the random walk too.
- `mount-ttl0` (close-to-open): every lookup revalidates at the bucket, so each step sees what
  the store really holds (a key left behind or missing shows at once); a step costs several
  times more (~70 ms), so it gets fewer, shorter examples.

Knobs: WSFUSE_MODEL_SCALE multiplies the number of Hypothesis examples (default 1: 50 examples
of 13-40 ops; 20 of 10-30 on mount-ttl0), WSFUSE_MODEL_WALK_OPS / WSFUSE_MODEL_WALK_SECONDS
bound the random walk (default 3000 ops / 40 s), WSFUSE_MODEL_SEED is its seed (default 1),
WSFUSE_MODEL_SHRINK_SECONDS bounds the shrinking of a failed walk (default 60 s).
Reproduce a Hypothesis failure from the printed blob with `@reproduce_failure`, or just rerun:
the example database replays it first.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import FUSE_AVAILABLE
from tests.integration.posix_ops import (
    CHECKPOINT,
    CHOICES,
    OPS,
    PATHS,
    WEIGHTED_KINDS,
    Differential,
    DirStore,
    Divergence,
    Op,
    S3Store,
    Store,
    diff_signatures,
    is_handle_op,
    random_op,
    run_ops,
    shrink,
    signature,
)

SELFTEST = os.environ.get("WSFUSE_MODEL_SELFTEST") == "1"
SCALE = float(os.environ.get("WSFUSE_MODEL_SCALE", "1"))
# (examples, max ops per example) by variant; examples are scaled by WSFUSE_MODEL_SCALE.
BUDGET = {"selftest": (50, 40), "mount-ttl60": (50, 40), "mount-ttl0": (20, 30)}
WALK_OPS = int(os.environ.get("WSFUSE_MODEL_WALK_OPS", "3000"))
WALK_SECONDS = float(os.environ.get("WSFUSE_MODEL_WALK_SECONDS", "40"))
WALK_SEED = int(os.environ.get("WSFUSE_MODEL_SEED", "1"))
SHRINK_SECONDS = float(os.environ.get("WSFUSE_MODEL_SHRINK_SECONDS", "60"))


def _op(kind: str) -> st.SearchStrategy[Op]:
    args = st.tuples(*(st.sampled_from(CHOICES[a]) for a in OPS[kind]))
    return args.map(lambda a: Op(kind, a))


OP = st.sampled_from(WEIGHTED_KINDS).flatmap(_op)


@dataclass
class Target:
    """Where the operations run (`root`), how to read the bucket behind it, and how to get a
    fresh view of it (a remount with an empty cache; in self-test mode the same directory)."""

    label: str
    root: Path
    store: Store
    remount: Callable[[], Path]


@pytest.fixture(
    params=["selftest", pytest.param("mount-ttl0", marks=pytest.mark.slow), "mount-ttl60"]
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = "selftest" if SELFTEST else request.param
    if kind == "selftest":
        root = tmp_path / "under-test"
        root.mkdir()
        yield Target("selftest", root, DirStore(root), lambda: root)
        return
    if not FUSE_AVAILABLE:
        pytest.skip("needs /dev/fuse and fusermount3 (the selftest variant ran without them)")
    bucket = request.getfixturevalue("bucket")
    mounter = request.getfixturevalue("mounter")
    ttl = kind.removeprefix("mount-ttl")
    m = mounter("--metadata-ttl", ttl)
    store = S3Store(bucket.server.client(), bucket.name)
    remounts = itertools.count()

    def remount() -> Path:
        fresh = mounter("--metadata-ttl", ttl, cache_dir=tmp_path / f"empty-cache{next(remounts)}")
        return fresh.path

    yield Target(kind, m.path, store, remount)


def _case_dirs(target: Target, ref: Path, name: str) -> tuple[Path, Path]:
    a, b = target.root / name, ref / name
    os.mkdir(b)
    try:
        os.mkdir(a)
    except OSError as exc:
        raise AssertionError(f"mkdir of the case directory on {target.label}: {exc!r}") from exc
    return a, b


def _check_remount(target: Target, ref: Path, cases: list[str]) -> None:
    """A new mount with an empty cache (no data, no listings) shows every case's tree."""
    fresh = target.remount()
    for name in cases:
        sig_a, sig_b = signature(fresh / name), signature(ref / name)
        assert sig_a == sig_b, f"{name} after remount:\n" + "\n".join(diff_signatures(sig_a, sig_b))


def test_random_op_sequences_match_local_posix(target: Target, tmp_path: Path) -> None:
    ref = tmp_path / "reference"
    ref.mkdir()
    counter = itertools.count()
    cases: list[str] = []

    examples, steps_max = BUDGET[target.label]

    @settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    # at least a third of the maximum: Hypothesis otherwise favours very short lists
    @given(ops=st.lists(OP, min_size=steps_max // 3, max_size=steps_max))
    def run(ops: list[Op]) -> None:
        name = f"case{next(counter)}"
        steps.append(run_ops(_case_dirs(target, ref, name), ops, target.store, f"{name}/"))
        cases.append(name)

    steps: list[int] = []
    run()
    print(f"{target.label}: {len(steps)} cases, {sum(steps)} steps")
    _check_remount(target, ref, cases)


# Divergences the random walk found, shrunk by hand to a few ops; each runs on every variant.
REGRESSIONS: dict[str, list[Op]] = {
    # Issue 4 b (the walk showed 0o600 for 0o700 after ~1,800 ops): a removed directory's inode
    # kept its last path; a live directory later at that path ("a/b", from the rename) did not
    # move alone when its parent was renamed: the removed one took its place and its old mode.
    "renamed-parent-keeps-live-child-mode": [
        Op("mkdir", ("b", 0o700)),
        Op("mkdir", ("a", 0o755)),
        Op("mkdir", ("a/b", 0o600)),
        Op("rmdir", ("a/b",)),
        Op("rename", ("b", "a/b")),
        Op("rename", ("a", "é x")),
        Op("listdir", ("é x",)),
        Op("stat", ("é x/b",)),
    ],
    # The same with files: an unlinked file's inode must not take the place of the live file
    # renamed onto its name.
    "renamed-file-keeps-its-mode": [
        Op("open", ("b", "w", 0o600)),
        Op("close", (0,)),
        Op("open", ("a", "w", 0o644)),
        Op("close", (0,)),
        Op("unlink", ("a",)),
        Op("rename", ("b", "a")),
        Op("rename", ("a", "é x")),
        Op("listdir", ("é x",)),
        Op("stat", ("é x",)),
    ],
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_regressions_match_local_posix(target: Target, tmp_path: Path, case: str) -> None:
    ref = tmp_path / "reference"
    ref.mkdir()
    run_ops(_case_dirs(target, ref, "case"), REGRESSIONS[case], target.store, "case/")
    _check_remount(target, ref, ["case"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    ["selftest", "mount-ttl60"],
    indirect=True,
)
@pytest.mark.parametrize("seed", [WALK_SEED])
def test_long_random_walk_matches_local_posix(target: Target, tmp_path: Path, seed: int) -> None:
    """One long seeded walk (thousands of ops in self-test mode; on a mount as many as fit in
    WSFUSE_MODEL_WALK_SECONDS), closing every handle and checking the bucket every 200 ops. On
    a divergence the ops are replayed on fresh directories and shrunk (delta debugging, for at
    most WSFUSE_MODEL_SHRINK_SECONDS) to a short sequence that still diverges."""
    ref = tmp_path / "reference"
    ref.mkdir()
    roots = _case_dirs(target, ref, "walk")
    rng = random.Random(seed)
    deadline = time.monotonic() + WALK_SECONDS
    ops: list[Op] = []
    try:
        with Differential(roots, store=target.store, key_prefix="walk/") as d:
            for i in range(WALK_OPS):
                if time.monotonic() > deadline:
                    break
                op = random_op(rng)
                while not d.handles and is_handle_op(op):
                    op = random_op(rng)  # a handle op with no handle open would do nothing
                ops.append(op)
                d.apply(op)
                if i % 200 == 199:
                    ops.append(CHECKPOINT)
                    d.apply(CHECKPOINT)
            ops.append(CHECKPOINT)
            d.apply(CHECKPOINT)
            done = d.steps
    except Divergence as exc:
        raise Divergence(f"{exc}\n\n{_shrunk(target, ref, ops)}") from None
    print(f"random walk (seed {seed}) on {target.label}: {done} ops")
    assert done >= min(WALK_OPS, 100), f"only {done} ops in {WALK_SECONDS}s"
    _check_remount(target, ref, ["walk"])


def _shrunk(target: Target, ref: Path, ops: list[Op]) -> str:
    counter = itertools.count()
    last = [""]  # the divergence of the last failing candidate: the one `shrink` returns

    def fails(candidate: list[Op]) -> bool:
        name = f"shrink{next(counter)}"
        try:
            run_ops(_case_dirs(target, ref, name), candidate, target.store, f"{name}/")
        except Divergence as exc:
            last[0] = str(exc).split("\n  after ")[0]
            return True
        return False

    if not fails(ops):
        return f"the {len(ops)} ops do not diverge again on fresh directories (not shrunk)"
    small = shrink(ops, fails, time.monotonic() + SHRINK_SECONDS)
    listing = "\n".join(f"    {op!r}" for op in small)
    return (
        f"shrunk from {len(ops)} to {len(small)} ops that diverge on fresh directories "
        f"({next(counter)} replays):\n{listing}\n  which gives: {last[0]}"
    )


# ------------------------------------------------------------------ the harness catches bugs


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(parents=True)
    b.mkdir()
    return a, b


def test_harness_catches_wrong_content_errno_and_stale_handles(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with Differential((a, b)) as d:
        d.apply(Op("open", ("a", "w+", 0o644)))
        d.apply(Op("write", (0, 100, 1)))
        # content differs on one side only (a write path that lost a byte)
        with open(a / "a", "r+b") as f:
            f.seek(50)
            f.write(b"\0")
        with pytest.raises(Divergence, match="trees differ"):
            d.check()
    a, b = _pair(tmp_path / "2")
    with Differential((a, b)) as d:
        (a / "x").mkdir()  # rmdir answers differently: ENOTEMPTY vs ENOENT
        (a / "x" / "y").write_bytes(b"")
        with pytest.raises(Divergence, match="ENOTEMPTY"):
            d.apply(Op("rmdir", ("x",)))
    a, b = _pair(tmp_path / "3")
    with Differential((a, b)) as d:
        d.apply(Op("open", ("a", "w+", 0o644)))
        d.apply(Op("write", (0, 10, 2)))
        d.apply(Op("unlink", ("a",)))
        # the handle under test loses the unlinked file's bytes (a write path that drops them)
        os.ftruncate(d.handles[0].fds[0], 0)
        with pytest.raises(Divergence, match="fstat of handle"):
            d.check()


def test_harness_catches_unsynced_and_stray_objects(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    bucket = tmp_path / "bucket"
    (bucket / "p").mkdir(parents=True)

    class LaggingStore(DirStore):
        """A bucket that does not get the bytes on close (a write path that uploads later)."""

    with Differential((a, b), store=LaggingStore(bucket), key_prefix="p/") as d:
        d.apply(Op("open", ("a", "w", 0o644)))
        d.apply(Op("write", (0, 10, 3)))
        with pytest.raises(Divergence, match="close returned 0 but the object"):
            d.apply(Op("close", (0,)))
    a, b = _pair(tmp_path / "2")
    (b / "f").write_bytes(b"x")
    (a / "f").write_bytes(b"x")
    (a / "stale").write_bytes(b"old")  # only in the "bucket": an unlinked file left behind
    # the bucket is `a` read s3fs-style (keys "a/..."), the reference is `b`
    with Differential((a, b), store=DirStore(tmp_path / "2"), key_prefix="a/") as d:
        with pytest.raises(Divergence, match="stray key 'a/stale'"):
            d.check_store()
        (a / "stale").unlink()
        os.chmod(a / "f", 0o600)  # a chmod that did not reach the reference... or the bucket
        with pytest.raises(Divergence, match="mode"):
            d.check_store()


def test_harness_selftest_random_walk_agrees(tmp_path: Path) -> None:
    """Quick, always-on: 800 random ops on two plain directories agree step by step (the
    harness has no false positives on the whole op vocabulary), and every kind of op ran with
    both outcomes (success and errno) so none is silently inert."""
    a, b = _pair(tmp_path)
    rng = random.Random(12345)
    seen: dict[str, set[str]] = {}
    with Differential((a, b), store=DirStore(tmp_path), key_prefix="a/") as d:
        for _ in range(800):
            op = random_op(rng)
            before = len(d.trace)
            d.apply(op)
            for line in d.trace[before:]:
                if line.startswith("  result: "):
                    seen.setdefault(op.kind, set()).add("err" if "ERR" in line else "ok")
        d.close_all()
        d.check_store()
    never_fail = {"close", "fsync", "lseek"}  # on an open fd, with offsets >= 0
    for kind in set(OPS) - {"checkpoint"}:
        want = {"ok"} if kind in never_fail else {"ok", "err"}
        assert seen.get(kind) == want, (kind, seen.get(kind))


def test_harness_shrink_finds_the_minimal_failing_ops() -> None:
    ops = [Op("stat", (p,)) for p in PATHS] * 3
    culprits = {Op("stat", ("b",)), Op("stat", ("a/b",))}

    def fails(candidate: list[Op]) -> bool:
        return culprits <= set(candidate)

    small = shrink(ops, fails, time.monotonic() + 30)
    assert len(small) == 2
    assert set(small) == culprits
