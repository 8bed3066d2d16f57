"""``fusestore mount``: check, then serve in the foreground or start the daemon in the background."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import mounts

if TYPE_CHECKING:
    from ..store import Compression
    from ..store.tenancy import RequestMode, Tenancy


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    mount = commands.add_parser(
        "mount", help="mount a store (created when missing)",
        description="Mount STORE on MOUNTPOINT. Returns once the mount answers; the daemon then "
                    "runs in the background (log: STORE/fusestore.log unless --log is given).",
    )
    mount.add_argument("store", type=Path, metavar="STORE",
                       help="store directory (created with mode 0700 when missing; refused when group or "
                            "others may enter it)")
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="an existing empty directory")
    mount.add_argument("--foreground", action="store_true",
                       help="stay attached and log to stderr; SIGINT/SIGTERM unmount cleanly")
    mount.add_argument("--debug", action="store_true", help="verbose logs")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users use the mount (permissions are checked by the kernel)")
    mount.add_argument("--request-ttl", type=float, default=60.0, metavar="SECONDS",
                       help="how long a proof-of-access request stays open (default 60)")
    mount.add_argument("--max-requests-per-uid", type=positive, default=64, metavar="N",
                       help="open proof-of-access requests per uid, root included (default 64); past it, EBUSY")
    mount.add_argument("--request-rate", type=positive, default=600, metavar="N",
                       help="proof-of-access asks per uid in any 60 s, whatever their outcome (default 600); "
                            "past it, EBUSY")
    exposure = mount.add_mutually_exclusive_group()
    exposure.add_argument("--requests-off", action="store_true",
                          help="no /.requests: no proof of access, and /.stats totals for root only")
    exposure.add_argument("--requests-same-owner", action="store_true",
                          help="an ask finds only content a file of the caller's own environments holds "
                               "(else ENOENT); /.stats totals for root only")
    mount.add_argument("--verify-limit", type=size, default="256M", metavar="BYTES",
                       help="hash each chunk of a file at its first read when the file is at most this large (K, "
                            "M, G: 2^10, 2^20, 2^30 bytes; default 256M; 0: never; larger ones: fusestore fsck "
                            "--verify)")
    mount.add_argument("--compression", type=compression, metavar="zstd[:LEVEL]|none",
                       help="how chunks stored from now on are compressed, each only where that saves space "
                            "(default: zstd at the level docs/FORMAT.md gives); a store may hold both kinds")
    mount.add_argument("--max-file-size", type=size, metavar="BYTES",
                       help="no file grows past this size: writes and truncations past it fail with EFBIG "
                            "(K, M, G, T: powers of 2^10; default: what the store's filesystem allows)")
    mount.add_argument("--log", metavar="FILE", help="log file (default: stderr with --foreground, "
                                                     "else STORE/fusestore.log)")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(run=run)


SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """``256M`` and the like: a byte count with an optional K, M, G or T (powers of 2^10)."""
    number, suffix = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if suffix not in SUFFIXES or not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use digits with an optional K, M, G or T")
    return int(number) * SUFFIXES[suffix]


def compression(text: str) -> "Compression":
    from ..store import Compression

    try:
        return Compression.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def tenancy(args: argparse.Namespace) -> "Tenancy":
    """The rules between users that the flags ask for."""
    from ..store.tenancy import Tenancy

    mode: RequestMode = "off" if args.requests_off else "same-owner" if args.requests_same_owner else "on"
    return Tenancy(max_requests_per_uid=args.max_requests_per_uid, request_rate=args.request_rate, requests=mode)


def run(args: argparse.Namespace) -> None:
    if args.foreground:
        try:
            _serve(args)
        except mounts.MountError as exc:
            if args.ready_fd is not None:
                os.write(args.ready_fd, f"error: {exc}\n".encode())
            raise
        return
    argv = ["mount", str(args.store), str(args.mountpoint), "--request-ttl", str(args.request_ttl),
            "--max-requests-per-uid", str(args.max_requests_per_uid), "--request-rate", str(args.request_rate),
            "--verify-limit", str(args.verify_limit)]
    if args.compression is not None:
        argv += ["--compression", str(args.compression)]
    if args.max_file_size is not None:
        argv += ["--max-file-size", str(args.max_file_size)]
    if args.requests_off:
        argv.append("--requests-off")
    if args.requests_same_owner:
        argv.append("--requests-same-owner")
    if args.debug:
        argv.append("--debug")
    if args.allow_other:
        argv.append("--allow-other")
    _store_directory(args.store)  # before the log, which may be made inside it
    log_path = Path(args.log) if args.log else args.store / "fusestore.log"
    pid = mounts.start_background(argv + ["--log", str(log_path)], log_path)
    print(f"fusestore: mounted {args.store} on {args.mountpoint} (daemon pid {pid}, log {log_path})")


def _store_directory(store: Path) -> None:
    """Create the store directory (0700), or refuse one other uids may enter, before anything is written in it."""
    from .. import errors, private

    try:
        private.store_directory(store)
    except (errors.StoreExposed, errors.NotADirectory) as exc:
        raise mounts.MountError(str(exc)) from None


def _serve(args: argparse.Namespace) -> None:
    _store_directory(args.store)
    log = None if args.log is None else os.fdopen(mounts.open_log(Path(args.log)), "a", encoding="utf-8")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=log,
    )
    mountpoint = args.mountpoint.resolve()
    mounts.check_mountpoint(mountpoint)
    mounts.check_fuse_device()
    from .. import errors
    from ..fs import daemon

    try:
        daemon.serve(args.store, mountpoint, allow_other=args.allow_other, request_ttl=args.request_ttl,
                     tenancy=tenancy(args), verify_limit=args.verify_limit, compression=args.compression,
                     max_file_size=args.max_file_size, ready_fd=args.ready_fd)
    except (errors.StoreLocked, errors.UnknownFormat, daemon.MountFailed) as exc:
        raise mounts.MountError(str(exc)) from None
