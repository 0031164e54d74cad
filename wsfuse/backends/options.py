"""Backend options shared by every command (`--endpoint-url`, `--region`, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsfuse.backends.retry import RetryPolicy

AddressingStyle = Literal["auto", "path", "virtual"]
UploadChecksums = Literal["crc32c", "off"]


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """How to reach the store. Credentials are never here: they come from the standard chains
    (boto3's, Google ADC), which refresh themselves on long-lived mounts."""

    endpoint_url: str | None = None  # S3 endpoint, or the GCS API endpoint (emulators)
    region: str | None = None
    profile: str | None = None  # AWS profile name
    addressing_style: AddressingStyle = "auto"
    provider: str | None = None  # "s3" or "gcs", for a bare bucket name in the environment
    # S3: a CRC32C per upload that the store verifies, instead of a SHA-256 of the body in
    # the signature; "off" for S3-compatible stores that refuse x-amz-checksum-* headers
    upload_checksums: UploadChecksums = "crc32c"
    # Connection pool = the most requests in flight; sized to the prefetcher's and uploader's
    # parallelism (16 ranged GETs + 8 part uploads) with headroom.
    max_connections: int = 32
    # A TCP connect to a live endpoint takes milliseconds; 5 s means "unreachable".
    connect_timeout: float = 5.0
    # Time between bytes: S3's time-to-first-byte is tens of ms, a 99.9th percentile of a few
    # seconds; 30 s means "stuck", and bounds how long a cancelled worker thread lingers.
    read_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
