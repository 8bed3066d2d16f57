"""Contents as chunks in packs, on real stores: what is stored once, what is compressed, what comes back."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path

import blake3
import pytest

from fusestore import Store
from fusestore.pool import Compression
from fusestore.store import chunks
from fusestore.store.reuse import Reuse

from .helpers import ENV, live_chunk_bytes, put, read, stored_contents

KiB, MiB = 1 << 10, 1 << 20


def fresh(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_rows(store: Store) -> dict[bytes, int]:
    with store.catalog.read() as tx:
        return {chunk.digest: chunk.refcount for chunk in tx.chunks()}


def test_an_edit_in_the_middle_stores_only_the_chunks_around_it(store: Store) -> None:
    original = fresh(4 * MiB, 1)
    put(store, "v1", original)
    before = live_chunk_bytes(store)
    edited = original[:2 * MiB] + b"an edit of a few bytes" + original[2 * MiB + 10:]
    put(store, "v2", edited)
    grown = live_chunk_bytes(store) - before
    assert 0 < grown < 4 * chunks.DEFAULT_PARAMS.max_size, f"{grown} new bytes for a 12-byte change"
    assert read(store, "v1") == original and read(store, "v2") == edited
    shared = [refs for refs in chunk_rows(store).values() if refs == 2]
    assert len(shared) > 100, "the chunks before and after the edit serve both files"


def test_a_repeated_chunk_is_stored_once_and_counted_per_use(store: Store) -> None:
    block = fresh(64 * KiB, 2)
    data = block * 50
    put(store, "repeats", data)
    digest = blake3.blake3(data).digest()
    with store.catalog.read() as tx:
        extents = list(tx.extents(digest))
    rows = chunk_rows(store)
    assert len(rows) < 12, "fifty copies of one block cut into the same few chunks"
    uses: dict[bytes, int] = {}
    for extent in extents:
        uses[extent.chunk] = uses.get(extent.chunk, 0) + extent.count
    assert uses == rows, "a chunk's refcount is the sum of the counts of the extents that use it"
    assert live_chunk_bytes(store) < 3 * len(block)
    assert read(store, "repeats") == data
    store.remove_for_environment(ENV, "repeats")
    assert chunk_rows(store) == {} and stored_contents(store) == []


def test_a_hole_is_one_run_of_one_chunk(store: Store) -> None:
    data = bytes(200 * MiB)
    put(store, "zeros", data)
    with store.catalog.read() as tx:
        extents = list(tx.extents(blake3.blake3(data).digest()))
    assert len(extents) == 1 and extents[0].count * extents[0].length == len(data)
    assert live_chunk_bytes(store) < KiB, "one chunk of zeros, compressed"
    assert read(store, "zeros") == data


def test_text_is_compressed_and_random_bytes_are_stored_raw(store: Store) -> None:
    text = b"".join(b"line %d of a log that repeats itself\n" % n for n in range(20000))
    noise = fresh(MiB, 3)
    put(store, "text", text)
    put(store, "noise", noise)
    with store.catalog.read() as tx:
        by_content = {name: [tx.chunk(e.chunk) for e in tx.extents(blake3.blake3(data).digest())]
                      for name, data in (("text", text), ("noise", noise))}
    assert all(c is not None and c.codec == 1 and c.stored < c.length for c in by_content["text"])
    assert all(c is not None and c.codec == 0 and c.stored == c.length for c in by_content["noise"])
    assert read(store, "text") == text and read(store, "noise") == noise


def test_a_store_holds_chunks_of_both_kinds_and_reads_them_all(store_path: Path) -> None:
    text = b"compressible " * 100_000
    with Store.open(store_path) as store:
        put(store, "zstd", text)
    other = b"stored raw " * 100_000
    with Store.open(store_path, compression=Compression.parse("none")) as store:
        put(store, "raw", other)
        with store.catalog.read() as tx:
            codecs = {tx.chunk(e.chunk).codec for e in tx.extents(blake3.blake3(other).digest())}  # type: ignore[union-attr]
        assert codecs == {0}
    with Store.open(store_path) as store:
        assert read(store, "zstd") == text and read(store, "raw") == other


def test_packs_roll_over_and_go_when_nothing_live_is_left(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "PACK_TARGET", 256 * KiB)
    contents = [fresh(300 * KiB, n) for n in range(6)]
    with Store.open(store_path) as store:
        for n, data in enumerate(contents):
            put(store, f"f{n}", data)
        with store.catalog.read() as tx:
            packs = list(tx.packs())
        assert len(packs) >= 6 and sum(not p.sealed for p in packs) == 1
        assert all(p.size >= 256 * KiB for p in packs if p.sealed)
        for n, data in enumerate(contents):
            assert read(store, f"f{n}") == data
        for n in range(len(contents)):
            store.remove_for_environment(ENV, f"f{n}")
        store.sync()  # the freed packs' deletions wait for an anchor; a checkpoint makes one
        with store.catalog.read() as tx:
            left = [p for p in tx.packs() if p.sealed]
        assert left == []
    assert sorted(os.listdir(store_path / "packs")) == [], "the open pack is sealed and freed at close"


def test_random_reads_of_a_content_of_holes_runs_and_chunks(store: Store) -> None:
    rng = random.Random(5)
    data = fresh(200 * KiB, 6) + bytes(3 * MiB) + fresh(64 * KiB, 7) * 20 + fresh(70 * KiB, 8)
    put(store, "mixed", data)
    _, _, ino = store.locate_for_environment(ENV, "mixed")
    reader = store.content.checked_open(ino)
    try:
        for _ in range(300):
            offset = rng.randrange(len(data) + 10)
            length = rng.choice([1, 4096, 70_000, 200_000])
            assert reader.pread(length, offset) == data[offset:offset + length], (offset, length)
        assert reader.hash() == (blake3.blake3(data).digest(), len(data))
    finally:
        reader.close()


def test_writers_of_the_same_new_content_at_once_store_it_once(store: Store) -> None:
    data = fresh(3 * MiB, 9)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            store.put_for_environment(ENV, f"copy{n}", io.BytesIO(data), len(data))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    digest = blake3.blake3(data).digest()
    assert store.resource(digest.hex()).refcount == 6  # type: ignore[union-attr]
    with store.catalog.read() as tx:
        stored = sum(chunk.stored for chunk in tx.chunks())
        assert all(chunk.refcount == 1 for chunk in tx.chunks())
        assert [res.digest for res in tx.resources() if not res.complete] == []
    assert stored == len(data), "each chunk once, raw"
    for n in range(6):
        assert read(store, f"copy{n}") == data


def test_a_store_that_fails_keeps_no_partial_content(store: Store) -> None:
    class Breaks(io.RawIOBase):
        """Gives 100 MiB of fresh bytes, then fails: the content is never complete."""

        def __init__(self) -> None:
            self.left = 100 * MiB

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
            if self.left <= 0:
                raise OSError(5, "the source broke")
            n = min(len(buffer), self.left)
            buffer[:n] = os.urandom(n)
            self.left -= n
            return n

    with pytest.raises(OSError):
        store.put_for_environment(ENV, "broken", io.BufferedReader(Breaks()), 200 * MiB)
    assert stored_contents(store) == [] and chunk_rows(store) == {}
    with store.catalog.read() as tx:
        assert [p.live for p in tx.packs()] in ([], [0])


@pytest.mark.parametrize("tail", ["kept", "cut short", "extended"])
def test_an_edit_is_cut_again_only_around_its_bytes_and_gets_what_a_whole_cut_gets(
    store: Store, tmp_path: Path, tail: str
) -> None:
    original = fresh(6 * MiB, 11)
    put(store, "f", original)
    _, _, ino = store.locate_for_environment(ENV, "f")
    staged = store.writes.stage(ino, len(original))  # an in-place edit over the content
    store.writes.write(staged, b"EDIT" * 1000, 4 * MiB)
    edited = original[:4 * MiB] + b"EDIT" * 1000 + original[4 * MiB + 4000:]
    limit = len(original)
    if tail == "cut short":  # where the base's chunk ends there, its cut read the byte after
        limit = len(original) - 100_000
        store.writes.truncate(staged, limit)
        edited = edited[:limit]
    elif tail == "extended":  # the base's last chunk ended with the base; now zeros follow it
        store.writes.truncate(staged, len(original) + 5000)
        edited += bytes(5000)
    read_at: list[int] = []

    def counting(length: int, offset: int) -> bytes:
        read_at.append(offset)
        return store.writes.read(staged, length, offset)

    digest = blake3.blake3(edited).digest()
    reuse = Reuse(blake3.blake3(original).digest(), 4 * MiB, 4 * MiB + 4000, limit)
    with store.content.stripe(digest):
        store.chunks.store(digest, len(edited), counting, reuse=reuse)
    max_chunk = chunks.DEFAULT_PARAMS.max_size
    assert min(read_at) > 4 * MiB - 2 * max_chunk, "the bytes before the edit are not read"
    assert max(read_at) < 4 * MiB + 4000 + 64 * max_chunk, "nor those well after it"
    with store.catalog.read() as tx:
        reused = [(e.end, e.chunk, e.count) for e in tx.extents(digest)]
    with Store.open(tmp_path / "other") as other:
        put(other, "f", edited)
        with other.catalog.read() as tx:
            whole = [(e.end, e.chunk, e.count) for e in tx.extents(digest)]
    assert reused == whole, "the chunks of a cut from 0"
    store.chunks.drop_partial(digest)
    store.writes.abandon(staged, remove_created=False)


def test_an_edit_committed_with_its_unchanged_prefix_reads_back_and_stores_only_around_it(store_path: Path) -> None:
    original = fresh(8 * MiB, 12)
    with Store.open(store_path) as store:
        put(store, "f", original)
        _, _, ino = store.locate_for_environment(ENV, "f")
        before = live_chunk_bytes(store)
        staged = store.writes.stage(ino, len(original))
        store.writes.write(staged, b"x" * 100, 5 * MiB)
        digest, size = store.writes.hash(staged)
        store.writes.commit(staged, digest, size)
        edited = original[:5 * MiB] + b"x" * 100 + original[5 * MiB + 100:]
        assert read(store, "f") == edited
        assert live_chunk_bytes(store) - before < 4 * chunks.DEFAULT_PARAMS.max_size
        assert len(stored_contents(store)) == 1, "the old content went"
