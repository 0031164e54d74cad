"""Storage URIs, and how wsfuse picks one when none is given.

`s3://bucket[/prefix]`, `gs://bucket[/prefix]`, `file:///path` (a directory used as a bucket:
the embedded default) and `mem://name` (tests). With no URI: `$ANYSCALE_ARTIFACT_STORAGE` (a
full URI); else `$ANYSCALE_CLOUD_STORAGE_BUCKET` (a bare name is S3, with
`$ANYSCALE_CLOUD_STORAGE_BUCKET_REGION`, unless `--provider gcs`); else an embedded local bucket
under the user's data directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import platformdirs

from wsfuse.errors import UserError

Scheme = Literal["s3", "gs", "file", "mem"]
SCHEMES: tuple[Scheme, ...] = ("s3", "gs", "file", "mem")
_SCHEME_OF: dict[str, Scheme] = {s: s for s in SCHEMES}

# S3 and GCS bucket names: 3-63 (GCS: up to 222 with dots) lowercase letters, digits, dots,
# hyphens (GCS also underscores), starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class StorageURI:
    """A parsed storage location. `prefix` is "" or ends with "/"."""

    scheme: Scheme
    bucket: str  # bucket name; for file:// the directory path; for mem:// a name
    prefix: str = ""
    region: str | None = None  # from $ANYSCALE_CLOUD_STORAGE_BUCKET_REGION, when that is the source
    source: str = "argument"  # where the URI came from, for the log line

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.bucket}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


def parse_uri(text: str, *, source: str = "argument") -> StorageURI:
    """Parse `s3://b/p`, `gs://b/p`, `file:///dir`, `mem://name`; raise `UserError` with the fix."""
    if "://" not in text:
        raise UserError(
            f"not a storage URI: {text!r}; use s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], "
            "file:///PATH or mem://NAME"
        )
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "gcs":
        scheme = "gs"
    if scheme not in SCHEMES:
        raise UserError(
            f"unknown storage scheme {parts.scheme!r} in {text!r}; "
            "supported: s3://, gs://, file://, mem://"
        )
    if parts.query or parts.fragment:
        raise UserError(f"storage URI {text!r} must not contain '?' or '#'")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UserError(f"file URI {text!r} must be absolute: file:///PATH (three slashes)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise UserError(f"file URI {text!r} must be absolute: file:///PATH")
        return StorageURI("file", os.path.normpath(path), "", source=source)
    bucket = parts.netloc
    if scheme == "mem":
        if not bucket:
            bucket = "default"
    elif not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UserError(
            f"invalid bucket name {bucket!r} in {text!r}: a bucket name is 3-63 lowercase "
            "letters, digits, dots or hyphens"
        )
    prefix = unquote(parts.path).lstrip("/")
    if prefix:
        segments = prefix.rstrip("/").split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise UserError(f"invalid prefix {prefix!r} in {text!r}: empty, '.' or '..' segment")
        prefix = "/".join(segments) + "/"
    return StorageURI(_SCHEME_OF[scheme], bucket, prefix, source=source)


def embedded_bucket_dir() -> Path:
    """Where the embedded local bucket lives when nothing is configured."""
    return Path(platformdirs.user_data_dir("wsfuse")) / "bucket"


def resolve_uri(
    text: str | None,
    *,
    provider: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StorageURI:
    """The URI to use: the argument, else the workspace environment, else the embedded bucket."""
    env = os.environ if environ is None else environ
    if text:
        return parse_uri(text)
    artifact = env.get("ANYSCALE_ARTIFACT_STORAGE", "").strip()
    if artifact:
        return parse_uri(artifact, source="$ANYSCALE_ARTIFACT_STORAGE")
    bucket = env.get("ANYSCALE_CLOUD_STORAGE_BUCKET", "").strip()
    if bucket:
        if "://" in bucket:
            return parse_uri(bucket, source="$ANYSCALE_CLOUD_STORAGE_BUCKET")
        scheme = "gs" if (provider or "").lower() in ("gcs", "gs", "google") else "s3"
        uri = parse_uri(f"{scheme}://{bucket}", source="$ANYSCALE_CLOUD_STORAGE_BUCKET")
        region = env.get("ANYSCALE_CLOUD_STORAGE_BUCKET_REGION", "").strip() or None
        return StorageURI(uri.scheme, uri.bucket, uri.prefix, region=region, source=uri.source)
    return StorageURI("file", str(embedded_bucket_dir()), source="embedded default")
