#!/usr/bin/env python3
"""fusestore benchmarks: figures as ratios against a plain directory on the same disk.

    scripts/bench.py store [--dir DIR] [--size-mib N] [--files N]

Everything is measured in the same run and in the same directory tree, since
these machines are noisy: a ratio means more than an absolute figure.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusestore import Store  # noqa: E402

CHUNK = 1 << 20
ENV = str(uuid.UUID(int=1))


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(os.urandom(n))
            left -= n


def plain_copy(src: Path, dst: Path) -> None:
    """The baseline: stream the bytes into a plain file and make them durable, as a put does."""
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, CHUNK)
        writer.flush()
        os.fsync(writer.fileno())


def bench_store(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusestore-bench-", dir=args.dir))
    try:
        plain = base / "plain"
        plain.mkdir()
        with Store.open(base / "store") as store:
            n = args.files
            blobs = [os.urandom(4096) for _ in range(n)]

            def unique_puts() -> None:
                for i, data in enumerate(blobs):
                    store.put_for_environment(ENV, f"small/{i}", _reader(data), len(data))

            def duplicate_puts() -> None:
                for i in range(n):
                    store.put_for_environment(ENV, f"dup/{i}", _reader(blobs[0]), 4096)

            def plain_small() -> None:
                for i, data in enumerate(blobs):
                    with open(plain / f"s{i}", "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())

            t_unique = timed(unique_puts)
            t_dup = timed(duplicate_puts)
            t_plain_small = timed(plain_small)
            print(f"small unique puts (4 KiB): {n / t_unique:9.0f} puts/s   "
                  f"plain files with fsync: {n / t_plain_small:9.0f}/s   ratio {t_plain_small / t_unique:.2f}x")
            print(f"small duplicate puts:      {n / t_dup:9.0f} puts/s   ratio {t_plain_small / t_dup:.2f}x")

            size = args.size_mib << 20
            src = base / "source.bin"
            make_random_file(src, size)
            # Interleaved rounds, best of each: the disk's writeback makes single runs noisy.
            t_plain = t_put = t_dup_big = float("inf")
            for round_ in range(2):
                t_plain = min(t_plain, timed(lambda: plain_copy(src, plain / "copy.bin")))
                (plain / "copy.bin").unlink()
                with open(src, "rb") as reader:
                    t_put = min(t_put, timed(lambda: store.put_for_environment(ENV, "big.bin", reader, size)))
                with open(src, "rb") as reader:
                    t_dup_big = min(t_dup_big, timed(lambda: store.put_for_environment(ENV, "again.bin", reader, size)))
                store.remove_for_environment(ENV, "big.bin")
                store.remove_for_environment(ENV, "again.bin")
            mib = size / (1 << 20)
            print(f"{args.size_mib} MiB unique put:       {mib / t_put:9.0f} MB/s    "
                  f"plain copy with fsync: {mib / t_plain:9.0f} MB/s   ratio {t_plain / t_put:.2f}x")
            print(f"{args.size_mib} MiB duplicate put:    {mib / t_dup_big:9.0f} MB/s    ratio {t_plain / t_dup_big:.2f}x")
    finally:
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
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    {"store": bench_store}[args.what](args)


if __name__ == "__main__":
    main()
