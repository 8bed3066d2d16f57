"""``bench.py chunking``: what storing fresh content costs per GiB, step by step, in one process (no FUSE).

A file written in order is hashed whole and cut, hashed chunk by chunk and
stored by its writer's stream thread (``ChunkStream``); its commit records
what the stream left. These figures say how much of a large write's time
each step takes, and so what the stream thread cannot go below however
its Python is trimmed: the steps in C (BLAKE3, FastCDC, the zstd probe).
Each step runs over the same fresh bytes, held in memory, best of
``rounds``; seconds per GiB of content.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from bench_workloads import ENV, MIB, fresh_blocks

from fusestore import Store
from fusestore.catalog import ROOT_INO
from fusestore.pool.chunker import DEFAULT_PARAMS, StreamChunker
from fusestore.pool.codec import DEFAULT_COMPRESSION, encode
from fusestore.store.owners import Owner

FEED = 4 * MIB  # what the stream thread is handed at a time (RunningHash's batch)
WIDTH = 56  # of the labels


def best_seconds_per_gib(work: Callable[[], object], size: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * (1 << 30) / size


def bench_chunking(args: argparse.Namespace) -> None:
    size = args.size_mib * MIB
    pieces = [b"".join(fresh_blocks(os.urandom(16) + bytes([n]), FEED)) for n in range(-(-size // FEED))]

    def whole_hash() -> None:
        hasher = blake3.blake3()
        for piece in pieces:
            hasher.update(piece)

    def cut_only() -> None:
        cutter = DEFAULT_PARAMS.cutter()
        for piece in pieces:
            for _ in cutter.cut_buf(piece):
                pass

    def stream_cut(then: Callable[[memoryview], object] = lambda chunk: None) -> None:
        chunker = StreamChunker(DEFAULT_PARAMS)
        for piece in pieces:
            for _, chunk in chunker.feed(piece):
                then(chunk)
        for _, chunk in chunker.finish():
            then(chunk)

    def hashed(chunk: memoryview) -> None:
        blake3.blake3(chunk).digest()

    def hashed_and_probed(chunk: memoryview) -> None:
        blake3.blake3(chunk).digest()
        encode(chunk, DEFAULT_COMPRESSION)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("BLAKE3 of the whole content", whole_hash),
        ("FastCDC cut_buf alone (pyfastcdc)", cut_only),
        ("StreamChunker (the same cut, fed 4 MiB at a time)", stream_cut),
        ("  + BLAKE3 of each chunk", lambda: stream_cut(hashed)),
        ("  + the compression probe of each chunk", lambda: stream_cut(hashed_and_probed)),
    ]
    print(f"{args.size_mib} MiB of fresh content in memory; seconds per GiB, best of {args.rounds}")
    for label, work in steps:
        print(f"{label:{WIDTH}s} {best_seconds_per_gib(work, size, args.rounds):6.3f} s")
    with tempfile.TemporaryDirectory(prefix="fusestore-bench-", dir=args.dir) as base:
        with Store.open(Path(base) / "store") as store:
            stream, commit = streamed_write(store, pieces)
    print(f"{'ChunkStream: all its thread does but the whole hash':{WIDTH}s} {stream * (1 << 30) / size:6.3f} s")
    print(f"{'the commit at close of what the stream stored':{WIDTH}s} {commit * (1 << 30) / size:6.3f} s")


def streamed_write(store: Store, pieces: list[bytes]) -> tuple[float, float]:
    """A file written as the mount writes one (its staging file, the stream fed alongside): the stream's seconds
    (the whole hash left out: the stream thread does that too) and the commit's."""
    env = store.namespace.mkdir(ROOT_INO, ENV.encode(), 0o755, Owner(0, 0)).ino
    _, staged = store.namespace.create(env, b"f", 0o644, Owner(0, 0))
    hasher = blake3.blake3()
    for number, piece in enumerate(pieces):
        staged.write(piece, number * FEED)
        hasher.update(piece)
    stream = store.writes.stream()
    try:
        start = time.perf_counter()
        for piece in pieces:
            stream.feed(piece)
        stream.finish()
        fed = time.perf_counter()
        store.writes.commit(staged, hasher.digest(), sum(map(len, pieces)), streamed=stream)
        return fed - start, time.perf_counter() - fed
    finally:
        stream.close()
