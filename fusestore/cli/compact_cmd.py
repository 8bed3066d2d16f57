"""``fusestore compact``: give back the space of deleted data in an unmounted store, now.

A mount compacts its store itself, a little after each checkpoint; this
command opens a store nobody owns (recovery runs first, as at any open),
compacts every candidate pack (``store.compaction``), says what that gave
back, and closes it. A store a live process owns is refused with exit
status 2, as a path that holds no store is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from . import mounts


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    compact = commands.add_parser(
        "compact", help="give back the space of deleted data in an unmounted store",
        description="Copy the live chunks of STORE's sparse packs (less than half live) and merge its small "
                    "ones, then delete the packs they leave empty. STORE must not be mounted (a mount "
                    "compacts in the background). Exit status 0 when done, 2 when STORE is no store or "
                    "is in use.",
    )
    compact.add_argument("store", type=Path, metavar="STORE", help="store directory (never created)")
    compact.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    sys.exit(compact(args.store, out=sys.stdout, err=sys.stderr))


def compact(path: Path, *, out: TextIO, err: TextIO) -> int:
    """The whole command; returns the exit status."""
    from .. import errors
    from ..store import Store

    if not (path / "catalog" / "data.mdb").is_file():
        print(f"fusestore: no store at {path}: no catalog/data.mdb", file=err)
        return 2
    try:
        with Store.open(path) as store:
            done = store.compact()
    except errors.StoreLocked as exc:
        print(f"fusestore: {exc} (a mount compacts its store itself)", file=err)
        return 2
    except (errors.NoStore, errors.UnknownFormat, errors.StoreExposed) as exc:
        print(f"fusestore: {exc}", file=err)
        return 2
    if done.packs_freed == 0:
        print("nothing to compact: no pack is sparse, and small packs are few", file=out)
        return 0
    size = mounts.human_bytes
    packs = f"{done.packs_freed} pack" + ("s" if done.packs_freed > 1 else "")
    print(f"compacted {packs}: {done.given_back} bytes ({size(done.given_back)}) given back, "
          f"{done.copied_bytes} live bytes ({size(done.copied_bytes)}) copied", file=out)
    return 0
