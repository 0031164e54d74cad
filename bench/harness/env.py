"""Paths, units and the environment every benchmark child runs with.

The environment is scrubbed once at import: fake credentials (the local server does not check
them), no proxies (network only to 127.0.0.1), no instance-metadata lookups.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
GiB = 1 << 30
KiB = 1 << 10
BUCKET = "bench"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
RESULTS = ROOT / "bench" / "results"
ACCESS_KEY = "wsfuse-bench"
SECRET_KEY = "wsfuse-bench-secret"

ENV = {
    **os.environ,
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
ENV.pop("AWS_PROFILE", None)
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    ENV.pop(_name, None)
os.environ.update({k: v for k, v in ENV.items() if k.startswith(("AWS_", "NO_", "no_"))})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """`1G`, `128K`, `4MiB`, `1000` -> bytes."""
    units = {"K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
