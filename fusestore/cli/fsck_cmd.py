"""``fusestore fsck``: check an unmounted store (read-only unless ``--repair``), one line per problem.

The order matters: the catalog file's own structure is audited as raw
bytes before LMDB opens it, then the invariants (``store.fsck``) are
checked through a read-only inspection and what recovery would do is
listed; only ``--repair`` opens the store for writing (which recovers, and
upgrades a store made before chunks: ``store.upgrade``) and runs
``store.repair``. A store still holding whole-file blobs is not a problem,
only a notice, but ``--repair`` opens it all the same, to upgrade it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import mounts

if TYPE_CHECKING:
    from ..store.inspect import Inspection

EXIT_CODES_HELP = """\
exit status:
  0  the store is consistent (lost contents an earlier repair left are listed as notices)
  1  problems were found (also when --repair repaired them: run fsck again to confirm)
  2  fsck could not run: no readable store there, an unknown format, or a live process owns the store
"""


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    fsck = commands.add_parser(
        "fsck", help="check an unmounted store, and repair it with --repair",
        description="Check STORE, which must not be mounted: the catalog file's structure, then every "
                    "invariant of docs/FORMAT.md. Prints one line per problem, naming the chunk, pack or blob and "
                    "the paths of the files affected; "
                    "without --repair nothing under STORE changes.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fsck.add_argument("store", type=Path, metavar="STORE", help="store directory (never created)")
    fsck.add_argument("--verify", action="store_true",
                      help="also read, decode and re-hash (BLAKE3) every chunk and blob: reads every pack")
    fsck.add_argument("--repair", action="store_true",
                      help="recover (and upgrade a store made before chunks), then repair what was found "
                           "(contents with damaged chunks or blobs are marked lost; damaged blobs go to "
                           "STORE/lost+found)")
    fsck.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    sys.exit(check(args.store, verify=args.verify, repair=args.repair, out=sys.stdout, err=sys.stderr))


def check(path: Path, *, verify: bool, repair: bool, out: TextIO, err: TextIO) -> int:
    """The whole command; returns the exit status."""
    from .. import errors
    from ..store import fsck, upgrade
    from ..store import repair as repairs
    from ..store.inspect import Inspection, rollback_due
    from ..store.locking import InspectionLock

    def cannot(message: str) -> int:
        print(f"fusestore: {message}", file=err)
        return 2

    if not path.is_dir():
        return cannot(f"no store at {path}: not a directory")
    if not (path / "catalog" / "data.mdb").is_file():
        return cannot(f"no store at {path}: no catalog/data.mdb")
    corrupt: set[bytes] = set()
    damaged: set[bytes] = set()
    notices: list[str] = []
    upgrade_due = False
    try:
        lock = InspectionLock(path)  # no writer may start while the file is read as raw bytes
        try:
            due = rollback_due(path)
            if due is not None:  # the newest pages may be torn: nothing can be checked before the rollback
                problems = plan = [
                    f"recovery would take the catalog back to its last checkpoint, transaction {due[1]} (the "
                    f"machine went down with the store open; the disk holds pages up to transaction {due[0]}, "
                    "not all of them durable)"]
                if not repair:
                    print("fusestore: run fsck --repair (or mount the store) to recover, then fsck again", file=err)
            elif structure := fsck.catalog_file_problems(path):
                for line in structure:
                    print(f"catalog_structure: catalog/data.mdb: {line}", file=out)
                print("fusestore: the catalog file is damaged: not checked further, and not repaired "
                      "(restore it from a backup)", file=err)
                return 1
            else:
                with Inspection.open(path) as ins:
                    problems = [str(problem) for problem in fsck.run_checks(ins)]
                    if verify:
                        problems += _verify(ins, corrupt, damaged, err)
                    plan = list(repairs.recovery_plan(ins))
                    problems += plan
                    notices = [f"notice: {line}" for line in fsck.lost_contents(ins)]
                    old = upgrade.pending(ins)
                    if old is not None:  # not a problem: the open that --repair makes upgrades it
                        upgrade_due = True
                        notices.append(f"notice: {old}")
        finally:
            lock.release()
    except (errors.NoStore, errors.UnknownFormat, errors.StoreLocked, PermissionError) as exc:
        return cannot(str(exc))
    for line in problems + notices:
        print(line, file=out)
    if repair and (problems or upgrade_due):
        try:
            _repair(path, corrupt, damaged, out, recovered=bool(plan), upgrade_due=upgrade_due)
        except (errors.StoreLocked, errors.StoreExposed) as exc:
            return cannot(f"not repaired: {exc}")
    return 1 if problems else 0


def _verify(ins: "Inspection", corrupt: set[bytes], damaged: set[bytes], err: TextIO) -> list[str]:
    """Read every chunk, then every blob, with a meter; the bad ones are added to ``damaged`` and ``corrupt``."""
    from ..store import fsck, fsck_packs

    problems = []
    chunks = list(ins.chunks())
    meter = Meter(err, sum(chunk.stored for chunk in chunks), len(chunks), "chunks")
    for chunk, why in fsck_packs.damaged_chunks(ins, meter.advance):
        damaged.add(chunk.digest)
        problems.append(f"chunks_hash_to_their_names: {fsck_packs.damaged_message(ins, chunk, why)}")
    meter.finish()
    blobs = ins.blobs()
    if blobs:
        meter = Meter(err, sum(blob.size for blob in blobs), len(blobs), "blobs")
        for blob, digest in fsck.misnamed_blobs(ins, meter.advance):
            corrupt.add(blob.digest)
            problems.append(f"blobs_hash_to_their_names: {fsck.misnamed_message(ins, blob, digest)}")
        meter.finish()
    return problems


def _repair(path: Path, corrupt: set[bytes], damaged: set[bytes], out: TextIO, *, recovered: bool,
            upgrade_due: bool) -> None:
    """Open the store (recovery runs), repair, say what changed, and what is left."""
    from ..store import Store, fsck, repair

    logging.basicConfig(level=logging.WARNING, format="fusestore: %(message)s", stream=sys.stderr)
    for line in repair.forget_named_orphans(path):
        print(f"repaired: {line}", file=out)
    with Store.open(path) as store:
        if recovered:
            print("repaired: ran recovery, which did what the 'recovery would' lines say", file=out)
        if upgrade_due:
            print("repaired: chunked the whole-file blobs into packs (the store's upgrade)", file=out)
        for line in repair.repair(store, corrupt, damaged):
            print(f"repaired: {line}", file=out)
        compacted = store.compact()
        if compacted.packs_freed:
            print(f"repaired: compacted {compacted.packs_freed} packs, giving back {compacted.given_back} bytes",
                  file=out)
        left = [line for line in fsck.find_problems(store)
                if not line.startswith("no_directory_cycles:")]  # said by the repair already
        for line in left:
            print(f"not repaired: {line}", file=out)


class Meter:
    """Progress of ``--verify`` on stderr: a bar on a terminal, else a plain line every few seconds."""

    BAR_EVERY = 0.2
    LINE_EVERY = 5.0

    def __init__(self, err: TextIO, total_bytes: int, total_files: int, what: str) -> None:
        """``what``: the items counted (chunks, blobs)."""
        self.err = err
        self.what = what
        self.terminal = err.isatty()
        self.total_bytes, self.total_files = total_bytes, total_files
        self.bytes = self.files = 0
        self.started = self.shown = time.monotonic()

    def advance(self, read: int, finished: int) -> None:
        self.bytes += read
        self.files += finished
        now = time.monotonic()
        if now - self.shown >= (self.BAR_EVERY if self.terminal else self.LINE_EVERY):
            self.shown = now
            self._show(now)

    def finish(self) -> None:
        if self.terminal and self.total_files:
            self._show(time.monotonic())
            self.err.write("\n")
            self.err.flush()

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.bytes / elapsed
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        size = mounts.human_bytes
        figures = (f"{size(self.bytes)}/{size(self.total_bytes)}, {self.files}/{self.total_files} {self.what}, "
                   f"{size(rate)}/s, ETA {_duration(left)}")
        if self.terminal:
            done = self.bytes / self.total_bytes if self.total_bytes else 1.0
            bar = "#" * int(done * 30)
            self.err.write(f"\rverify {self.what} [{bar:<30}] {done:4.0%} {figures}\x1b[K")
        else:
            self.err.write(f"fusestore fsck: verifying {self.what}: {figures}\n")
        self.err.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
