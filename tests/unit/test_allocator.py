"""The daemon's malloc tuning applies on glibc (the C library of every supported platform)."""

from __future__ import annotations

import subprocess
import sys


def test_tune_allocator_applies_every_setting_on_glibc() -> None:
    # In a child: the settings last for the life of the process that makes them.
    code = "from wsfuse.allocator import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
