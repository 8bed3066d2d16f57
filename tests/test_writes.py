"""The one commit path (``store.writes``) and ``Namespace.create``, in-process on real stores.

Faults come from ``FailingBlobStore`` cues; crashes are real child processes
that end with ``os._exit`` before their store is closed.
"""

from __future__ import annotations

import errno
import io
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import blake3
import pytest

from fusestore import Store, errors
from fusestore.catalog import ROOT_INO
from fusestore.pool import FailingBlobStore, LocalBlobStore, StagingFile
from fusestore.store.attributes import Attributes
from fusestore.store.fsck import find_problems
from fusestore.store.owners import Owner
from fusestore.store.writes import Dropped, Refused

from .helpers import ENV, leftover_staging, put, read

OWNER = Owner(1000, 1000)
DATA = b"committed content " * 1000
OTHER = b"other content " * 700
EXPECT = b"user.fusestore.expect"


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def env_of(store: Store) -> int:
    """The inode of ENV, made when missing."""
    try:
        return store.namespace.lookup(ROOT_INO, ENV.encode()).ino
    except errors.NotFound:
        return store.namespace.mkdir(ROOT_INO, ENV.encode(), 0o755, OWNER).ino


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


def blobs(store: Store) -> list[bytes]:
    """The pool once a checkpoint has done the deletions waiting for it."""
    store.sync()
    return list(store.blobs.digests())


@pytest.fixture
def failing(store_path: Path) -> Iterator[tuple[Store, FailingBlobStore]]:
    blob_store = FailingBlobStore(LocalBlobStore(store_path / "pool"))
    with Store.open(store_path, blobs=blob_store) as opened:
        yield opened, blob_store


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
    assert blobs(store) == [digest_of(DATA)]
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_created_file_takes_the_mode_and_owner_it_was_created_with(store: Store) -> None:
    attrs, staged = store.namespace.create(env_of(store), b"f", 0o640, OWNER)
    assert (attrs.mode & 0o7777, attrs.uid, attrs.gid, attrs.nlink) == (0o640, 1000, 1000, 1)
    assert store.staging.names() == [staged.name]
    store.writes.abandon(staged, remove_created=False)


def test_committing_existing_content_dedups_to_one_blob(store: Store) -> None:
    h = put(store, "a", DATA)
    _, staged = create(store, b"b", DATA)
    commit(store, staged)
    assert read(store, "b") == DATA
    assert blobs(store) == [digest_of(DATA)]
    assert store.resource(h).refcount == 2
    assert find_problems(store) == []


def test_committing_over_old_content_releases_it(store: Store) -> None:
    old = put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    commit(store, staged)
    assert read(store, "f") == OTHER
    assert store.resource(old) is None
    assert blobs(store) == [digest_of(OTHER)]


def test_an_empty_commit_stores_no_blob(store: Store) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    commit(store, staged)
    assert read(store, "f") == b""
    assert blobs(store) == []
    assert find_problems(store) == []


def test_commit_keeps_the_mtime_it_is_given(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size, mtime_ns=1_234_567_890_123_456_789)
    assert store.namespace.getattr(ino).mtime_ns == 1_234_567_890_123_456_789


def test_stage_copies_the_first_bytes_of_the_current_content(store: Store) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 100)
    assert staged.read(len(DATA), 0) == DATA[:100]
    staged.write(b"tail", 100)
    commit(store, staged)
    assert read(store, "f") == DATA[:100] + b"tail"


def test_stage_copies_at_most_the_whole_content(store: Store) -> None:
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 1 << 40)
    assert staged.read(2 * len(DATA), 0) == DATA
    store.writes.abandon(staged)
    assert read(store, "f") == DATA


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
    assert blobs(store) == []
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
    assert blobs(store) == [digest_of(DATA)]
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
    assert blobs(store) == [digest_of(DATA)]


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
    assert blobs(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_commit_after_unlink_of_an_open_file_returns_none_and_stores_nothing(store: Store) -> None:
    ino, staged = create(store, b"f", DATA)
    store.opens.opened(ino)
    store.namespace.unlink(env_of(store), b"f")
    assert commit(store, staged) is None
    assert blobs(store) == []
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


# -- failures of the blob store ----------------------------------------------------------------------


def test_a_failed_put_leaves_the_old_content_and_nothing_else(failing: tuple[Store, FailingBlobStore]) -> None:
    store, blob_store = failing
    old = put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    blob_store.on("put", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError) as caught:
        commit(store, staged)
    assert caught.value.errno == errno.ENOSPC
    assert read(store, "f") == DATA
    assert store.resource(old).refcount == 1
    assert store.resource(blake3.blake3(OTHER).hexdigest()) is None
    assert leftover_staging(store) == []
    assert blobs(store) == [digest_of(DATA)]
    assert find_problems(store) == []


def test_a_put_failing_after_storing_deletes_the_stray_blob(failing: tuple[Store, FailingBlobStore]) -> None:
    store, blob_store = failing
    put(store, "f", DATA)
    staged = store.writes.stage(ino_of(store, b"f"), 0)
    staged.write(OTHER, 0)
    blob_store.on("put", OSError(errno.EIO, "lost the answer"), after=True)
    with pytest.raises(OSError):
        commit(store, staged)
    assert read(store, "f") == DATA
    assert blobs(store) == [digest_of(DATA)]
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_failed_commit_of_a_created_file_keeps_the_file_empty(failing: tuple[Store, FailingBlobStore]) -> None:
    store, blob_store = failing
    ino, staged = create(store, b"f", DATA)
    blob_store.on("put", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError):
        commit(store, staged)
    assert store.namespace.getattr(ino).size == 0  # as open(O_CREAT) left it, like ext4 after a failed close
    assert blobs(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_failed_put_by_path_removes_the_file_it_created(failing: tuple[Store, FailingBlobStore]) -> None:
    store, blob_store = failing
    blob_store.on("put", OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError):
        put(store, "new", DATA)
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "new")
    assert blobs(store) == []
    assert leftover_staging(store) == []
    assert find_problems(store) == []


def test_a_publish_racing_the_deletion_of_the_same_content_keeps_the_blob(
    failing: tuple[Store, FailingBlobStore],
) -> None:
    """The last other reference (a checked upload's reservation) goes right before the put of the same bytes.

    The reservation's release commits and its blob deletion then waits on
    the digest's stripe, which the publishing writer holds: once the writer
    committed, the deleter finds the content complete and deletes nothing.
    """
    store, blob_store = failing
    h = blake3.blake3(DATA).hexdigest()
    go = threading.Event()

    class ClientGoneAway(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
            go.wait(10)
            raise OSError(errno.ECONNRESET, "the uploader went away")

    def checked_upload() -> None:
        with pytest.raises(OSError):
            store.put_for_environment_and_check_hash(ENV, "upload", cast(BinaryIO, ClientGoneAway()),
                                                     len(DATA), h)

    uploader = threading.Thread(target=checked_upload)
    uploader.start()
    wait_for(lambda: store.resource(h) is not None)  # the reservation: the content's only reference
    assert not store.resource(h).complete

    def the_upload_gives_up() -> None:
        go.set()
        wait_for(lambda: store.resource(h) is None)  # its release committed ...
        assert digest_of(DATA) in store.content.deleting()  # ... and its blob deletion has not run

    _, staged = create(store, b"f", DATA)
    blob_store.on("put", the_upload_gives_up)
    commit(store, staged)
    uploader.join(10)
    assert not uploader.is_alive()
    assert blob_store.calls["put"] == 1
    assert blobs(store) == [digest_of(DATA)]
    assert store.resource(h).refcount == 1
    assert read(store, "f") == DATA
    with pytest.raises(errors.NotFound):
        store.namespace.lookup(env_of(store), b"upload")
    assert find_problems(store) == []


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


# -- crashes: the staging record survives ------------------------------------------------------------


def crash_before_commit(store_path: Path, steps: str) -> None:
    """In a child process: create f in ENV, write DATA to it, run ``steps``, and die without committing."""
    script = textwrap.dedent(f"""
        import os, sys
        from fusestore import Store
        from fusestore.catalog import ROOT_INO
        from fusestore.store.owners import Owner
        store = Store.open(sys.argv[1])
        env = store.namespace.mkdir(ROOT_INO, {ENV.encode()!r}, 0o755, Owner(0, 0)).ino
        attrs, staged = store.namespace.create(env, b"f", 0o644, Owner(0, 0))
        staged.write({DATA!r}, 0)
        ino = attrs.ino
    """) + textwrap.dedent(steps) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", script, str(store_path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)


def test_recovery_commits_what_a_crashed_process_wrote_to_a_created_file(store_path: Path) -> None:
    crash_before_commit(store_path, "")
    with Store.open(store_path) as store:
        assert read(store, "f") == DATA
        assert store.namespace.getattr(ino_of(store, b"f")).size == len(DATA)
        assert leftover_staging(store) == []
        assert blobs(store) == [digest_of(DATA)]
        assert find_problems(store) == []


def test_recovery_discards_a_created_file_whose_bytes_are_not_the_expected(store_path: Path) -> None:
    wrong = blake3.blake3(OTHER).hexdigest()
    crash_before_commit(store_path, f"store.xattrs.set(ino, b'user.fusestore.expect', {wrong.encode()!r})")
    with Store.open(store_path) as store:
        with pytest.raises(errors.NotFound):
            store.namespace.lookup(env_of(store), b"f")
        assert leftover_staging(store) == []
        assert blobs(store) == []
        assert find_problems(store) == []


def test_recovery_commits_a_created_file_whose_bytes_are_the_expected(store_path: Path) -> None:
    right = blake3.blake3(DATA).hexdigest()
    crash_before_commit(store_path, f"store.xattrs.set(ino, b'user.fusestore.expect', {right.encode()!r})")
    with Store.open(store_path) as store:
        assert read(store, "f") == DATA
        assert find_problems(store) == []
