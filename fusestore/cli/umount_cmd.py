"""``fusestore umount``: unmount and wait for the daemon to commit and exit."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import mounts


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    umount = commands.add_parser(
        "umount", help="unmount, after committing what is open",
        description="Unmount MOUNTPOINT and wait until its daemon has committed everything and exited. "
                    "Also cleans up the mount of a killed daemon.",
    )
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    umount.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the daemon to exit (default 120)")
    umount.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    mounts.unmount(args.mountpoint, timeout=args.timeout)
