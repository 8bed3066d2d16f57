"""``fusestore link``: proof of access from the command line (``fusestore.client.link``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..client import link


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
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
    linking.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    outcome = link.link(args.mountpoint, args.env, args.path, args.localfile,
                        upload_if_missing=args.upload_if_missing)
    if outcome.ok:
        print(outcome.message)
    else:
        print(f"fusestore: {outcome.message}", file=sys.stderr)
    sys.exit(outcome.exit_code)
