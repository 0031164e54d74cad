"""Benchmarks: `bench/run` (side by side with peers and ceilings), `read_bench.py`; the shared
process/mount/server plumbing lives in `bench.harness`."""
