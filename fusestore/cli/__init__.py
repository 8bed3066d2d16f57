"""The ``fusestore`` command: one module per command (``*_cmd.py``).

Each command module defines its arguments and ``run``, and imports the
layers it needs inside ``run``: so ``fusestore link`` loads neither LMDB nor
pyfuse3 nor trio, and ``--help`` of any command loads none of them. Errors meant
for the user are printed as one line, ``fusestore: ...``, with exit status 1
(2 for bad usage, as argparse does).
"""

from __future__ import annotations

import argparse
import sys

from . import compact_cmd, fsck_cmd, link_cmd, mount_cmd, stats_cmd, umount_cmd
from .mounts import MountError

DESCRIPTION = """\
fusestore: a deduplicating FUSE filesystem. Files live at /<env-uuid>/<path>;
each distinct content is stored once, in a refcounted blob pool.
"""

COMMANDS = (mount_cmd, umount_cmd, link_cmd, stats_cmd, fsck_cmd, compact_cmd)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fusestore", description=DESCRIPTION)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except MountError as exc:
        print(f"fusestore: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
