from __future__ import annotations

import pytest

from wsfuse.errors import UserError
from wsfuse.storage_uri import embedded_bucket_dir, parse_uri, resolve_uri
from wsfuse.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512", 512),
        ("4K", 4096),
        ("50G", 50 << 30),
        ("1.5M", 3 << 19),
        ("2TiB", 2 << 40),
        ("8mb", 8 << 20),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1G", "12X", "1.2.3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UserError, match="not a size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(50 << 30) == "50.0 GiB"


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "prefix"),
    [
        ("s3://bucket", "s3", "bucket", ""),
        ("s3://bucket/", "s3", "bucket", ""),
        ("s3://my.bucket-1/a/b", "s3", "my.bucket-1", "a/b/"),
        ("s3://bucket/a/b/", "s3", "bucket", "a/b/"),
        ("gs://bucket/x", "gs", "bucket", "x/"),
        ("gcs://bucket", "gs", "bucket", ""),
        ("file:///srv/data/", "file", "/srv/data", ""),
        ("mem://", "mem", "default", ""),
        ("mem://t1/p", "mem", "t1", "p/"),
        ("s3://bucket/with%20space", "s3", "bucket", "with space/"),
    ],
)
def test_parse_uri(text: str, scheme: str, bucket: str, prefix: str) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.bucket, uri.prefix) == (scheme, bucket, prefix)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://bucket", "unknown storage scheme 'ftp'"),
        ("bucket-name", "not a storage URI"),
        ("s3://", "invalid bucket name ''"),
        ("s3://Bad_Bucket", "invalid bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/../x", "empty, '.' or '..' segment"),
        ("s3://bucket?x=1", "must not contain"),
        ("file://relative/path", "must be absolute"),
    ],
)
def test_parse_uri_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_uri(text)


def test_resolve_prefers_argument_then_artifact_storage_then_bucket_env() -> None:
    env = {
        "ANYSCALE_ARTIFACT_STORAGE": "s3://art/prefix",
        "ANYSCALE_CLOUD_STORAGE_BUCKET": "cloudbucket",
        "ANYSCALE_CLOUD_STORAGE_BUCKET_REGION": "us-west-2",
    }
    assert str(resolve_uri("gs://arg", environ=env)) == "gs://arg"
    uri = resolve_uri(None, environ=env)
    assert (str(uri), uri.source) == ("s3://art/prefix", "$ANYSCALE_ARTIFACT_STORAGE")
    del env["ANYSCALE_ARTIFACT_STORAGE"]
    uri = resolve_uri(None, environ=env)
    assert (str(uri), uri.region) == ("s3://cloudbucket", "us-west-2")
    assert str(resolve_uri(None, provider="gcs", environ=env)) == "gs://cloudbucket"


def test_resolve_falls_back_to_embedded_bucket() -> None:
    uri = resolve_uri(None, environ={})
    assert uri.scheme == "file"
    assert uri.bucket == str(embedded_bucket_dir())
    assert uri.source == "embedded default"
