"""Which commit (and whether the tree was dirty) a result was measured on."""

from __future__ import annotations

import subprocess

from bench.harness.env import ROOT


def git_state() -> tuple[str, bool]:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                check=False,
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        return "unknown", False
    return rev or "unknown", dirty
