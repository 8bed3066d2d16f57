#!/usr/bin/env python3
"""fusestore benchmarks: figures as ratios against a plain directory on the same disk.

    scripts/bench.py store [--dir DIR] [--size-mib N] [--files N]
    scripts/bench.py fs    [--dir DIR] [--size-mib N] [--files N] [--rss-gib N]

Everything is measured in the same run and in the same directory tree, since
these machines are noisy: a ratio means more than an absolute figure.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import blake3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusestore import Store  # noqa: E402
from fusestore.digests import IO_BUFFER  # noqa: E402

ENV = str(uuid.UUID(int=1))


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work`` takes, started on a quiet disk (writeback of earlier phases would skew it)."""
    os.sync()
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(IO_BUFFER, left)
            out.write(os.urandom(n))
            left -= n


def plain_copy(src: Path, dst: Path) -> None:
    """The baseline: stream the bytes into a plain file and make them durable, as a put does."""
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, IO_BUFFER)
        writer.flush()
        os.fsync(writer.fileno())


def durable_put(store: Store, path: str, reader: io.BufferedReader, size: int) -> None:
    """A put and a checkpoint: the same promise as ``plain_copy``'s fsync."""
    store.put_for_environment(ENV, path, reader, size)
    store.sync()


def bench_store(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusestore-bench-", dir=args.dir))
    try:
        plain = base / "plain"
        plain.mkdir()
        with Store.open(base / "store") as store:
            n = args.files
            blobs = [os.urandom(4096) for _ in range(n)]

            # Both sides end durable, with one sync at the end (the store's is its checkpoint).
            def unique_puts() -> None:
                for i, data in enumerate(blobs):
                    store.put_for_environment(ENV, f"small/{i}", _reader(data), len(data))
                store.sync()

            def duplicate_puts() -> None:
                for i in range(n):
                    store.put_for_environment(ENV, f"dup/{i}", _reader(blobs[0]), 4096)
                store.sync()

            def plain_small() -> None:
                for i, data in enumerate(blobs):
                    with open(plain / f"s{i}", "wb") as f:
                        f.write(data)
                os.sync()

            t_unique = timed(unique_puts)
            t_dup = timed(duplicate_puts)
            t_plain_small = timed(plain_small)
            print(f"small unique puts (4 KiB): {n / t_unique:9.0f} puts/s   "
                  f"plain files, then sync: {n / t_plain_small:9.0f}/s   ratio {t_plain_small / t_unique:.2f}x")
            print(f"small duplicate puts:      {n / t_dup:9.0f} puts/s   ratio {t_plain_small / t_dup:.2f}x")

            size = args.size_mib << 20
            src = base / "source.bin"
            make_random_file(src, size)
            # Interleaved rounds, best of each: the disk's writeback makes single runs noisy.
            t_plain = t_put = t_dup_big = float("inf")
            for _ in range(2):
                t_plain = min(t_plain, timed(lambda: plain_copy(src, plain / "copy.bin")))
                (plain / "copy.bin").unlink()
                with open(src, "rb") as reader:
                    t_put = min(t_put, timed(lambda: durable_put(store, "big.bin", reader, size)))
                with open(src, "rb") as reader:
                    t_dup_big = min(t_dup_big, timed(lambda: durable_put(store, "again.bin", reader, size)))
                store.remove_for_environment(ENV, "big.bin")
                store.remove_for_environment(ENV, "again.bin")
            mib = size / (1 << 20)
            print(f"{args.size_mib} MiB unique put:       {mib / t_put:9.0f} MB/s    "
                  f"plain copy with fsync: {mib / t_plain:9.0f} MB/s   ratio {t_plain / t_put:.2f}x")
            print(f"{args.size_mib} MiB duplicate put:    {mib / t_dup_big:9.0f} MB/s    "
                  f"ratio {t_plain / t_dup_big:.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write_file(path: Path, size: int, seed: bytes, *, fsync: bool = False) -> None:
    """Write ``size`` bytes in 1 MiB writes, as cp or dd would, and close.

    Every block is new (BLAKE3's output stream of ``seed`` and the block's
    number, about 9 GB/s): content-defined chunks would find a repeated
    block again, so a repeated pattern is no fresh content.
    """
    with open(path, "wb", buffering=0) as out:
        block = 0
        while block * IO_BUFFER < size:
            length = min(IO_BUFFER, size - block * IO_BUFFER)
            out.write(blake3.blake3(seed + block.to_bytes(8, "big")).digest(length=length))
            block += 1
        if fsync:
            os.fsync(out.fileno())


def edit_middle(path: Path, size: int, round_number: int) -> None:
    """Write 1 MiB of fresh bytes in the middle of a file of ``size`` bytes, opened without O_TRUNC, and close."""
    with open(path, "r+b", buffering=0) as out:
        out.seek(size // 2 - IO_BUFFER // 2)
        out.write(blake3.blake3(b"edit %d" % round_number).digest(length=IO_BUFFER))


def stored_bytes(mountpoint: Path) -> int:
    """The bytes the mount stores, once a checkpoint (an fsync of its root) has settled them.

    Packs' bytes; a build of whole-file blobs (before chunks) has no packs and says what its blobs hold.
    """
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    stats = json.loads((mountpoint / ".stats").read_text())
    return int(stats["pack_bytes"] if "pack_bytes" in stats else stats["stored_bytes"])


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as src:
        while src.read(IO_BUFFER):
            pass


def drop_caches() -> bool:
    """Cold reads need an empty page cache: possible as root only."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        return False
    return True


def small_files(directory: Path, count: int) -> None:
    """``count`` files of 4 KiB, each of its own content (no dedup hit: every one is a new blob)."""
    data = bytearray(os.urandom(4096))
    directory.mkdir()
    for i in range(count):
        data[:16] = f"{directory.name}{i:08d}".encode()[-16:].rjust(16)
        with open(directory / f"f{i:05d}", "wb", buffering=0) as out:
            out.write(data)


def ls_long(directory: Path) -> None:
    subprocess.run(["ls", "-l", str(directory)], check=True, stdout=subprocess.DEVNULL)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def ratio_line(label: str, ours: float, plain: float, unit: str, higher_is_better: bool = True) -> None:
    ratio = ours / plain if higher_is_better else plain / ours
    print(f"{label:34s} fusestore {ours:10.1f} {unit:8s} plain {plain:10.1f} {unit:8s} ratio {ratio:.2f}x")


def best_times(sides: dict[str, Callable[[int], object]], *, cold: bool = True, rounds: int = 3,
               after: Callable[[str, int], object] | None = None) -> dict[str, float]:
    """Best time of each side over ``rounds``, rotating which goes first, caches dropped before each run.

    Each call gets the round number so that it can use fresh names;
    ``after(side, round)``, untimed, can clean up behind it.
    """
    best = dict.fromkeys(sides, float("inf"))
    names = list(sides)
    for round_number in range(rounds):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            if cold:
                drop_caches()
            best[name] = min(best[name], timed(functools.partial(sides[name], round_number)))
            if after is not None:
                after(name, round_number)
    return best


class Passthrough:
    """scripts/passthrough.py mounted over a directory: pyfuse3's own ceiling, measured in the same run."""

    def __init__(self, base: Path) -> None:
        self.source, self.mountpoint = base / "passthrough-source", base / "passthrough"
        self.source.mkdir()
        self.mountpoint.mkdir()
        self.process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "passthrough.py"),
                                         str(self.source), str(self.mountpoint)])
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the passthrough did not mount")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False)
        self.process.wait(30)


def pair(ours: Callable[[int], object], plain: Callable[[int], object], rounds: int) -> tuple[float, float]:
    best = best_times({"ours": ours, "plain": plain}, rounds=rounds)
    return best["ours"], best["plain"]


def triple_line(label: str, rates: dict[str, float], unit: str) -> None:
    """fusestore against the plain directory, and against the bare passthrough (pyfuse3's ceiling)."""
    ours, plain, bare = rates["fusestore"], rates["plain"], rates["passthrough"]
    print(f"{label:34s} fusestore {ours:10.1f} {unit:8s} plain {plain:10.1f} {unit:8s} ratio {ours / plain:.2f}x"
          f"   (bare pyfuse3 passthrough {bare:.1f} {unit}: {bare / plain:.2f}x; fusestore/passthrough "
          f"{ours / bare:.2f})")


def bench_fs(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusestore-bench-", dir=args.dir))
    mountpoint, plain = base / "mnt", base / "plain"
    mountpoint.mkdir()
    plain.mkdir()
    fusestore = [sys.executable, "-m", "fusestore"]
    subprocess.run([*fusestore, "mount", str(base / "store"), str(mountpoint), "--log", str(base / "log")],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        pid = int(os.getxattr(mountpoint, "user.fusestore.pid"))
        env = mountpoint / ENV
        env.mkdir()
        size = args.size_mib << 20
        mib = size / (1 << 20)
        cold = drop_caches()
        print(f"each figure: best of {args.rounds} runs per side, rotating order; caches "
              f"{'dropped before each run' if cold else 'warm (not root)'}")

        bare = Passthrough(base)
        try:
            directories = {"fusestore": env, "plain": plain, "passthrough": bare.mountpoint}
            backing = {**directories, "passthrough": bare.source}  # the passthrough cannot unlink
            for label, fsync in (("sequential write, to close", False), ("sequential write, with fsync", True)):
                patterns = [os.urandom(IO_BUFFER) for _ in range(args.rounds)]  # new content each round: no dedup hit

                def remove_unless_read_later(side: str, r: int, fsync: bool = fsync) -> None:
                    if fsync or r > 0:  # the read test reads wFalse0; the rest would only fill the disk
                        (backing[side] / f"w{fsync}{r}").unlink()

                best = best_times({
                    side: functools.partial(lambda r, d, f, p: write_file(d / f"w{f}{r}", size, p[r], fsync=f),
                                            d=directory, f=fsync, p=patterns)
                    for side, directory in directories.items()
                }, rounds=args.rounds, after=remove_unless_read_later)
                triple_line(f"{label} ({args.size_mib} MiB)", {k: mib / v for k, v in best.items()}, "MB/s")
                if not fsync:
                    written_in = best["fusestore"]
            best = best_times({side: functools.partial(lambda r, d: read_file(d / "wFalse0"), d=directory)
                               for side, directory in directories.items()}, rounds=args.rounds)
            rates = {side: mib / seconds for side, seconds in best.items()}
            triple_line("sequential read, " + ("cold" if cold else "warm"), rates, "MB/s")

            before = stored_bytes(mountpoint)
            best = best_times({side: functools.partial(lambda r, d: edit_middle(d / "wFalse0", size, r), d=directory)
                               for side, directory in directories.items()}, rounds=args.rounds)
            grown = (stored_bytes(mountpoint) - before) / args.rounds / IO_BUFFER
            print(f"{'edit 1 MiB in the middle, to close':34s} fusestore {best['fusestore']:10.3f} s        plain "
                  f"{best['plain']:10.3f} s        (bare pyfuse3 passthrough {best['passthrough']:.3f} s)")
            print(f"{'':34s} fusestore's stored bytes grew by {grown:.2f} MiB per edit; writing the file anew "
                  f"took {written_in:.2f} s")
        finally:
            bare.close()

        pattern = os.urandom(IO_BUFFER)
        write_file(env / "original", size, pattern)
        ours, theirs = pair(lambda r: write_file(env / f"again{r}", size, pattern),
                            lambda r: write_file(plain / f"again{r}", size, pattern), args.rounds)
        ratio_line("same content again (dedup hit)", mib / ours, mib / theirs, "MB/s")

        ours, theirs = pair(lambda r: small_files(env / f"small{r}", args.files),
                            lambda r: small_files(plain / f"small{r}", args.files), args.rounds)
        ratio_line(f"create+close {args.files} x 4 KiB", args.files / ours, args.files / theirs, "files/s")

        ours, theirs = pair(lambda r: ls_long(env / "small0"), lambda r: ls_long(plain / "small0"), args.rounds)
        ratio_line(f"ls -l of {args.files} entries", ours, theirs, "s", higher_is_better=False)

        if args.rss_gib:
            write_file(env / "huge", args.rss_gib << 30, os.urandom(IO_BUFFER))
            read_file(env / "huge")
        print(f"daemon peak RSS: {peak_rss_mib(pid):.0f} MiB"
              + (f" (after writing and reading a {args.rss_gib} GiB file)" if args.rss_gib else ""))
    finally:
        subprocess.run([*fusestore, "umount", str(mountpoint)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _reader(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    store = sub.add_parser("store", help="the store layer alone, no FUSE")
    store.add_argument("--dir", default=str(REPO / ".fusestore"), help="where to work (same disk as the store)")
    store.add_argument("--size-mib", type=int, default=1024, help="size of the large put (default 1024)")
    store.add_argument("--files", type=int, default=2000, help="number of small files (default 2000)")
    fs = sub.add_parser("fs", help="the mounted filesystem against a plain directory")
    fs.add_argument("--dir", default=str(REPO / ".fusestore"), help="where to work (same disk as the store)")
    fs.add_argument("--size-mib", type=int, default=1024, help="size of the large file (default 1024)")
    fs.add_argument("--files", type=int, default=10000, help="number of small files (default 10000)")
    fs.add_argument("--rss-gib", type=int, default=4, help="size of the file for the memory check (0: skip)")
    fs.add_argument("--rounds", type=int, default=3, help="runs per side; each figure is the best (default 3)")
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    {"store": bench_store, "fs": bench_fs}[args.what](args)


if __name__ == "__main__":
    main()
