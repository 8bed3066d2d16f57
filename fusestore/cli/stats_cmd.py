"""``fusestore stats``: files, bytes and deduplication of a store, or of a mount's live daemon.

On a mount point it reads ``/.stats`` (the daemon's view, and no LMDB
loaded here); on a store nobody owns, it opens a read-only ``Inspection``,
which creates nothing. A store a live daemon owns is not read behind the
daemon's back: the command names the mount to ask instead. Both paths print
the same figures, computed by ``fusestore.store.stats``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import mounts

if TYPE_CHECKING:
    from ..store.stats import Stats

STATS_FILE = ".stats"  # fs.stats_file.STATS_NAME (that module loads pyfuse3)


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    stats = commands.add_parser(
        "stats", help="files, bytes and deduplication of a store or a mount",
        description="Print how many files, directories and environments a store holds, their logical "
                    "bytes, their distinct contents, the bytes of their distinct chunks before and after "
                    "compression, the dedup ratio, the store's chunks, packs, pack bytes and live bytes, and the "
                    "bytes of each environment you own (root: all). On a "
                    "mount point: the live daemon's view (MOUNTPOINT/.stats). On an unmounted store: read "
                    "read-only. Exit status 2 when the path is no store, or a store a mount holds.",
    )
    stats.add_argument("target", type=Path, metavar="STORE_OR_MOUNTPOINT")
    stats.add_argument("--json", action="store_true", help="print one JSON object (the keys of /.stats)")
    stats.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    target: Path = args.target
    if str(target.resolve()) in mounts.fusestore_mounts():
        raw = _read_mount(target)
    else:
        raw = _read_store(target)
    from ..store.stats import Stats

    try:
        figures = Stats.from_json(raw)
    except ValueError as exc:
        _fail(1, f"{target / STATS_FILE}: {exc}")
    sys.stdout.write(raw.decode() if args.json else table(figures))


def _read_mount(mountpoint: Path) -> bytes:
    try:
        with open(mountpoint / STATS_FILE, "rb") as stats_file:
            return stats_file.read()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            _fail(1, f"{mountpoint} is a dead mount (its daemon was killed): run `fusestore umount {mountpoint}`")
        _fail(1, f"cannot read {mountpoint / STATS_FILE}: {exc.strerror}")


def _read_store(store: Path) -> bytes:
    """The JSON of an unmounted store, through a read-only inspection (heavy imports: only here)."""
    from .. import errors
    from ..store.inspect import Inspection
    from ..store.stats import compute

    try:
        with Inspection.open(store) as inspection:
            return compute(inspection, reader_uid=os.getuid()).to_json()
    except errors.StoreLocked:
        _fail(2, _held_by(store))
    except (errors.NoStore, errors.UnknownFormat, errors.NeedsRecovery) as exc:
        _fail(2, str(exc))
    except OSError as exc:
        _fail(1, f"cannot read store {store}: {exc.strerror}")


def _held_by(store: Path) -> str:
    """Which mount's daemon holds ``store`` (its pid is in ``<store>/lock``), as a message."""
    try:
        pid = int((store / "lock").read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return f"store {store} is in use by another process; unmount it first"
    for path, daemon in mounts.fusestore_mounts().items():
        if daemon == pid:
            return f"store {store} is mounted on {path} (daemon pid {pid}): run `fusestore stats {path}`"
    return f"store {store} is in use by process {pid}, which serves no mount here; stop it first"


def _fail(status: int, message: str) -> NoReturn:
    print(f"fusestore: {message}", file=sys.stderr)
    sys.exit(status)


def table(figures: "Stats") -> str:
    """The figures for people: one aligned row each, sizes also in binary units, the ratio with 2 decimals.

    When the mount withholds the store-wide totals from this reader, a line says so instead of them.
    """
    def size(name: str, value: int) -> tuple[str, str, str]:
        return name, str(value), mounts.human_bytes(value)

    rows = [("files", str(figures.files), ""), ("directories", str(figures.directories), ""),
            ("environments", str(figures.environments), ""), size("logical bytes", figures.logical_bytes),
            ("contents", str(figures.contents), ""), size("chunk bytes", figures.chunk_bytes),
            size("stored bytes", figures.stored_bytes), ("dedup ratio", f"{figures.dedup_ratio:.2f}", ""),
            ("store-wide chunks", str(figures.chunks), ""), ("packs", str(figures.packs), ""),
            size("pack bytes", figures.pack_bytes), size("live bytes", figures.live_bytes)]
    if not figures.totals_shown:
        rows = []
    envs = [(f"  {env}", str(size), mounts.human_bytes(size)) for env, size in sorted(figures.per_environment.items())]
    label = max((len(name) for name, _, _ in rows + envs), default=0)
    width = max((len(value) for _, value, _ in rows + envs), default=0)

    def line(name: str, value: str, unit: str) -> str:
        return f"{name:<{label}}  {value:>{width}}" + (f"  ({unit})" if unit else "")

    lines = [line(*row) for row in rows]
    if not figures.totals_shown:
        lines.append("store-wide totals: shown to root only on this mount")
    lines.append("logical bytes per environment:" + ("" if envs else " none"))
    lines += [line(*row) for row in envs]
    return "\n".join(lines) + "\n"
