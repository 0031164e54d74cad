"""Logging for the CLI and the daemon: one format, levels by name, optional file."""

from __future__ import annotations

import logging
import os
import sys

from wsfuse.errors import UserError

LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str = "info", log_file: str | None = None) -> None:
    """Configure the root logger. The noisy HTTP libraries stay at WARNING unless debugging."""
    name = level.lower()
    if name not in LEVELS:
        raise UserError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    handler: logging.Handler
    try:
        handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    except OSError as exc:
        raise UserError(f"cannot open log file {log_file}: {exc.strerror}") from exc
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name.upper())
    # HTTP libraries log every request (botocore even every signature) at DEBUG: that costs
    # more than the request itself. They speak at WARNING unless WSFUSE_DEBUG_HTTP is set.
    quiet = logging.DEBUG if os.environ.get("WSFUSE_DEBUG_HTTP") else logging.WARNING
    for lib in ("botocore", "boto3", "urllib3", "s3transfer", "google", "werkzeug", "pyfuse3"):
        logging.getLogger(lib).setLevel(max(quiet, root.level))
