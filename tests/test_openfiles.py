"""The open-file write state (``fusestore.fs.openfiles.OpenFiles``) driven with ``trio.run``, no mount.

What the filesystem does between open and the last close: staging, the
running hash, reads of what was written, and the commit at the last close.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
import pytest
import trio
import trio.testing

from fusestore import Store, errors
from fusestore.catalog import ROOT_INO
from fusestore.fs.openfiles import OpenFiles, OpenInode
from fusestore.fs.running_hash import BACKGROUND_AFTER
from fusestore.pool import FailingPackStore, LocalPackStore
from fusestore.store.fsck import find_problems
from fusestore.store.owners import Owner
from fusestore.store.writes import Refused

from .helpers import ENV, leftover_staging, live_chunk_bytes, put, read, stored_contents

OWNER = Owner(1000, 1000)
DATA = b"open file content " * 1000
HASH_XATTR = b"user.fusestore.blake3"


class Files:
    """An OpenFiles over ``store`` and the names it reported dropped."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dropped: list[tuple[int, bytes, int]] = []
        self.files = OpenFiles(store, on_dropped=lambda parent, name, ino: self.dropped.append((parent, name, ino)))
        try:
            self.env = store.namespace.lookup(ROOT_INO, ENV.encode()).ino
        except errors.NotFound:
            self.env = store.namespace.mkdir(ROOT_INO, ENV.encode(), 0o755, OWNER).ino

    def create(self, name: bytes) -> OpenInode:
        attrs, staged = self.store.namespace.create(self.env, name, 0o644, OWNER)
        return self.files.created(attrs.ino, staged)

    def open(self, name: bytes) -> OpenInode:
        return self.files.open(self.store.namespace.lookup(self.env, name).ino)


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def hash_of(store: Store, ino: int) -> bytes:
    return store.xattrs.get(ino, HASH_XATTR)


def hex_of(data: bytes) -> bytes:
    return blake3.blake3(data).hexdigest().encode()


def test_in_order_writes_commit_at_close_with_the_running_hash(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        for offset in range(0, len(DATA), 4096):
            assert await f.files.write(state, offset, DATA[offset:offset + 4096]) == len(DATA[offset:offset + 4096])
        assert state.hasher is not None and state.hashed == len(DATA)  # no second pass needed
        await f.files.close(state)
        assert f.files.inodes == {}
        assert hash_of(store, state.ino) == hex_of(DATA)

    run(main)
    assert read(store, "f") == DATA
    assert leftover_staging(store) == []


def test_out_of_order_writes_are_rehashed_at_commit(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 5, b"world")
        assert state.hasher is None
        await f.files.write(state, 0, b"hello")
        await f.files.close(state)
        assert hash_of(store, state.ino) == hex_of(b"helloworld")

    run(main)
    assert read(store, "f") == b"helloworld"


def test_an_overwrite_inside_what_was_written_is_rehashed(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 0, b"aaaa")
        await f.files.write(state, 1, b"bb")
        await f.files.close(state)

    run(main)
    assert read(store, "f") == b"abba"


def test_truncate_to_zero_then_write_replaces_the_content(store: Store) -> None:
    old = put(store, "f", DATA)
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        await f.files.truncate(state, 0)
        await f.files.write(state, 0, b"new")
        assert state.hasher is not None and state.hashed == 3
        await f.files.close(state)

    run(main)
    assert read(store, "f") == b"new"
    assert store.resource(old) is None


def test_truncate_to_a_shorter_size_keeps_the_first_bytes(store: Store) -> None:
    put(store, "f", DATA)
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        await f.files.truncate(state, 10)
        await f.files.close(state)

    run(main)
    assert read(store, "f") == DATA[:10]


def test_truncate_to_a_longer_size_appends_zeros(store: Store) -> None:
    put(store, "f", b"abc")
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        await f.files.truncate(state, 6)
        await f.files.close(state)

    run(main)
    assert read(store, "f") == b"abc\0\0\0"


def test_a_write_into_an_existing_file_keeps_the_rest_of_its_content(store: Store) -> None:
    put(store, "f", DATA)
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        await f.files.write(state, 3, b"XY")
        await f.files.close(state)

    run(main)
    assert read(store, "f") == DATA[:3] + b"XY" + DATA[5:]


def test_reads_see_uncommitted_writes_and_the_store_the_committed_content(store: Store) -> None:
    put(store, "f", b"old content")
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        assert await f.files.read(state, 0, 100) == b"old content"
        await f.files.write(state, 0, b"NEW")
        assert await f.files.read(state, 0, 100) == b"NEW content"
        assert read(store, "f") == b"old content"
        await f.files.close(state)

    run(main)
    assert read(store, "f") == b"NEW content"


def test_attributes_show_the_staged_size_and_mtime(store: Store) -> None:
    put(store, "f", b"12345")
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        ino = state.ino
        committed = store.namespace.getattr(ino)
        assert f.files.attributes(committed) == committed  # nothing staged yet
        await f.files.write(state, 5, b"678910")
        shown = f.files.attributes(store.namespace.getattr(ino))
        assert (shown.size, shown.mtime_ns) == (11, state.mtime_ns)
        assert shown.mtime_ns is not None and shown.mtime_ns > committed.mtime_ns
        assert store.namespace.getattr(ino).size == 5
        await f.files.close(state)
        after = store.namespace.getattr(ino)
        assert (after.size, after.mtime_ns) == (11, shown.mtime_ns)

    run(main)


def test_a_handle_that_never_wrote_commits_nothing(store: Store) -> None:
    h = put(store, "f", DATA)
    f = Files(store)
    before = store.namespace.getattr(store.namespace.lookup(f.env, b"f").ino)

    async def main() -> None:
        state = f.open(b"f")
        assert await f.files.read(state, 0, 5) == DATA[:5]
        await f.files.close(state)

    run(main)
    assert store.namespace.getattr(before.ino) == before
    assert store.resource(h).refcount == 1
    assert leftover_staging(store) == []


def test_a_time_set_after_the_last_write_is_the_committed_mtime(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 0, DATA)
        f.files.set_mtime(state, 1_500_000_000_123_456_789)
        await f.files.close(state)
        assert store.namespace.getattr(state.ino).mtime_ns == 1_500_000_000_123_456_789

    run(main)


def test_a_write_after_a_time_was_set_takes_the_time_of_the_write(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 0, b"a")
        f.files.set_mtime(state, 1_500_000_000_000_000_000)
        await f.files.write(state, 1, b"b")
        await f.files.close(state)
        assert store.namespace.getattr(state.ino).mtime_ns > 1_500_000_000_000_000_000

    run(main)


def test_with_two_handles_the_commit_happens_at_the_last_close(store: Store) -> None:
    put(store, "f", b"old")
    f = Files(store)

    async def main() -> None:
        first = f.open(b"f")
        second = f.open(b"f")
        assert first is second and first.handles == 2
        await f.files.write(first, 0, b"new")
        await f.files.close(first)
        assert read(store, "f") == b"old"
        assert store.writes.is_staged(first.ino)
        assert await f.files.read(second, 0, 10) == b"new"
        await f.files.close(second)
        assert not store.writes.is_staged(first.ino)

    run(main)
    assert read(store, "f") == b"new"
    assert leftover_staging(store) == []


def test_an_explicit_commit_then_more_writes_commit_again_at_close(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 0, b"first")
        await f.files.commit(state)
        assert read(store, "f") == b"first"
        await f.files.write(state, 5, b" second")
        await f.files.close(state)

    run(main)
    assert read(store, "f") == b"first second"
    store.sync()  # the deletion of "first" waits for it
    assert stored_contents(store) == [blake3.blake3(b"first second").digest()]


def test_a_refused_expected_hash_drops_the_created_entry(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        store.xattrs.set(state.ino, b"user.fusestore.expect", hex_of(b"something else"))
        await f.files.write(state, 0, DATA)
        with pytest.raises(Refused):
            await f.files.close(state)
        assert f.dropped == [(f.env, b"f", state.ino)]
        assert f.files.inodes == {}

    run(main)
    with pytest.raises(errors.NotFound):
        store.namespace.lookup(f.env, b"f")
    store.sync()  # deletions wait for it
    assert stored_contents(store) == []
    assert leftover_staging(store) == []


def test_a_refused_expected_hash_keeps_an_existing_file(store: Store) -> None:
    put(store, "f", b"old")
    f = Files(store)

    async def main() -> None:
        state = f.open(b"f")
        store.xattrs.set(state.ino, b"user.fusestore.expect", hex_of(b"something else"))
        await f.files.write(state, 0, b"new")
        with pytest.raises(errors.HashMismatch):
            await f.files.close(state)

    run(main)
    assert f.dropped == []
    assert read(store, "f") == b"old"


def test_a_file_unlinked_while_open_commits_nothing_and_goes_at_close(store: Store) -> None:
    f = Files(store)

    async def main() -> None:
        state = f.create(b"f")
        await f.files.write(state, 0, DATA)
        store.namespace.unlink(f.env, b"f")
        assert await f.files.read(state, 0, 5) == DATA[:5]
        assert store.namespace.getattr(state.ino).nlink == 0
        await f.files.close(state)
        with pytest.raises(errors.NotFound):
            store.namespace.getattr(state.ino)

    run(main)
    assert stored_contents(store) == []
    assert leftover_staging(store) == []


def test_a_large_file_hashed_in_the_background_commits_with_the_right_hash(store: Store) -> None:
    data = os.urandom(40 << 20)
    assert len(data) > BACKGROUND_AFTER
    f = Files(store)

    async def main() -> None:
        state = f.create(b"big")
        step = 128 << 10
        for offset in range(0, len(data), step):
            await f.files.write(state, offset, data[offset:offset + step])
        assert state.hasher is not None and state.hashed == len(data)
        await f.files.close(state)
        assert hash_of(store, state.ino) == hex_of(data)
        assert store.namespace.getattr(state.ino).size == len(data)

    run(main)
    assert stored_contents(store) == [blake3.blake3(data).digest()]


def test_a_failed_append_at_close_keeps_an_existing_files_content(store_path: Path) -> None:
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        put(store, "f", b"old")
        before = stored_contents(store), live_chunk_bytes(store)
        f = Files(store)

        async def main() -> None:
            state = f.open(b"f")
            await f.files.write(state, 0, b"new")
            packs.on("append", OSError(errno.ENOSPC, "full"))
            with pytest.raises(OSError) as caught:
                await f.files.close(state)
            assert caught.value.errno == errno.ENOSPC

        run(main)
        assert read(store, "f") == b"old"
        assert (stored_contents(store), live_chunk_bytes(store)) == before, "no chunk of the new bytes is kept"
        assert leftover_staging(store) == []
        assert find_problems(store) == []


def test_a_failed_append_at_close_of_a_created_file_keeps_the_file_with_its_last_content(store_path: Path) -> None:
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        f = Files(store)
        created: list[int] = []

        async def main() -> None:
            state = f.create(b"f")
            created.append(state.ino)
            await f.files.write(state, 0, DATA)
            packs.on("append", OSError(errno.ENOSPC, "full"))
            with pytest.raises(OSError):
                await f.files.close(state)

        run(main)
        kept = store.namespace.lookup(f.env, b"f")  # as on ext4: the file open(O_CREAT) made stays
        assert (kept.ino, kept.size) == (created[0], 0)
        assert (stored_contents(store), live_chunk_bytes(store)) == ([], 0)
        assert leftover_staging(store) == []
        assert find_problems(store) == []
        assert f.dropped == []


def test_an_open_and_close_during_the_commit_of_the_last_close_forget_the_inode_once(store_path: Path) -> None:
    """The fuzzer's find: the inode reopened and closed while its last close commits in a thread.

    Both closes found no handle left and forgot the inode: the second raised
    KeyError (an EIO and a traceback for a release that had done nothing wrong).
    """
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        f = Files(store)

        async def main() -> None:
            state = f.create(b"f")
            await f.files.write(state, 5, DATA)  # out of order: the commit hashes in a worker thread
            in_append, reopened = trio.Event(), trio.Event()
            token = trio.lowlevel.current_trio_token()

            def during_append() -> None:
                trio.from_thread.run_sync(in_append.set, trio_token=token)
                trio.from_thread.run(reopened.wait, trio_token=token)

            packs.on("append", during_append)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(f.files.close, state)
                await in_append.wait()
                again = f.open(b"f")
                assert again is state
                nursery.start_soon(f.files.close, again)  # it waits for the commit's lock
                await trio.testing.wait_all_tasks_blocked()
                reopened.set()
            assert f.files.get(state.ino) is None

        run(main)
        assert read(store, "f") == bytes(5) + DATA
        assert not store.opens.is_open(store.namespace.lookup(f.env, b"f").ino)
        assert find_problems(store) == []
