#!/usr/bin/env python3
"""What a backup series costs in a store, and which chunker and compression defaults to pick.

    scripts/series.py study [--work DIR] [--chunkers SPEC ...] [--levels N ...] [--json]
    scripts/series.py mount [--work DIR] [--store DIR] [--mnt DIR] [--json] [-- MOUNT-OPTIONS ...]

The series is the one the chunking issue measures, rebuilt deterministically
(``--seed``) from this machine's Python standard library and cached in
``--work`` (default /tmp/series-work):

- snapshot 1: the library tree (``sysconfig.get_paths()["stdlib"]`` of the
  system Python, ``--python``), its ``__pycache__`` directories included and
  site-packages/dist-packages left out. Debian's /usr/lib/python3.11 is then
  52.2 MB and the three snapshots 158.4 MB, the issue's 158.6 MB; without
  ``__pycache__`` it would be 39.6 MB. (The pyenv Python the venv runs on
  ships test/ and a 45 MB libpython.a: 102 MB without ``__pycache__``.)
- snapshot 2: a copy with 1% of the tree's files edited (one small edit in
  the middle of each: some bytes replaced by a line of a different length, as
  a person's edit would, drawn from the ``.py`` sources) and 20 new
  source-like files, each as large as a file of the tree drawn at random;
- snapshot 3: an uncompressed tar of snapshot 2 (one file, GNU format,
  sorted, owners and directory times normalised: the same bytes on every build).

``study`` is offline and in-process (fusestore is not imported): for each
FastCDC parameter choice it chunks every file on its own (the tar as one
file), deduplicates the chunks by BLAKE3 across the three snapshots, and
counts the unique bytes; it compresses each unique chunk alone with zstd at
each level (keeping it raw unless that saves at least 1/32) and times that on
one core; and it times the write path's CPU work (cut, BLAKE3 of each chunk,
a zstd attempt at each level) on 256 MiB of fresh random bytes, where every
byte is new and nothing compresses. It then recommends the choice that meets
the store's targets (stored at most 1/2.2 of the logical bytes without
compression, 1/6.5 with it) at the least CPU per GiB written (within 5%,
the run-to-run noise here; the widest margin breaks that tie). Unique-chunk
bytes leave out what a pack format adds per chunk (its index entries).

``mount`` measures what a real store does with the series: a fresh store,
the three snapshots copied in with rsync and cp, the bytes under the store
directory after the unmount, a read-back of every snapshot through a second
mount, and the bytes left once every file is deleted (and compacted, when
``fusestore compact`` exists).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SERIES_VERSION = 1          # bump when the way the series is built changes: cached builds are then rebuilt
SERIES_MTIME = 1767225600   # 2026-01-01T00:00:00Z: the time of every edited or added file
EDITED_FRACTION = 0.01
ADDED_FILES = 20
TARGET_RAW = 2.2            # logical / stored, compression off
TARGET_COMPRESSED = 6.5     # logical / stored, default compression
KEEP_RAW_UNLESS_SAVES = 32  # a compressed chunk is kept only when it saves at least 1/32 of the chunk
RANDOM_BYTES = 256 << 20
CPU_TIE = 0.05              # CPU costs this close to the cheapest count as equal (run-to-run noise here)
MB = 1e6
GIB = 1 << 30
ENV = str(uuid.UUID(int=0x5E7135))  # canonical lowercase, as the mount demands
NOT_MEASURED = ("fusestore.log", "lock")  # top-level files of the store that hold no content


# --------------------------------------------------------------------------------------------- the series

@dataclass(frozen=True)
class Series:
    """A built series in its cache directory: ``s1/``, ``s2/``, ``s3.tar`` and ``manifest.json``."""

    root: Path

    @property
    def s1(self) -> Path:
        return self.root / "s1"

    @property
    def s2(self) -> Path:
        return self.root / "s2"

    @property
    def s3(self) -> Path:
        return self.root / "s3.tar"

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.root / "manifest.json").read_text())
        return loaded

    def files(self) -> Iterator[Path]:
        """Every regular file of the three snapshots, in a fixed order (the tar is one file)."""
        yield from regular_files(self.s1)
        yield from regular_files(self.s2)
        yield self.s3

    def logical_bytes(self) -> dict[str, int]:
        return {"s1": tree_bytes(self.s1), "s2": tree_bytes(self.s2), "s3.tar": self.s3.stat().st_size}


def regular_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` (symbolic links not followed), sorted by path."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory, name)
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


def tree_bytes(root: Path) -> int:
    return sum(path.lstat().st_size for path in regular_files(root))


def system_stdlib(python: str) -> Path:
    """``sysconfig.get_paths()["stdlib"]`` as ``python`` sees it."""
    code = "import sysconfig; print(sysconfig.get_paths()['stdlib'])"
    return Path(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip())


def copy_library(source: Path, target: Path) -> None:
    """The library tree with its ``__pycache__``, without the packages installed into it."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n in ("site-packages", "dist-packages")] if Path(directory) == source else []
    shutil.copytree(source, target, symlinks=True, ignore=ignore)


def source_lines(files: Sequence[Path]) -> list[bytes]:
    """The lines of the tree's ``.py`` files: the material edits and new files are made of."""
    return [line for path in files for line in path.read_bytes().splitlines(keepends=True) if line.strip()]


def edit_in_the_middle(data: bytes, rng: random.Random, lines: Sequence[bytes]) -> bytes:
    """``data`` with a few bytes near its middle replaced by a line of another length, as a person's edit."""
    middle = len(data) // 2 + rng.randint(-len(data) // 10, len(data) // 10)
    removed = rng.randint(0, min(64, len(data) - middle))
    inserted = rng.choice(lines)
    while len(inserted) == removed:
        inserted = rng.choice(lines)
    return data[:middle] + inserted + data[middle + removed:]


def source_like(size: int, rng: random.Random, lines: Sequence[bytes]) -> bytes:
    """``size`` bytes of lines drawn at random from the tree's sources: a new file, new as a whole."""
    parts: list[bytes] = []
    length = 0
    while length < size:
        parts.append(rng.choice(lines))
        length += len(parts[-1])
    return b"".join(parts)[:size]


def edit_and_add(tree: Path, rng: random.Random) -> dict[str, list[str]]:
    """Edit 1% of ``tree``'s files (``.py`` sources) and add 20 files; returns what changed."""
    files = list(regular_files(tree))
    sources = [path for path in files if path.suffix == ".py" and path.stat().st_size > 0]
    lines = source_lines(sources)
    edited = rng.sample(sources, max(1, round(len(files) * EDITED_FRACTION)))
    for path in edited:
        path.write_bytes(edit_in_the_middle(path.read_bytes(), rng, lines))
        os.utime(path, (SERIES_MTIME, SERIES_MTIME))
    directories = sorted({path.parent for path in files})
    added = []
    for i in range(ADDED_FILES):
        path = rng.choice(directories) / f"series_added_{i:02d}.py"
        path.write_bytes(source_like(rng.choice(files).stat().st_size, rng, lines))
        os.utime(path, (SERIES_MTIME, SERIES_MTIME))
        added.append(path)
    return {"edited": [str(p.relative_to(tree)) for p in edited], "added": [str(p.relative_to(tree)) for p in added]}


def write_tar(tree: Path, target: Path) -> None:
    """An uncompressed GNU tar of ``tree``, sorted, with owners and directory times normalised."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.isdir():
            info.mtime = SERIES_MTIME
        return info

    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tar:
        for directory, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in [""] + sorted(dirnames + filenames):
                path = Path(directory, name)
                if name and path.is_dir() and not path.is_symlink():
                    continue  # a directory is added when the walk enters it
                tar.add(path, arcname=str(Path(tree.name, path.relative_to(tree))), recursive=False,
                        filter=normalise)


def build_series(work: Path, source: Path, seed: int) -> Series:
    """The series for ``seed`` built from ``source``, reused from ``work`` when already there."""
    wanted = {"version": SERIES_VERSION, "source": str(source), "seed": seed}
    series = Series(work / f"seed-{seed}")
    if (series.root / "manifest.json").exists() and {k: series.manifest.get(k) for k in wanted} == wanted:
        return series
    building = work / f"seed-{seed}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    partial = Series(building)
    copy_library(source, partial.s1)
    shutil.copytree(partial.s1, partial.s2, symlinks=True)
    changes = edit_and_add(partial.s2, random.Random(seed))
    write_tar(partial.s2, partial.s3)
    manifest = {**wanted, "bytes": partial.logical_bytes(), **changes}
    (building / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(series.root, ignore_errors=True)
    building.rename(series.root)
    return series


def describe_series(series: Series) -> str:
    manifest = series.manifest
    sizes = manifest["bytes"]
    return (f"series (seed {manifest['seed']}) from {manifest['source']} with __pycache__, in {series.root}: "
            f"s1 {sizes['s1'] / MB:.1f} MB, s2 {sizes['s2'] / MB:.1f} MB ({len(manifest['edited'])} files edited, "
            f"{len(manifest['added'])} added), s3.tar {sizes['s3.tar'] / MB:.1f} MB; "
            f"logical {sum(sizes.values()) / MB:.1f} MB")


# --------------------------------------------------------------------------------------------- the study

@dataclass(frozen=True)
class Chunker:
    """FastCDC's parameters, in bytes."""

    min: int
    avg: int
    max: int

    @classmethod
    def parse(cls, spec: str) -> Chunker:
        """``AVG`` (pyfastcdc's default min=AVG/4, max=AVG*4) or ``MIN:AVG:MAX``, in KiB."""
        sizes = [int(part) << 10 for part in spec.split(":")]
        if len(sizes) == 1:
            return cls(sizes[0] // 4, sizes[0], sizes[0] * 4)
        if len(sizes) != 3:
            raise argparse.ArgumentTypeError(f"{spec!r}: AVG or MIN:AVG:MAX, in KiB")
        return cls(*sizes)

    @property
    def label(self) -> str:
        return f"{self.min >> 10}/{self.avg >> 10}/{self.max >> 10} KiB"

    def make(self) -> Any:  # pyfastcdc.FastCDC; Any keeps the script free of the import at load time
        from pyfastcdc import FastCDC
        return FastCDC(self.avg, min_size=self.min, max_size=self.max)


@dataclass
class Compression:
    level: int
    stored: int
    seconds: float


@dataclass
class Dedup:
    """The unique chunks of the series for one chunker, and what zstd makes of them."""

    chunker: Chunker
    logical: int
    chunks: int
    unique_chunks: int
    unique: int
    compression: list[Compression] = field(default_factory=list)


@dataclass
class WritePath:
    """Single-core rates, in bytes per second, of the write path's CPU work on fresh random bytes."""

    chunker: Chunker
    mean_chunk: float
    cut: float
    blake3: float
    zstd: dict[int, float]

    def seconds_per_gib(self, level: int | None) -> float:
        """CPU seconds to cut, hash and (with a level) try to compress one GiB of new bytes."""
        rates = [self.cut, self.blake3] + ([self.zstd[level]] if level is not None else [])
        return sum(GIB / rate for rate in rates)


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """The least of ``repeats`` timings of ``work`` (other processes only ever add time)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def stored_size(raw: int, compressed: int) -> int:
    """What a chunk costs: compressed when that saves at least 1/32 of it, else raw."""
    return compressed if compressed * KEEP_RAW_UNLESS_SAVES <= raw * (KEEP_RAW_UNLESS_SAVES - 1) else raw


def unique_chunks(files: Iterable[Path], chunker: Chunker) -> tuple[dict[bytes, bytes], int, int]:
    """The series' unique chunks by BLAKE3 digest, with the count of all chunks and of all bytes."""
    from blake3 import blake3
    cdc = chunker.make()
    unique: dict[bytes, bytes] = {}
    chunks = logical = 0
    for path in files:
        data = path.read_bytes()
        logical += len(data)
        for chunk in cdc.cut_buf(data):
            chunks += 1
            unique.setdefault(blake3(chunk.data).digest(), bytes(chunk.data))
    return unique, chunks, logical


def compress_all(chunks: Iterable[bytes], level: int, repeats: int) -> Compression:
    """Each chunk compressed alone at ``level``, on one core: bytes stored, and the best time."""
    import zstandard
    compressor = zstandard.ZstdCompressor(level=level)
    chunks = list(chunks)
    stored = sum(stored_size(len(c), len(compressor.compress(c))) for c in chunks)
    seconds = best_of(repeats, lambda: [compressor.compress(c) for c in chunks])
    return Compression(level, stored, seconds)


def dedup(series: Series, chunker: Chunker, levels: Sequence[int], repeats: int) -> Dedup:
    unique, chunks, logical = unique_chunks(series.files(), chunker)
    result = Dedup(chunker, logical, chunks, len(unique), sum(map(len, unique.values())))
    result.compression = [compress_all(unique.values(), level, repeats) for level in levels]
    return result


def random_bytes(seed: int, size: int) -> bytes:
    """``size`` bytes no chunk of which repeats or compresses: BLAKE3's output stream for ``seed``."""
    from blake3 import blake3
    return blake3(b"series random bytes %d" % seed).digest(length=size)


def write_path(data: bytes, chunker: Chunker, levels: Sequence[int], repeats: int) -> WritePath:
    """Time cut, hash and compression attempts separately over ``data``, best of ``repeats``."""
    import zstandard
    from blake3 import blake3
    cdc = chunker.make()
    cut = best_of(repeats, lambda: [c.length for c in cdc.cut_buf(data)])
    views = [c.data for c in cdc.cut_buf(data)]
    hashed = best_of(repeats, lambda: [blake3(v).digest() for v in views])
    def attempt(level: int) -> Callable[[], object]:
        compressor = zstandard.ZstdCompressor(level=level)
        return lambda: [compressor.compress(v) for v in views]

    zstd = {level: len(data) / best_of(repeats, attempt(level)) for level in levels}
    return WritePath(chunker, len(data) / len(views), len(data) / cut, len(data) / hashed, zstd)


@dataclass
class Choice:
    chunker: Chunker
    level: int
    raw_ratio: float
    compressed_ratio: float
    seconds_per_gib: float


    @property
    def margin(self) -> float:
        """How far the nearer of the two targets is exceeded (0.01: by 1%)."""
        return min(self.raw_ratio / TARGET_RAW, self.compressed_ratio / TARGET_COMPRESSED) - 1


def recommend(dedups: Sequence[Dedup], paths: Sequence[WritePath]) -> tuple[Choice | None, list[Choice]]:
    """The (chunker, level) pairs that meet both targets, cheapest first, and the pick among them.

    The pick is the one with the widest margin among those within ``CPU_TIE`` of the cheapest: CPU
    figures move by that much between runs here, and the order inside it would be noise.
    """
    rates = {path.chunker: path for path in paths}
    choices = [Choice(d.chunker, c.level, d.logical / d.unique, d.logical / c.stored,
                      rates[d.chunker].seconds_per_gib(c.level))
               for d in dedups for c in d.compression]
    meeting = sorted((c for c in choices if c.margin >= 0), key=lambda c: c.seconds_per_gib)
    if not meeting:
        return None, []
    tied = [c for c in meeting if c.seconds_per_gib <= meeting[0].seconds_per_gib * (1 + CPU_TIE)]
    return max(tied, key=lambda c: c.margin), meeting


def study(args: argparse.Namespace) -> dict[str, Any]:
    series = series_from(args)
    dedups = [dedup(series, chunker, args.levels, args.repeats) for chunker in args.chunkers]
    data = random_bytes(args.seed, RANDOM_BYTES)
    paths = [write_path(data, chunker, args.levels, args.repeats) for chunker in args.chunkers]
    pick, meeting = recommend(dedups, paths)
    report = {"series": series.manifest, "dedup": [asdict(d) for d in dedups],
              "write_path": [asdict(p) for p in paths], "meeting_targets": [asdict(c) for c in meeting],
              "recommended": asdict(pick) if pick else None}
    if not args.json:
        print(describe_series(series))
        print_dedup(dedups, args.levels)
        print_write_path(paths, args.levels)
        print_recommendation(pick, meeting, dedups)
    return report


def print_dedup(dedups: Sequence[Dedup], levels: Sequence[int]) -> None:
    print("\nunique chunks over the series (each file chunked alone, dedup by BLAKE3 across the three snapshots; "
          "zstd per unique chunk, raw unless it saves 1/32; MB/s: one core, of unique bytes in)")
    head = f"{'min/avg/max':>16} {'mean':>7} {'chunks':>7} {'unique':>7} {'unique MB':>9} {'ratio':>6}"
    print(head + "".join(f" | {f'zstd -{level}: MB':>12} {'ratio':>6} {'MB/s':>5}" for level in levels))
    for d in dedups:
        line = (f"{d.chunker.label:>16} {d.logical / d.chunks / 1024:6.1f}K {d.chunks:7d} {d.unique_chunks:7d} "
                f"{d.unique / MB:9.2f} {d.logical / d.unique:5.2f}x")
        for c in d.compression:
            line += f" | {c.stored / MB:12.2f} {d.logical / c.stored:5.2f}x {d.unique / c.seconds / MB:5.0f}"
        print(line)


def print_write_path(paths: Sequence[WritePath], levels: Sequence[int]) -> None:
    print(f"\nwrite path on {RANDOM_BYTES >> 20} MiB of fresh random bytes, one core, GB/s (CPU s/GiB: "
          "cut + BLAKE3 + zstd attempt)")
    head = f"{'min/avg/max':>16} {'mean':>7} {'cut':>6} {'blake3':>6}"
    head += "".join(f" {f'zstd-{level}':>7}" for level in levels)
    print(head + " | " + " ".join(f"{f's/GiB -{level}':>9}" for level in levels) + f" {'s/GiB raw':>9}")
    for p in paths:
        line = f"{p.chunker.label:>16} {p.mean_chunk / 1024:6.1f}K {p.cut / 1e9:6.2f} {p.blake3 / 1e9:6.2f}"
        line += "".join(f" {p.zstd[level] / 1e9:7.2f}" for level in levels)
        line += " | " + " ".join(f"{p.seconds_per_gib(level):9.3f}" for level in levels)
        print(line + f" {p.seconds_per_gib(None):9.3f}")


def print_recommendation(pick: Choice | None, meeting: Sequence[Choice], dedups: Sequence[Dedup]) -> None:
    print(f"\ntargets: logical/stored >= {TARGET_RAW} without compression, >= {TARGET_COMPRESSED} with it")
    if pick is None:
        print("no choice meets both targets")
        return
    for choice in meeting:
        print(f"  meets both: {choice.chunker.label:>16} zstd -{choice.level}: {choice.raw_ratio:.2f}x raw, "
              f"{choice.compressed_ratio:.2f}x compressed, {choice.seconds_per_gib:.3f} CPU s/GiB, "
              f"margin {choice.margin:+.1%}")
    print(f"pick: the widest margin among those within {CPU_TIE:.0%} of the least CPU")
    logical = dedups[0].logical
    print(f"recommended: min {pick.chunker.min >> 10} KiB, avg {pick.chunker.avg >> 10} KiB, "
          f"max {pick.chunker.max >> 10} KiB, zstd level {pick.level}: "
          f"{pick.raw_ratio:.2f}x raw (margin {pick.raw_ratio / TARGET_RAW - 1:+.1%}, "
          f"{(logical / TARGET_RAW - logical / pick.raw_ratio) / MB:.1f} MB under the limit), "
          f"{pick.compressed_ratio:.2f}x compressed (margin {pick.compressed_ratio / TARGET_COMPRESSED - 1:+.1%}, "
          f"{(logical / TARGET_COMPRESSED - logical / pick.compressed_ratio) / MB:.1f} MB under the limit), "
          f"{pick.seconds_per_gib:.3f} CPU s/GiB of new bytes")


# --------------------------------------------------------------------------------------------- the mount

FUSESTORE = [sys.executable, "-m", "fusestore"]


@dataclass
class Usage:
    """Bytes of regular files under a store: st_size and allocated (st_blocks * 512)."""

    files: int = 0
    size: int = 0
    allocated: int = 0
    catalog_size: int = 0
    catalog_allocated: int = 0
    not_measured: dict[str, int] = field(default_factory=dict)

    def add(self, relative: Path, info: os.stat_result) -> None:
        if relative.parts[0] == "catalog":
            self.catalog_size += info.st_size
            self.catalog_allocated += info.st_blocks * 512
        elif str(relative) in NOT_MEASURED:
            self.not_measured[str(relative)] = info.st_size
        else:
            self.files += 1
            self.size += info.st_size
            self.allocated += info.st_blocks * 512


def store_usage(store: Path) -> Usage:
    """What the store holds outside ``catalog/`` (less its log and lock), and the catalog apart."""
    usage = Usage()
    for path in regular_files(store):
        usage.add(path.relative_to(store), path.lstat())
    return usage


def run(command: Sequence[str | Path]) -> float:
    """Run ``command`` (failing loudly) and return its wall-clock seconds; its output goes to stderr."""
    start = time.perf_counter()
    subprocess.run([str(part) for part in command], check=True, stdout=sys.stderr)
    return time.perf_counter() - start


def umount(mnt: Path) -> float:
    """``fusestore umount`` (which commits and checkpoints); ``fusermount3 -u`` when that fails."""
    start = time.perf_counter()
    if subprocess.run([*FUSESTORE, "umount", str(mnt)], stdout=sys.stderr).returncode != 0 and os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    return time.perf_counter() - start


@contextmanager
def mounted(store: Path, mnt: Path, options: Sequence[str], times: dict[str, float], name: str) -> Iterator[Path]:
    """The store mounted on ``mnt`` for the block, unmounted after it whatever happens."""
    times[f"mount {name}"] = run([*FUSESTORE, "mount", store, mnt, *options])
    try:
        yield mnt
    finally:
        times[f"umount {name}"] = umount(mnt)


def fresh_store(store: Path, mnt: Path) -> None:
    """Wipe ``store`` (only when it is empty or looks like a store) and make ``mnt`` an empty directory."""
    if os.path.ismount(mnt) or os.path.ismount(store):
        raise SystemExit(f"{mnt} or {store} is mounted: unmount it first")
    if store.exists():
        if any(store.iterdir()) and not (store / "catalog").is_dir():
            raise SystemExit(f"{store} is not empty and holds no catalog/: not wiping it")
        shutil.rmtree(store)
    mnt.mkdir(parents=True, exist_ok=True)
    if any(mnt.iterdir()):
        raise SystemExit(f"{mnt} is not empty")


def copy_in(series: Series, env: Path) -> dict[str, float]:
    """The three snapshots into the environment, timed one by one."""
    return {"rsync s1": run(["rsync", "-a", f"{series.s1}/", f"{env / 's1'}/"]),
            "rsync s2": run(["rsync", "-a", f"{series.s2}/", f"{env / 's2'}/"]),
            "cp s3.tar": run(["cp", series.s3, env / "s3.tar"])}


def verify(series: Series, env: Path) -> dict[str, bool]:
    """Every snapshot read back through the mount and compared with its original, byte for byte.

    ``diff -r`` compares the trees' names, contents and symlink targets; a dry ``rsync -a`` run
    (``-i``: list what differs) then compares what rsync copied besides: modes, owners and times.
    """
    def same(command: list[str | Path]) -> bool:
        return subprocess.run([str(part) for part in command], stdout=subprocess.DEVNULL).returncode == 0

    def same_metadata(original: Path, copy: Path) -> bool:
        dry = subprocess.run(["rsync", "-a", "-i", "-n", f"{original}/", f"{copy}/"], capture_output=True,
                             text=True, check=True)
        return dry.stdout == ""
    return {"s1": same(["diff", "-r", "--no-dereference", series.s1, env / "s1"]),
            "s2": same(["diff", "-r", "--no-dereference", series.s2, env / "s2"]),
            "s3.tar": same(["cmp", series.s3, env / "s3.tar"]),
            "s1 metadata": same_metadata(series.s1, env / "s1"),
            "s2 metadata": same_metadata(series.s2, env / "s2")}


def stats(store: Path) -> Any:
    result = subprocess.run([*FUSESTORE, "stats", str(store), "--json"], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr.strip()}


def has_compact() -> bool:
    usage = subprocess.run([*FUSESTORE, "--help"], capture_output=True, text=True, check=True).stdout
    return any(line.split()[:1] == ["compact"] for line in usage.splitlines())


def delete_everything(env: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["rm", "-rf", *[str(p) for p in env.iterdir()]], check=True)
    return time.perf_counter() - start


def mount_series(args: argparse.Namespace) -> dict[str, Any]:
    series = series_from(args)
    store, mnt, options = Path(args.store), Path(args.mnt), args.mount_options
    fresh_store(store, mnt)
    times: dict[str, float] = {}
    with mounted(store, mnt, options, times, "1") as root:
        env = root / ENV
        env.mkdir()
        times.update(copy_in(series, env))
    written, written_stats = store_usage(store), stats(store)
    with mounted(store, mnt, options, times, "2") as root:
        start = time.perf_counter()
        identical = verify(series, root / ENV)
        times["verify"] = time.perf_counter() - start
        times["rm -rf"] = delete_everything(root / ENV)
    compacted = has_compact()
    if compacted:
        times["compact"] = run([*FUSESTORE, "compact", store])
    report = {"series": series.manifest, "store": str(store), "mount_options": options,
              "logical": series.logical_bytes(), "written": asdict(written), "stats": written_stats,
              "identical": identical, "times": times, "compacted": compacted,
              "after_delete": asdict(store_usage(store)), "stats_after_delete": stats(store)}
    if not args.json:
        print(describe_series(series))
        print_mount(report)
    return report


def print_mount(report: dict[str, Any]) -> None:
    logical = sum(report["logical"].values())
    written, after, times = report["written"], report["after_delete"], report["times"]
    print(f"\nstore {report['store']}, mount options {report['mount_options'] or 'none'}; "
          f"measured: regular files outside catalog/, less {' and '.join(NOT_MEASURED)}")
    rows = [("logical (the snapshots' file sizes)", logical, logical),
            ("stored after the copy", written["size"], written["allocated"]),
            ("catalog after the copy", written["catalog_size"], written["catalog_allocated"]),
            ("stored after rm -rf" + (" and compact" if report["compacted"] else " (no compact)"),
             after["size"], after["allocated"]),
            ("catalog after rm -rf", after["catalog_size"], after["catalog_allocated"])]
    print(f"{'':38} {'bytes MB':>10} {'allocated MB':>13} {'ratio':>7}")
    for label, size, allocated in rows:
        ratio = f"{logical / size:6.2f}x" if size and label.startswith("stored") else ""
        print(f"{label:38} {size / MB:10.2f} {allocated / MB:13.2f} {ratio:>7}")
    print(f"files stored: {written['files']} after the copy, {after['files']} after rm -rf")
    print("read back identical: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["identical"].items()))
    print("times: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    for phase, name in ((report["logical"]["s1"], "rsync s1"), (report["logical"]["s2"], "rsync s2"),
                        (report["logical"]["s3.tar"], "cp s3.tar")):
        print(f"  {name}: {phase / MB / times[name]:.1f} MB/s")
    print("fusestore stats --json after the copy:", json.dumps(report["stats"]))
    print("fusestore stats --json after rm -rf:  ", json.dumps(report["stats_after_delete"]))


# --------------------------------------------------------------------------------------------- command line

def series_from(args: argparse.Namespace) -> Series:
    return build_series(Path(args.work), system_stdlib(args.python), args.seed)


def split_mount_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments, and what follows ``--`` (forwarded to ``fusestore mount``)."""
    if "--" not in argv:
        return list(argv), []
    at = list(argv).index("--")
    return list(argv[:at]), list(argv[at + 1:])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", default="/tmp/series-work", help="cache of the built series")
    common.add_argument("--seed", type=int, default=1, help="seed of the edits, added files and random bytes")
    common.add_argument("--python", default="/usr/bin/python3", help="the Python whose stdlib is the tree")
    common.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    one = sub.add_parser("study", parents=[common], help="chunker and zstd parameters, offline")
    one.add_argument("--chunkers", nargs="+", type=Chunker.parse,
                     default=[Chunker.parse(s) for s in ("8", "16", "32", "64", "2:16:64", "4:32:128")],
                     help="AVG or MIN:AVG:MAX in KiB (default: 8 16 32 64 2:16:64 4:32:128)")
    one.add_argument("--levels", nargs="+", type=int, default=[1, 3, 6], help="zstd levels (default 1 3 6)")
    one.add_argument("--repeats", type=int, default=5, help="timings are the best of this many (default 5)")
    two = sub.add_parser("mount", parents=[common], help="through a real mount; MOUNT-OPTIONS after --")
    two.add_argument("--store", default="/tmp/series-store", help="store directory, wiped first")
    two.add_argument("--mnt", default="/tmp/series-mnt", help="mount point")
    return top


def main() -> None:
    argv, options = split_mount_options(sys.argv[1:])
    args = parser().parse_args(argv)
    args.mount_options = options
    try:
        report = study(args) if args.what == "study" else mount_series(args)
    except subprocess.CalledProcessError as failed:
        command = " ".join(map(str, failed.cmd))
        raise SystemExit(f"series.py: {command} failed (exit status {failed.returncode})") from None
    if args.json:
        print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
