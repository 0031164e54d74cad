"""The `wsfuse` command line: argument parsing and the boundary where errors become one line.

Every error a person can fix (`UserError`, and backend errors that are not bugs) is printed as
`wsfuse: error: ...` on stderr with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsfuse import __version__
from wsfuse.backends import Backend, BackendOptions, open_backend
from wsfuse.backends.localdir import LocalDirBackend
from wsfuse.cachedir import cache_dir_for, default_cache_root
from wsfuse.errors import BackendError, UserError
from wsfuse.logsetup import LEVELS, setup_logging
from wsfuse.storage_uri import StorageURI, resolve_uri

log = logging.getLogger("wsfuse")

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage backend")
    g.add_argument(
        "--endpoint-url", metavar="URL", help="S3 endpoint, or GCS API endpoint (emulators)"
    )
    g.add_argument("--region", help="S3 region (default: from the AWS configuration)")
    g.add_argument("--profile", help="AWS profile name for credentials")
    g.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")
    g.add_argument(
        "--provider",
        choices=("s3", "gcs"),
        help="provider of a bare bucket name in $ANYSCALE_CLOUD_STORAGE_BUCKET (default: s3)",
    )
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", choices=LEVELS, default="info")
    g.add_argument("--log-file", metavar="FILE", help="log to FILE instead of stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsfuse",
        description="Mount an S3/GCS bucket (or a local directory bucket) as a fast local disk.",
    )
    parser.add_argument("--version", action="version", version=f"wsfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doctor = sub.add_parser("doctor", help="check FUSE, the cache directory and the bucket")
    doctor.add_argument(
        "uri",
        nargs="?",
        metavar="URI",
        help="s3://BUCKET[/PREFIX], gs://..., "
        "file:///PATH (default: $ANYSCALE_ARTIFACT_STORAGE or the embedded bucket)",
    )
    doctor.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache directory to check")
    doctor.add_argument(
        "--write-test",
        action="store_true",
        help="also write, read back and delete a small test object",
    )
    _add_backend_flags(doctor)
    return parser


def backend_options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        addressing_style=args.addressing_style,
        provider=args.provider,
    )


def open_storage(args: argparse.Namespace) -> tuple[StorageURI, Backend]:
    """Resolve the URI (argument, environment or embedded default), log it, open the backend."""
    uri = resolve_uri(args.uri, provider=args.provider)
    log.info("using storage %s (from %s)", uri, uri.source)
    if uri.source == "embedded default":
        LocalDirBackend(uri.bucket, create=True)  # the embedded bucket is ours to create
    return uri, open_backend(uri, backend_options(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from wsfuse import doctor  # noqa: PLC0415 - keep `wsfuse --help` fast

    uri, backend = open_storage(args)
    cache = args.cache_dir or cache_dir_for(uri, default_cache_root())
    try:
        ok = doctor.run_checks(
            [
                doctor.check_fuse,
                lambda: doctor.check_cache_dir(cache),
                lambda: doctor.check_bucket(backend, write_test=args.write_test),
            ],
            print,
        )
    finally:
        backend.close()
    print("all checks passed" if ok else "some checks failed: see the PROBLEM lines above")
    return 0 if ok else EXIT_PROBLEM


COMMANDS = {"doctor": cmd_doctor}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_file)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"wsfuse: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(exc, BackendError) else EXIT_PROBLEM
    except BackendError as exc:
        print(f"wsfuse: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
