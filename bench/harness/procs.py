"""CPU and memory of processes and of the machine, read from /proc.

Other sessions share this machine's 2 cores: the benchmarks record the CPU seconds of every
party (server, daemon, reader, kernel threads) and of the whole machine, so a result says how
much of the machine was someone else's.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu(children: bool = False) -> float:
    """CPU seconds of this process; with `children`, plus those of the children it has waited
    for (fio), which include stopped daemons: take it only around workloads that stop none."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    if children:
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += ch.ru_utime + ch.ru_stime
    return total


def _cpu_ticks() -> list[int]:
    """The machine's `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal..."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    values = _cpu_ticks()
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time (already in user)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def machine_cpu() -> dict[str, float]:
    """From one reading of /proc/stat, seconds since boot (summed over cores): the machine
    busy, and its CPUs waiting for I/O or stolen by the hypervisor. A workload that slows
    down with none of its processes using more CPU shows up in the last two (the disk, or
    other tenants of the host)."""
    values = _cpu_ticks()
    busy = sum(values[:8]) - values[3] - values[4]
    return {
        "machine_busy": busy / CLK_TCK,
        "iowait": values[4] / CLK_TCK,
        "steal": values[7] / CLK_TCK,
    }


def kernel_threads_cpu() -> float:
    """CPU seconds of all kernel threads (writeback, softirq, ...) since they started."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & 0x00200000:  # PF_KTHREAD
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait` s) until the machine is nearly idle: other sessions may share
    its 2 cores. Returns the busy cores of the last 0.5 s sample."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, _ = machine_busy()
        time.sleep(0.5)
        b1, _ = machine_busy()
        busy = (b1 - b0) / 0.5
        if busy <= threshold or time.monotonic() > deadline:
            return busy
        time.sleep(0.5)


def vm_status(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in bytes; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    name, value, _unit = line.split()
                    out[name.rstrip(":")] = int(value) * 1024
    except OSError:
        pass
    return out


def drop_caches() -> None:
    """Write back and drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 20) -> None:
    """SIGTERM one child we started (by its PID), SIGKILL it if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sigterm_as_interrupt() -> None:
    """Make SIGTERM and SIGINT unwind like Ctrl-C, so `finally` blocks unmount and stop what
    we started. SIGINT too: a run started in the background by a non-interactive shell
    inherits SIGINT ignored, and Python then installs no handler for it."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
