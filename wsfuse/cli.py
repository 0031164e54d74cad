"""The `wsfuse` command line: argument parsing and the boundary where errors become one line.

Every error a person can fix (`UserError`, and backend errors that are not bugs) is printed as
`wsfuse: error: ...` on stderr with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from wsfuse import __version__
from wsfuse.backends import Backend, BackendOptions, open_backend
from wsfuse.backends.localdir import LocalDirBackend
from wsfuse.cachedir import cache_dir_for, default_cache_root
from wsfuse.config import DEFAULTS, MountConfig
from wsfuse.errors import BackendError, UserError
from wsfuse.logsetup import LEVELS, setup_logging
from wsfuse.storage_uri import StorageURI, resolve_uri
from wsfuse.units import format_size, parse_size

log = logging.getLogger("wsfuse")

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", choices=LEVELS, default="info")
    g.add_argument("--log-file", metavar="FILE", help="log to FILE instead of stderr")


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage backend")
    g.add_argument(
        "--endpoint-url", metavar="URL", help="S3 endpoint, or GCS API endpoint (emulators)"
    )
    g.add_argument("--region", help="S3 region (default: from the AWS configuration)")
    g.add_argument("--profile", help="AWS profile name for credentials")
    g.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")
    g.add_argument(
        "--upload-checksums",
        choices=("crc32c", "off"),
        default="crc32c",
        help="S3: send a CRC32C with every upload for the store to verify (default), or off "
        "for stores that refuse x-amz-checksum headers (bodies are then signed with SHA-256)",
    )
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

    mount = sub.add_parser(
        "mount",
        help="mount a bucket",
        description="Mount a bucket. Every long flag can also be given as -o name[=value] "
        "(fstab style; dashes or underscores).",
    )
    mount.add_argument("args", nargs="+", metavar="[URI] MOUNTPOINT")
    mount.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground (containers, systemd)",
    )
    mount.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="block cache directory (default: /mnt/local_storage/wsfuse/<bucket> "
        "or the user cache directory)",
    )
    mount.add_argument(
        "--cache-size",
        type=_size,
        default=DEFAULTS.cache_size,
        metavar="SIZE",
        help="cache budget, e.g. 50G (default: %(default)s bytes)",
    )
    mount.add_argument(
        "--min-free",
        type=_size,
        default=DEFAULTS.min_free,
        metavar="SIZE",
        help="always leave this much free on the cache disk",
    )
    mount.add_argument(
        "--cache-written-max",
        type=_size,
        default=DEFAULTS.cache_written_max,
        metavar="SIZE",
        help="keep files written through the mount in the cache after their upload up to "
        "this size; larger ones (checkpoints) are not copied into it "
        "(default: %(default)s bytes)",
    )
    mount.add_argument(
        "--metadata-ttl",
        type=float,
        default=DEFAULTS.metadata_ttl,
        metavar="SECONDS",
        help="trust listings and attributes this long; "
        "0 = close-to-open consistency (default: %(default)s)",
    )
    mount.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users access the mount (needs user_allow_other)",
    )
    mount.add_argument("--uid", type=int, default=os.getuid(), help="owner of all files")
    mount.add_argument("--gid", type=int, default=os.getgid(), help="group of all files")
    mount.add_argument(
        "--file-mode",
        type=_octal,
        default=DEFAULTS.file_mode,
        help="permission bits of files (octal, default 0644)",
    )
    mount.add_argument(
        "--dir-mode",
        type=_octal,
        default=DEFAULTS.dir_mode,
        help="permission bits of directories (octal, default 0755)",
    )
    mount.add_argument("--read-only", action="store_true", help="mount read-only")
    _add_backend_flags(mount)

    unmount = sub.add_parser("unmount", aliases=["umount"], help="unmount a wsfuse mount")
    unmount.add_argument("mountpoint", type=Path)
    _add_log_flags(unmount)

    recover = sub.add_parser(
        "recover",
        help="upload what a failed or crashed mount left pending (the next mount does it too)",
    )
    recover.add_argument("uri", nargs="?", metavar="URI")
    recover.add_argument("--cache-dir", type=Path, metavar="DIR")
    _add_backend_flags(recover)

    status = sub.add_parser("status", help="cache, traffic and upload status of a mount")
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    _add_log_flags(status)
    return parser


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text!r}")
    return value


# Generic mount(8) options that fstab and mount.fuse pass along; they mean nothing to us.
_IGNORED_MOUNT_OPTIONS = frozenset(
    {
        "rw",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "nofail",
        "_netdev",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "x-systemd.automount",
    }
)


def expand_o_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Turn `-o endpoint_url=X,read-only` into `--endpoint-url X --read-only`."""
    flags: dict[str, bool] = {}  # long flag -> takes a value
    for action in _all_actions(parser):
        for opt in action.option_strings:
            if opt.startswith("--"):
                flags[opt] = action.nargs != 0
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "-o" or (arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--")):
            spec = next(it, None) if arg == "-o" else arg[2:]
            if spec is None:
                raise UserError("-o needs a value: -o name[=value][,name[=value]...]")
            for item in filter(None, spec.split(",")):
                name, eq, value = item.partition("=")
                if name in _IGNORED_MOUNT_OPTIONS or name.startswith("x-"):
                    continue
                if name == "ro":
                    name = "read-only"
                flag = "--" + name.replace("_", "-")
                if flag not in flags:
                    raise UserError(f"unknown mount option -o {name}; see wsfuse mount --help")
                if flags[flag]:
                    if not eq:
                        raise UserError(f"mount option -o {name} needs a value: -o {name}=VALUE")
                    out += [flag, value]
                else:
                    if eq:
                        raise UserError(f"mount option -o {name} takes no value")
                    out.append(flag)
        else:
            out.append(arg)
    return out


def _all_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def backend_options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        addressing_style=args.addressing_style,
        upload_checksums=args.upload_checksums,
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


def mount_config(args: argparse.Namespace, uri: StorageURI) -> MountConfig:
    """The mount's settings from its parsed flags (`-o` options already expanded)."""
    return MountConfig(
        cache_dir=args.cache_dir or cache_dir_for(uri, default_cache_root()),
        cache_size=args.cache_size,
        min_free=args.min_free,
        cache_written_max=args.cache_written_max,
        metadata_ttl=args.metadata_ttl,
        uid=args.uid,
        gid=args.gid,
        file_mode=args.file_mode,
        dir_mode=args.dir_mode,
        read_only=args.read_only,
        allow_other=args.allow_other,
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from wsfuse import mount  # noqa: PLC0415 - pyfuse3 and trio only when mounting

    if len(args.args) > 2:
        raise UserError("usage: wsfuse mount [URI] MOUNTPOINT")
    args.uri = args.args[0] if len(args.args) == 2 else None
    mountpoint = Path(args.args[-1]).absolute()
    if not args.foreground:
        mount.preflight(mountpoint)  # fail here, in the terminal, when we can
        uri = resolve_uri(args.uri, provider=args.provider)
        cache_dir = args.cache_dir or cache_dir_for(uri, default_cache_root())
        log_file = (
            Path(args.log_file) if args.log_file else cache_dir.parent / (cache_dir.name + ".log")
        )
        return mount.spawn_daemon(_without_log_file(args.argv), log_file)
    uri, backend = open_storage(args)
    try:
        backend.check_bucket()
        config = mount_config(args, uri)
        log.info("cache directory %s (budget %s)", config.cache_dir, format_size(config.cache_size))
        mount.run_foreground(backend, config, mountpoint, str(uri))
    finally:
        backend.close()
    return 0


def _without_log_file(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-file":
            skip = True
        elif not a.startswith("--log-file="):
            out.append(a)
    return out


def cmd_recover(args: argparse.Namespace) -> int:
    from wsfuse import mount  # noqa: PLC0415

    uri, backend = open_storage(args)
    try:
        config = MountConfig(cache_dir=args.cache_dir or cache_dir_for(uri, default_cache_root()))
        report = mount.recover(backend, config)
    finally:
        backend.close()
    for line in report:
        print(line)
    print(f"{len(report)} pending item(s)" if report else "nothing pending")
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    from wsfuse import mount  # noqa: PLC0415

    mount.unmount(args.mountpoint.absolute())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from wsfuse import mount  # noqa: PLC0415

    status = mount.read_status(args.mountpoint.absolute())
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for key, value in status.items():
        shown = value
        if isinstance(value, int) and key.endswith(("bytes", "capacity")):
            shown = format_size(value)
        elif isinstance(value, float):
            shown = f"{value:.3f}"
        print(f"{key.replace('_', ' '):24} {shown}")
    return 0


COMMANDS = {
    "doctor": cmd_doctor,
    "mount": cmd_mount,
    "unmount": cmd_unmount,
    "umount": cmd_unmount,
    "status": cmd_status,
    "recover": cmd_recover,
}


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` (without the program name) parsed: `-o` options expanded into their flags,
    `mount`'s positionals collected wherever they stand. Raises UserError or exits (argparse)."""
    parser = build_parser()
    expanded = expand_o_options(parser, argv)
    # Positionals may follow options (`mount URI --endpoint-url X MOUNTPOINT`), which
    # argparse cannot match itself: collect the stray ones for `mount`.
    args, extra = parser.parse_known_args(expanded)
    stray = [a for a in extra if not a.startswith("-")]
    if args.command == "mount" and stray:
        args.args += stray
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = expanded
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_command_line(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"wsfuse: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging(args.log_level, args.log_file)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"wsfuse: error: {exc}", file=sys.stderr)
        _report_to_parent(f"error: {exc}")
        return EXIT_USAGE if not isinstance(exc, BackendError) else EXIT_PROBLEM
    except BackendError as exc:
        print(f"wsfuse: error: {exc}", file=sys.stderr)
        _report_to_parent(f"error: {exc}")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `wsfuse status | head`
        return 0


def _report_to_parent(message: str) -> None:
    """In a daemon child, hand the one-line error to the waiting parent."""
    if "wsfuse.mount" in sys.modules:
        sys.modules["wsfuse.mount"].report_ready(message)


if __name__ == "__main__":
    sys.exit(main())
