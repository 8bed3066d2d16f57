"""A Store shared by threads: racing puts of the same content end with one blob."""

from __future__ import annotations

import io
import threading

import blake3

from fusestore import Store
from fusestore.store.fsck import find_problems

from .helpers import ENV, read

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


def test_concurrent_puts_of_same_content_leave_one_blob(store: Store) -> None:
    run_threads(8, lambda i: store.put_for_environment(ENV, f"copy{i}", io.BytesIO(DATA), len(DATA)))
    h = blake3.blake3(DATA).hexdigest()
    assert store.resource(h).refcount == 8
    assert list(store.blobs.digests()) == [bytes.fromhex(h)]
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
