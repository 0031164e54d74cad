"""bench/harness/procs.sigterm_as_interrupt: SIGTERM and SIGINT both unwind a benchmark run like
Ctrl-C (so it unmounts and stops what it started), even when the run was started in the
background by a shell that left SIGINT ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from bench.harness.procs import sigterm_as_interrupt
sigterm_as_interrupt()
try:
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    signal.pause()
except KeyboardInterrupt:
    print("unwound")
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_the_signal_unwinds_even_if_sigint_was_ignored_at_start(name: str) -> None:
    def ignore_sigint() -> None:  # what `cmd &` in a non-interactive shell does
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(ROOT)],
        preexec_fn=ignore_sigint,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.stdout.strip() == "unwound", done.stderr
