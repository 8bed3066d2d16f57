"""The ``fusestore`` command: mount, umount, link.

Each command is a small function over the layers below; errors meant for
the user are printed as one line, ``fusestore: ...``, with exit status 1
(2 for bad usage, as argparse does).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import link, mounting

DESCRIPTION = """\
fusestore: a deduplicating FUSE filesystem. Files live at /<env-uuid>/<path>;
each distinct content is stored once, in a refcounted blob pool.
"""


def _mount(args: argparse.Namespace) -> None:
    if args.foreground:
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            filename=args.log,
        )
        try:
            mounting.serve(
                args.store, args.mountpoint, allow_other=args.allow_other,
                request_ttl=args.request_ttl, max_requests=args.max_requests, ready_fd=args.ready_fd,
            )
        except mounting.MountError as exc:
            if args.ready_fd is not None:
                os.write(args.ready_fd, f"error: {exc}\n".encode())
            raise
        return
    argv = ["mount", str(args.store), str(args.mountpoint), "--request-ttl", str(args.request_ttl),
            "--max-requests", str(args.max_requests)]
    if args.debug:
        argv.append("--debug")
    if args.allow_other:
        argv.append("--allow-other")
    log_path = Path(args.log) if args.log else args.store / "fusestore.log"
    pid = mounting.start_background(argv + ["--log", str(log_path)], log_path)
    print(f"fusestore: mounted {args.store} on {args.mountpoint} (daemon pid {pid}, log {log_path})")


def _umount(args: argparse.Namespace) -> None:
    mounting.unmount(args.mountpoint, timeout=args.timeout)


def _link(args: argparse.Namespace) -> None:
    outcome = link.link(args.mountpoint, args.env, args.path, args.localfile,
                        upload_if_missing=args.upload_if_missing)
    if outcome.ok:
        print(outcome.message)
    else:
        print(f"fusestore: {outcome.message}", file=sys.stderr)
    sys.exit(outcome.exit_code)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fusestore", description=DESCRIPTION)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount", help="mount a store (created when missing)",
        description="Mount STORE on MOUNTPOINT. Returns once the mount answers; the daemon then "
                    "runs in the background (log: STORE/fusestore.log unless --log is given).",
    )
    mount.add_argument("store", type=Path, metavar="STORE", help="store directory (created when missing)")
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="an existing empty directory")
    mount.add_argument("--foreground", action="store_true",
                       help="stay attached and log to stderr; SIGINT/SIGTERM unmount cleanly")
    mount.add_argument("--debug", action="store_true", help="verbose logs")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users use the mount (permissions are checked by the kernel)")
    mount.add_argument("--request-ttl", type=float, default=60.0, metavar="SECONDS",
                       help="how long a proof-of-access request stays open (default 60)")
    mount.add_argument("--max-requests", type=int, default=100, metavar="N",
                       help="open proof-of-access requests per user (default 100); past it, EBUSY")
    mount.add_argument("--log", metavar="FILE", help="log file (default: stderr with --foreground, "
                                                     "else STORE/fusestore.log)")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(run=_mount)

    umount = commands.add_parser(
        "umount", help="unmount, after committing what is open",
        description="Unmount MOUNTPOINT and wait until its daemon has committed everything and exited. "
                    "Also cleans up the mount of a killed daemon.",
    )
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    umount.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the daemon to exit (default 120)")
    umount.set_defaults(run=_umount)

    linking = commands.add_parser(
        "link", help="link content you already have, without uploading it (proof of access)",
        description="Place the content of LOCALFILE at ENV/PATH in the mount without uploading it:\n"
                    "ask through MOUNTPOINT/.requests, answer the challenge from LOCALFILE.\n"
                    "Works when the store already holds the same bytes (anyone's copy).",
        epilog=link.EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    linking.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="a fusestore mount")
    linking.add_argument("env", metavar="ENV", help="environment UUID (canonical lowercase)")
    linking.add_argument("path", metavar="PATH", help="destination inside the environment (parents are created)")
    linking.add_argument("localfile", type=Path, metavar="LOCALFILE", help="your copy of the content")
    linking.add_argument("--upload-if-missing", action="store_true",
                         help="when the store does not hold the content, copy LOCALFILE in instead")
    linking.set_defaults(run=_link)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except mounting.MountError as exc:
        print(f"fusestore: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
