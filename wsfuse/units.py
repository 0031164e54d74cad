"""Parsing of human sizes and durations (`50G` = 50 GiB: binary units, as `df -h` prints)."""

from __future__ import annotations

import re

from wsfuse.errors import UserError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: str | int) -> int:
    """`"50G"` → 53687091200. Accepts K/M/G/T/P/E with optional `i`/`B`; a bare number is bytes."""
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise UserError(f"not a size: {text!r} (use a number with an optional unit: 512M, 50G, 2T)")
    number, unit, _ = m.groups()
    return int(float(number) * (1 << _SHIFT[unit.lower()]))


def format_size(n: int) -> str:
    """1536 → "1.5 KiB"; for logs and status output."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
