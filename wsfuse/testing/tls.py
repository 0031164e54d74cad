"""A self-signed certificate for https://127.0.0.1, for the test servers' HTTPS mode (real S3
endpoints are HTTPS). Made by the `openssl` command: no Python dependency for it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed_certificate(directory: Path, days: int = 2) -> tuple[Path, Path]:
    """Write `cert.pem` and `key.pem` (RSA 2048, CN and IP SAN 127.0.0.1) into `directory`;
    returns (certificate, key). Raises FileNotFoundError when there is no openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("the openssl command is needed to make a certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days)),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
