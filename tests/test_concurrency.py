"""A Store shared by threads: racing puts of the same content end with one stored copy, shared chunks add up."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import blake3
import pytest

from fusestore import Store
from fusestore.store import chunks
from fusestore.store.fsck import find_problems

from .chunk_accounting import accounting_problems
from .helpers import ENV, live_chunk_bytes, read, stored_contents

DATA = b"racing content " * 10_000


def run_threads(count: int, work) -> None:
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # reported below, the thread must not swallow it
            failures.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def packs_end(store: Store) -> list[int]:
    return [store.packs.end(pack) for pack in store.packs.packs()]


def test_concurrent_puts_of_same_content_leave_one_stored_copy(store: Store) -> None:
    run_threads(8, lambda i: store.put_for_environment(ENV, f"copy{i}", io.BytesIO(DATA), len(DATA)))
    h = blake3.blake3(DATA).hexdigest()
    assert store.resource(h).refcount == 8
    assert stored_contents(store) == [bytes.fromhex(h)]
    stored = sum(packs_end(store))
    assert stored == live_chunk_bytes(store), "the writers that waited appended nothing: no dead bytes"
    assert accounting_problems(store, settled=False) == []
    assert find_problems(store) == []


def test_concurrent_checked_puts_and_removes(store: Store) -> None:
    h = blake3.blake3(DATA).hexdigest()

    def work(i: int) -> None:
        for round_ in range(10):
            path = f"t{i}/f{round_ % 3}"
            store.put_for_environment_and_check_hash(ENV, path, io.BytesIO(DATA), len(DATA), h)
            if round_ % 2:
                store.remove_for_environment(ENV, path)

    run_threads(6, work)
    assert find_problems(store) == []
    assert read(store, "t0/f2") == DATA  # round 8 wrote it last and kept it


def test_concurrent_puts_to_one_path_leave_one_winner(store: Store) -> None:
    contents = [bytes([i]) * 5000 for i in range(6)]
    run_threads(6, lambda i: store.put_for_environment(ENV, "same", io.BytesIO(contents[i]), 5000))
    assert read(store, "same") in contents
    assert len(store.resources()) == 1
    assert find_problems(store) == []


def test_contents_sharing_chunks_stored_and_removed_at_once_keep_the_accounts(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers of different contents race for the same chunks while packs roll over and are freed.

    Each content shares most chunks with the others, so that one writer's
    batch finds a chunk another appended, or whose last use (and pack) a
    remove just took. Once all is removed, nothing is kept: packs that only
    racing writers' duplicates filled are freed at the next open.
    """
    monkeypatch.setattr(chunks, "PACK_TARGET", 64 << 10)
    shared = os.urandom(512 << 10)
    contents = [shared + os.urandom(32 << 10) for _ in range(6)]

    def work(i: int) -> None:
        for round_ in range(6):
            store.put_for_environment(ENV, f"t{i}/f{round_ % 2}", io.BytesIO(contents[(i + round_) % 6]),
                                      len(contents[0]))
            if round_ % 2:
                store.remove_for_environment(ENV, f"t{i}/f{round_ % 2}")

    with Store.open(store_path) as store:
        run_threads(6, work)
        assert accounting_problems(store, settled=False) == []
        for i in range(6):
            assert read(store, f"t{i}/f0") == contents[(i + 4) % 6]
            store.remove_for_environment(ENV, f"t{i}/f0")
        store.sync()
        assert (stored_contents(store), live_chunk_bytes(store)) == ([], 0)
        assert find_problems(store) == []
    with Store.open(store_path) as store:
        assert accounting_problems(store) == []
    with Store.open(store_path) as store:
        assert list(store.packs.packs()) == []
