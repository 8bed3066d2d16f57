"""The one commit path (``store.writes``) and ``Namespace.create``, in-process on real stores.

Faults come from ``FailingPackStore`` cues; crashes are real child processes
that end with ``os._exit`` before their store is closed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import blake3
import lmdb
import pytest

from fusestore import Store, errors
from fusestore.pool import FailingPackStore, LocalPackStore, StagingFile
from fusestore.store.attributes import Attributes
from fusestore.store.fsck import find_problems
from fusestore.store.gathering import BATCH_BYTES
from fusestore.store.owners import Owner
from fusestore.store.writes import Dropped, Refused

from .chunk_accounting import accounting_problems
from .helpers import (
    ENV,
    crash_before_commit,
    env_of,
    leftover_staging,
    live_chunk_bytes,
    put,
    read,
    restart_machine,
    stored_contents,
)

OWNER = Owner(1000, 1000)
DATA = b"committed content " * 1000
OTHER = b"other content " * 700
EXPECT = b"user.fusestore.expect"


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def ino_of(store: Store, name: bytes) -> int:
    return store.namespace.lookup(env_of(store), name).ino


def create(store: Store, name: bytes, data: bytes) -> tuple[int, StagingFile]:
    """A file created as the mount creates one, with ``data`` written to its staging file."""
    attrs, staged = store.namespace.create(env_of(store), name, 0o640, OWNER)
    staged.write(data, 0)
    return attrs.ino, staged


def commit(store: Store, staged: StagingFile) -> Attributes | None:
    digest, size = staged.hash()
    return store.writes.commit(staged, digest, size)


def stored(store: Store) -> list[bytes]:
    """The contents whose chunks the store holds, once a checkpoint has done the deletions waiting for it.

    The packs' bookkeeping must add up then too: no chunk or pack kept live for nothing.
    """
    store.sync()
    assert accounting_problems(store, settled=False) == []
    return stored_contents(store)


@pytest.fixture
def failing(store_path: Path) -> Iterator[tuple[Store, FailingPackStore]]:
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as opened:
        yield opened, packs


# -- create and commit ---------------------------------------------------------------------------


def test_a_created_file_is_empty_until_its_staging_file_commits(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    assert store.namespace.getattr(ino).size == 0
    assert read(store, "f") == b""
    attrs = commit(store, staged)
    assert attrs == store.namespace.getattr(ino)
    assert store.namespace.getattr(ino).size == len(DATA)
    assert read(store, "f") == DATA
    assert store.xattrs.get(ino, b"user.fusestore.blake3") == blake3.blake3(DATA).hexdigest().encode()
    assert stored(store) == [digest_of(DATA)]
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_small_file_commits_in_one_catalog_transaction(store: Store) -> None:
    """Its chunks are recorded in the transaction that commits it (the pack it goes to is open already)."""
    put(store, "first", b"opens a pack")
    for name, data in ((b"new", DATA), (b"again", DATA)):  # new content, then content held already
        _, staged = create(store, name, data)
        before = store.catalog.last_commit()
        commit(store, staged)
        assert store.catalog.last_commit() - before == 1, name
        assert read(store, name.decode()) == data
    assert find_problems(store) == []


def test_a_created_file_takes_the_mode_and_owner_it_was_created_with(store: Store) -> None:
    attrs, staged = store.namespace.create(env_of(store), b"f", 0o640, OWNER)
    assert (attrs.mode & 0o7777, attrs.uid, attrs.gid, attrs.nlink) == (0o640, 1000, 1000, 1)
    assert store.staging.names() == [staged.name]
    store.writes.abandon(staged, remove_created=False)


def test_committing_existing_content_dedups_to_one_stored_copy(store: Store) -> None:
    h = put(store, "a", DATA)
    _, staged = create(store, b"b", DATA)
    commit(store, staged)
    assert read(store, "b") == DATA
    assert stored(store) == [digest_of(DATA)]
    assert store.resource(h).refcount == 2
    assert find_problems(store) == []


def test_committing_over_old_content_releases_it(store: Store) -> None:
    old = put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    commit(store, staged)
    assert read(store, "f") == OTHER
    assert store.resource(old) is None
    assert stored(store) == [digest_of(OTHER)]


def test_an_empty_commit_stores_nothing(store: Store) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    commit(store, staged)
    assert read(store, "f") == b""
    assert stored(store) == []
    assert find_problems(store) == []


def test_commit_keeps_the_mtime_it_is_given(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size, mtime_ns=1_234_567_890_123_456_789)
    assert store.namespace.getattr(ino).mtime_ns == 1_234_567_890_123_456_789


@pytest.fixture(params=["in place", "copied"])
def edits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Edits over the content (``store.edits``), or copies of it, as where staging files lose written zeros."""
    if request.param == "copied":
        monkeypatch.setattr("fusestore.store.writes.exact_holes", lambda staging: False)
    return str(request.param)


def test_stage_starts_from_the_first_bytes_of_the_current_content(store: Store, edits: str) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 100)
    assert (os.stat(staged.path).st_blocks == 0) == (edits == "in place")
    assert store.writes.read(staged, len(DATA), 0) == DATA[:100]
    store.writes.write(staged, b"tail", 100)
    digest, size = store.writes.hash(staged)
    store.writes.commit(staged, digest, size)
    assert read(store, "f") == DATA[:100] + b"tail"
    assert find_problems(store) == []


def test_stage_starts_from_at_most_the_whole_content(store: Store, edits: str) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 1 << 40)
    assert store.writes.read(staged, 2 * len(DATA), 0) == DATA
    assert find_problems(store) == [], "an open edit holds a reference to its base"
    store.writes.abandon(staged)
    assert read(store, "f") == DATA
    assert find_problems(store) == []


def test_an_edit_keeps_reading_its_base_when_the_file_gets_other_content(store: Store) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), len(DATA))
    store.writes.write(staged, b"edit", 10)
    put(store, "f", OTHER)  # a put by path: the base loses the file's reference, not the edit's
    store.sync()
    assert store.writes.read(staged, len(DATA), 0) == DATA[:10] + b"edit" + DATA[14:]
    digest, size = store.writes.hash(staged)
    store.writes.commit(staged, digest, size)
    assert read(store, "f") == DATA[:10] + b"edit" + DATA[14:]
    assert stored(store) == [digest]
    assert find_problems(store) == []


def test_stage_of_a_directory_is_einval(store: Store) -> None:
    with pytest.raises(errors.InvalidArgument):
        store.writes.stage(env_of(store), 0)
    assert leftover_staging(store) == []


def test_abandoning_a_created_file_removes_it(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    assert store.writes.abandon(staged) == Dropped(env_of(store), b"f", ino)
    with pytest.raises(errors.NotFound):
        store.namespace.lookup(env_of(store), b"f")
    assert leftover_staging(store) == []
    assert find_problems(store) == []


# -- the expected hash ---------------------------------------------------------------------------


def test_expected_hash_set_after_create_admits_the_right_content(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    store.xattrs.set(ino, EXPECT, blake3.blake3(DATA).hexdigest().encode())
    assert store.xattrs.get(ino, EXPECT) == blake3.blake3(DATA).hexdigest().encode()
    commit(store, staged)
    assert read(store, "f") == DATA
    with pytest.raises(errors.NoAttribute):  # it checked one commit, and is gone with it
        store.xattrs.get(ino, EXPECT)


def test_expected_hash_set_after_create_refuses_other_content_and_drops_the_file(store: Store) -> None:
    ino, staged = create(store, b"f", OTHER)
    store.xattrs.set(ino, EXPECT, blake3.blake3(DATA).hexdigest().encode())
    with pytest.raises(Refused) as caught:
        commit(store, staged)
    assert isinstance(caught.value, errors.HashMismatch)
    assert caught.value.errno == errno.EBADMSG
    assert caught.value.dropped == Dropped(env_of(store), b"f", ino)
    with pytest.raises(errors.NotFound):
        store.namespace.lookup(env_of(store), b"f")
    with pytest.raises(errors.NotFound):
        store.namespace.getattr(ino)
    assert stored(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_expected_hash_set_before_staging_refuses_other_content_and_keeps_the_old(store: Store) -> None:
    old = put(store, "f", DATA)
    ino = ino_of(store, b"f")
    store.xattrs.set(ino, EXPECT, blake3.blake3(DATA + b"!").hexdigest().encode())
    staged = store.writes.stage(ino, 0)
    staged.write(OTHER, 0)
    with pytest.raises(Refused) as caught:
        commit(store, staged)
    assert caught.value.dropped is None
    assert read(store, "f") == DATA
    assert store.resource(old).refcount == 1
    assert stored(store) == [digest_of(DATA)]
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_expected_hash_set_while_staged_refuses_other_content_and_keeps_the_old(store: Store) -> None:
    put(store, "f", DATA)
    ino = ino_of(store, b"f")
    staged = store.writes.stage(ino, 0)
    store.xattrs.set(ino, EXPECT, blake3.blake3(DATA).hexdigest().encode())
    staged.write(OTHER, 0)
    with pytest.raises(errors.HashMismatch):
        commit(store, staged)
    assert read(store, "f") == DATA
    assert stored(store) == [digest_of(DATA)]


def test_expected_hash_set_before_staging_admits_the_right_content(store: Store) -> None:
    put(store, "f", DATA)
    ino = ino_of(store, b"f")
    store.xattrs.set(ino, EXPECT, blake3.blake3(OTHER).hexdigest().encode())
    staged = store.writes.stage(ino, 0)
    assert store.xattrs.get(ino, EXPECT) == blake3.blake3(OTHER).hexdigest().encode()
    staged.write(OTHER, 0)
    commit(store, staged)
    assert read(store, "f") == OTHER


def test_an_expected_hash_removed_while_staged_checks_nothing(store: Store) -> None:
    ino, staged = create(store, b"f", OTHER)
    store.xattrs.set(ino, EXPECT, blake3.blake3(DATA).hexdigest().encode())
    store.xattrs.remove(ino, EXPECT)
    commit(store, staged)
    assert read(store, "f") == OTHER


# -- unlinked meanwhile ------------------------------------------------------------------------------


def test_commit_after_unlink_returns_none_and_stores_nothing(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    store.namespace.unlink(env_of(store), b"f")
    assert commit(store, staged) is None
    assert store.resource(blake3.blake3(DATA).hexdigest()) is None
    assert stored(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_commit_after_unlink_of_an_open_file_returns_none_and_stores_nothing(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    store.opens.opened(ino)
    store.namespace.unlink(env_of(store), b"f")
    assert commit(store, staged) is None
    assert stored(store) == []
    store.content.closed(ino)
    with pytest.raises(errors.NotFound):
        store.namespace.getattr(ino)
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_commit_of_content_held_elsewhere_after_unlink_leaves_it_alone(store: Store) -> None:
    h = put(store, "keep", DATA)
    _, staged = create(store, b"f", DATA)
    store.namespace.unlink(env_of(store), b"f")
    assert commit(store, staged) is None
    assert store.resource(h).refcount == 1
    assert read(store, "keep") == DATA
    assert find_problems(store) == []


# -- failures of the pack store ----------------------------------------------------------------------


def test_a_failed_append_leaves_the_old_content_and_nothing_else(failing: tuple[Store, FailingPackStore]) -> None:
    store, packs = failing
    old = put(store, "f", DATA)
    live = live_chunk_bytes(store)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    packs.on("append", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError) as caught:
        commit(store, staged)
    assert caught.value.errno == errno.ENOSPC
    assert read(store, "f") == DATA
    assert store.resource(old).refcount == 1
    assert store.resource(blake3.blake3(OTHER).hexdigest()) is None
    assert leftover_staging(store) == []
    assert stored(store) == [digest_of(DATA)]
    assert live_chunk_bytes(store) == live
    assert find_problems(store) == []


def test_an_append_failing_after_writing_leaves_dead_bytes_that_nothing_references(
    failing: tuple[Store, FailingPackStore],
) -> None:
    """The bytes reached the pack, the answer did not: no chunk row names them, and the pack stays usable.

    (What a stray blob left by a failed put was to whole-file blobs.)
    """
    store, packs = failing
    put(store, "f", DATA)
    live = live_chunk_bytes(store)
    [pack] = list(packs.packs())
    end = packs.end(pack)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    packs.on("append", OSError(errno.EIO, "lost the answer"), after=True)
    with pytest.raises(OSError) as caught:
        commit(store, staged)
    assert caught.value.errno == errno.EIO
    assert packs.end(pack) > end, "the append's bytes are in the pack"
    assert read(store, "f") == DATA
    assert stored(store) == [digest_of(DATA)]
    assert live_chunk_bytes(store) == live
    with store.catalog.read() as tx:
        assert tx.pack(pack).live == live, "the dead bytes count as nothing live"
    put(store, "g", OTHER)  # the same chunk, appended again, after the dead bytes
    assert read(store, "g") == OTHER
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_failed_commit_of_a_created_file_keeps_the_file_empty(failing: tuple[Store, FailingPackStore]) -> None:
    store, packs = failing
    ino, staged = create(store, b"f", DATA)
    packs.on("append", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError):
        commit(store, staged)
    assert store.namespace.getattr(ino).size == 0  # as open(O_CREAT) left it, like ext4 after a failed close
    assert stored(store) == []
    assert live_chunk_bytes(store) == 0
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_failed_put_by_path_removes_the_file_it_created(failing: tuple[Store, FailingPackStore]) -> None:
    store, packs = failing
    packs.on("append", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError):
        put(store, "new", DATA)
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "new")
    assert stored(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_failure_in_a_later_batch_releases_the_extents_of_the_earlier_ones(
    failing: tuple[Store, FailingPackStore],
) -> None:
    """A large content is stored in batches, each its own transaction: a failure after some undoes them all."""
    store, packs = failing
    put(store, "f", DATA)
    live = live_chunk_bytes(store)
    big = os.urandom(3 * BATCH_BYTES)
    appended = 0

    def full_in_the_second_batch() -> None:
        nonlocal appended
        appended += 1
        with store.catalog.read() as tx:
            recorded = any(True for _ in tx.extents(digest_of(big)))
        if recorded:
            raise OSError(errno.ENOSPC, "full")

    packs.on("append", full_in_the_second_batch, always=True)
    with pytest.raises(OSError) as caught:
        put(store, "big", big)
    assert caught.value.errno == errno.ENOSPC
    packs.clear()
    assert appended > 1, "the first batch was recorded before the failure"
    assert store.resource(blake3.blake3(big).hexdigest()) is None
    assert stored(store) == [digest_of(DATA)]
    assert live_chunk_bytes(store) == live
    assert read(store, "f") == DATA
    assert find_problems(store) == []


def test_a_pack_freed_while_a_commit_wants_one_of_its_chunks_gets_that_chunk_appended_again(
    failing: tuple[Store, FailingPackStore],
) -> None:
    """The commit found the chunks of KEPT stored; their last use went, and their pack with it, before its batch.

    The batch's transaction must not take a reference to a chunk whose row
    went, nor record one in a pack that went: it appends them again. (For
    whole-file blobs this was a put racing the deletion of the same blob.)
    """
    store, packs = failing
    kept = os.urandom(256 << 10)
    put(store, "kept", kept)
    store.chunks.close()  # seals the pack of kept's chunks: the next append opens another
    store.sync()
    [sealed] = list(packs.packs())
    grown = kept + os.urandom(64 << 10)  # shares all but the last of kept's chunks
    with store.catalog.read() as tx:
        kept_chunks = {extent.chunk for extent in tx.extents(digest_of(kept))}

    def the_last_use_goes() -> None:
        store.remove_for_environment(ENV, "kept")
        with store.catalog.read() as tx:
            assert tx.pack(sealed) is None, "the pack was freed"

    _, staged = create(store, b"f", grown)
    packs.on("append", the_last_use_goes)
    before = packs.calls["append"]
    commit(store, staged)
    with store.catalog.read() as tx:
        grown_chunks = {extent.chunk for extent in tx.extents(digest_of(grown))}
        again = {d for d in grown_chunks & kept_chunks if (chunk := tx.chunk(d)) is not None and chunk.pack != sealed}
    assert len(again) >= len(kept_chunks) - 1
    assert packs.calls["append"] > before
    assert sum(packs.end(pack) for pack in packs.packs()) >= len(grown), "every chunk appended again, raw"
    assert read(store, "f") == grown
    assert stored(store) == [digest_of(grown)]
    assert sealed not in set(packs.packs()), "the freed pack is deleted once durable"
    assert find_problems(store) == []


# -- crashes: the staging record survives ------------------------------------------------------------


def test_recovery_commits_what_a_crashed_process_wrote_to_a_created_file(store_path: Path) -> None:
    crash_before_commit(store_path, DATA, "")
    with Store.open(store_path) as store:
        assert read(store, "f") == DATA
        assert store.namespace.getattr(ino_of(store, b"f")).size == len(DATA)
        assert leftover_staging(store) == []
        assert stored(store) == [digest_of(DATA)]
        assert find_problems(store) == []


def test_recovery_discards_a_created_file_whose_bytes_are_not_the_expected(store_path: Path) -> None:
    wrong = blake3.blake3(OTHER).hexdigest()
    crash_before_commit(store_path, DATA, f"store.xattrs.set(ino, b'user.fusestore.expect', {wrong.encode()!r})")
    with Store.open(store_path) as store:
        with pytest.raises(errors.NotFound):
            store.namespace.lookup(env_of(store), b"f")
        assert leftover_staging(store) == []
        assert stored(store) == []
        assert find_problems(store) == []


def test_recovery_commits_a_created_file_whose_bytes_are_the_expected(store_path: Path) -> None:
    right = blake3.blake3(DATA).hexdigest()
    crash_before_commit(store_path, DATA, f"store.xattrs.set(ino, b'user.fusestore.expect', {right.encode()!r})")
    with Store.open(store_path) as store:
        assert read(store, "f") == DATA
        assert find_problems(store) == []


EDIT_THEN_CRASH = """
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size)
    edit = store.writes.stage(ino, 1 << 40)
    store.writes.write(edit, b"edited", 3)
"""


def test_recovery_commits_an_edit_a_crashed_process_left_over_its_base(store_path: Path) -> None:
    crash_before_commit(store_path, DATA, EDIT_THEN_CRASH)
    with Store.open(store_path) as store:
        assert read(store, "f") == DATA[:3] + b"edited" + DATA[9:]
        assert leftover_staging(store) == []
        assert stored(store) == [digest_of(DATA[:3] + b"edited" + DATA[9:])]
        assert find_problems(store) == []


def test_recovery_of_an_edit_whose_base_is_gone_keeps_the_file_and_says_so(
        store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only a damaged store lacks the content an edit's record holds: the edit is dropped, the open goes on."""
    crash_before_commit(store_path, DATA, EDIT_THEN_CRASH)
    env = lmdb.open(str(store_path / "catalog"), max_dbs=32)
    try:
        with env.begin(write=True) as txn:
            assert txn.delete(digest_of(DATA), db=env.open_db(b"resources", txn=txn))
    finally:
        env.close()
    with Store.open(store_path) as store:
        assert "the content an edit of" in caplog.text and "is gone; the edit is lost" in caplog.text
        assert leftover_staging(store) == []
        assert store.namespace.getattr(ino_of(store, b"f")).size == len(DATA), "the file keeps its committed content"


def test_after_a_power_loss_an_edit_keeps_what_its_fsync_covered_over_its_base(
        store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash_before_commit(store_path, DATA, f"""
        digest, size = staged.hash()
        store.writes.commit(staged, digest, size)
        edit = store.writes.stage(ino, 1 << 40)
        store.writes.write(edit, b"edited", 3)
        store.writes.write(edit, b"tail", {len(DATA)})
        store.writes.sync_staged(edit)
        store.sync()
        store.writes.write(edit, b"after the fsync", {len(DATA) + 4})
    """)
    restart_machine(store_path / "catalog")
    with caplog.at_level(logging.INFO, logger="fusestore"), Store.open(store_path) as store:
        assert read(store, "f") == DATA[:3] + b"edited" + DATA[9:] + b"tail"
        assert leftover_staging(store) == []
        assert find_problems(store) == []
    assert re.search(rf"kept the {len(DATA) + 4} bytes of /{ENV}/f .*its last fsync made durable", caplog.text)
