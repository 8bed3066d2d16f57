"""The managed storage through its public calls, on real stores."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors

from .helpers import ENV, ENV2, leftover_staging, put, read, stored_contents

DATA = b"the same bytes, twice" * 100
OTHER = b"something else entirely" * 50


def blob_count(store: Store) -> int:
    """Distinct non-empty contents whose chunks the store holds."""
    return len(stored_contents(store))


def test_put_returns_blake3_hex_and_reads_back(store: Store) -> None:
    assert put(store, "dir/file.bin", DATA) == blake3.blake3(DATA).hexdigest()
    assert read(store, "dir/file.bin") == DATA


def test_content_lives_in_a_pack_compressed_where_that_pays(store: Store, store_path: Path) -> None:
    h = put(store, "f", DATA)
    store.sync()
    packs = [p for p in (store_path / "packs").iterdir()]
    assert len(packs) == 1 and len(packs[0].name) == 16
    assert 0 < packs[0].stat().st_size < len(DATA) // 4, "repeated text compresses"
    assert not (store_path / "pool").exists(), "a store made with chunks has no whole-file blobs"
    assert stored_contents(store) == [bytes.fromhex(h)]


def test_same_content_under_two_paths_is_one_blob_with_refcount_two(store: Store) -> None:
    h = put(store, "a", DATA)
    put(store, "b/c", DATA, env=ENV2)
    assert store.resource(h).refcount == 2
    assert blob_count(store) == 1


def test_removing_one_keeps_the_blob_removing_both_deletes_it(store: Store) -> None:
    h = put(store, "a", DATA)
    put(store, "b", DATA)
    store.remove_for_environment(ENV, "a")
    assert store.resource(h).refcount == 1
    assert read(store, "b") == DATA
    store.remove_for_environment(ENV, "b")
    assert store.resource(h) is None
    assert blob_count(store) == 0
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "b")


def test_same_path_with_different_data_replaces_and_frees(store: Store) -> None:
    old = put(store, "f", DATA)
    new = put(store, "f", OTHER)
    assert read(store, "f") == OTHER
    assert store.resource(old) is None
    assert store.resource(new).refcount == 1
    assert blob_count(store) == 1


def test_unknown_length_reads_to_eof(store: Store) -> None:
    store.put_for_environment(ENV, "f", io.BytesIO(DATA), -1)
    assert read(store, "f") == DATA


def test_known_length_stores_no_byte_beyond_it(store: Store) -> None:
    h = store.put_for_environment(ENV, "f", io.BytesIO(DATA), 10)
    assert read(store, "f") == DATA[:10]
    assert h == blake3.blake3(DATA[:10]).hexdigest()


def test_reader_ending_early_is_an_error_and_stores_nothing(store: Store) -> None:
    with pytest.raises(errors.LengthMismatch):
        store.put_for_environment(ENV, "f", io.BytesIO(DATA), len(DATA) + 1)
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "f")
    assert store.resources() == [] and blob_count(store) == 0
    assert leftover_staging(store) == []


def test_negative_length_other_than_minus_one_is_refused(store: Store) -> None:
    with pytest.raises(errors.LengthMismatch):
        store.put_for_environment(ENV, "f", io.BytesIO(DATA), -2)


def test_empty_content_needs_no_blob(store: Store) -> None:
    h = put(store, "empty", b"")
    assert h == blake3.blake3(b"").hexdigest()
    assert read(store, "empty") == b""
    assert blob_count(store) == 0
    store.remove_for_environment(ENV, "empty")
    assert store.resources() == []


def test_large_put_streams_through_a_bounded_buffer(store: Store) -> None:
    class CountingZeros(io.RawIOBase):
        """Yields zeros and remembers the largest read asked of it."""

        def __init__(self, total: int) -> None:
            self.left, self.largest = total, 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            assert size > 0, "the store must never ask for everything at once"
            self.largest = max(self.largest, size)
            size = min(size, self.left)
            self.left -= size
            return bytes(size)

    reader = CountingZeros(64 << 20)
    store.put_for_environment(ENV, "zeros", reader, -1)
    assert reader.largest <= 1 << 20
    stream, length = store.get_for_environment(ENV, "zeros")
    with stream:
        assert length == 64 << 20


def test_checked_put_with_right_hash_stores(store: Store) -> None:
    h = blake3.blake3(DATA).hexdigest()
    assert store.put_for_environment_and_check_hash(ENV, "f", io.BytesIO(DATA), len(DATA), h) == h
    assert read(store, "f") == DATA


@pytest.mark.parametrize("length", [len(DATA), -1])
def test_checked_put_with_wrong_hash_stores_nothing(store: Store, length: int) -> None:
    wrong = blake3.blake3(OTHER).hexdigest()
    with pytest.raises(errors.HashMismatch):
        store.put_for_environment_and_check_hash(ENV, "f", io.BytesIO(DATA), length, wrong)
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "f")
    assert store.resources() == [] and blob_count(store) == 0
    assert leftover_staging(store) == []


def test_checked_put_with_wrong_hash_keeps_old_content(store: Store) -> None:
    put(store, "f", OTHER)
    wrong = blake3.blake3(b"nope").hexdigest()
    with pytest.raises(errors.HashMismatch):
        store.put_for_environment_and_check_hash(ENV, "f", io.BytesIO(DATA), len(DATA), wrong)
    assert read(store, "f") == OTHER
    assert len(store.resources()) == 1 and blob_count(store) == 1


def test_checked_put_with_malformed_hash_is_invalid_name(store: Store) -> None:
    with pytest.raises(errors.InvalidName):
        store.put_for_environment_and_check_hash(ENV, "f", io.BytesIO(DATA), len(DATA), "abc")


class BlockingReader(io.RawIOBase):
    """A reader that hands out its bytes only after the test lets it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.started = threading.Event()
        self.release = threading.Event()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.started.set()
        assert self.release.wait(10)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_get_while_upload_is_pending_says_upload_pending(store: Store) -> None:
    reader = BlockingReader(DATA)
    h = blake3.blake3(DATA).hexdigest()
    worker = threading.Thread(
        target=store.put_for_environment_and_check_hash, args=(ENV, "f", reader, len(DATA), h)
    )
    worker.start()
    try:
        assert reader.started.wait(10)
        with pytest.raises(errors.UploadPending):
            store.get_for_environment(ENV, "f")
        with pytest.raises(errors.UploadPending):
            store.put_for_environment_request(ENV, "g", h)
    finally:
        reader.release.set()
        worker.join()
    assert read(store, "f") == DATA


def test_file_where_directory_stands_and_under_a_file(store: Store) -> None:
    put(store, "d/f", DATA)
    with pytest.raises(errors.IsADirectory):
        put(store, "d", DATA)
    with pytest.raises(errors.NotADirectory):
        put(store, "d/f/g", DATA)
    with pytest.raises(errors.IsADirectory):
        store.get_for_environment(ENV, "d")
    with pytest.raises(errors.NotADirectory):
        store.get_for_environment(ENV, "d/f/g")
    with pytest.raises(errors.IsADirectory):
        store.remove_for_environment(ENV, "d")


def test_remove_of_missing_path_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.remove_for_environment(ENV, "missing")


@pytest.mark.parametrize(
    "env", ["", "not-a-uuid", "0F8FAD5B-D9CB-469F-A165-70867728950E", "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "0f8fad5bd9cb469fa16570867728950e"]
)
def test_environment_must_be_canonical_lowercase_uuid(store: Store, env: str) -> None:
    with pytest.raises(errors.InvalidName):
        store.put_for_environment(env, "f", io.BytesIO(DATA), len(DATA))
    with pytest.raises(ValueError):
        store.get_for_environment(env, "f")


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/.", "nul\0byte"])
def test_invalid_paths_are_refused(store: Store, path: str) -> None:
    with pytest.raises(errors.InvalidName):
        put(store, path, DATA)
    assert store.resources() == []


def test_component_over_255_bytes_is_name_too_long_but_long_paths_work(store: Store) -> None:
    with pytest.raises(errors.NameTooLong):
        put(store, "x" * 256, DATA)
    deep = "/".join(["d" * 200] * 30)
    put(store, deep, DATA)
    assert read(store, deep) == DATA


def test_user_and_global_namespaces(store: Store) -> None:
    store.put_for_user("alice", "notes/a.txt", io.BytesIO(DATA), len(DATA))
    store.put_global("shared/a.txt", io.BytesIO(DATA), len(DATA))
    reader, _ = store.get_for_user("alice", "notes/a.txt")
    with reader:
        assert reader.read() == DATA
    reader, _ = store.get_global("shared/a.txt")
    with reader:
        assert reader.read() == DATA
    assert blob_count(store) == 1
    with pytest.raises(errors.NotFound):
        store.get_for_user("bob", "notes/a.txt")
    store.remove_for_user("alice", "notes/a.txt")
    store.remove_global("shared/a.txt")
    assert blob_count(store) == 0


@pytest.mark.parametrize("user", ["", "a/b", "nul\0", ".", ".."])
def test_invalid_user_names(store: Store, user: str) -> None:
    with pytest.raises(errors.InvalidName):
        store.put_for_user(user, "f", io.BytesIO(DATA), len(DATA))


def test_reopened_store_sees_everything(store_path: Path) -> None:
    with Store.open(store_path) as store:
        h = put(store, "a/b", DATA)
        put(store, "c", DATA)
        put(store, "d", OTHER)
    with Store.open(store_path) as store:
        assert read(store, "a/b") == DATA and read(store, "c") == DATA and read(store, "d") == OTHER
        assert store.resource(h).refcount == 2
        store.remove_for_environment(ENV, "c")
        assert store.resource(h).refcount == 1


def test_failing_reader_leaves_nothing_behind(store: Store) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError(5, "disk on fire")

    with pytest.raises(OSError):
        store.put_for_environment(ENV, "f", Broken(), -1)
    with pytest.raises(errors.NotFound):
        store.get_for_environment(ENV, "f")
    assert leftover_staging(store) == []


def test_errors_carry_the_errno_the_filesystem_returns() -> None:
    import errno

    expected = {
        errors.NotFound: errno.ENOENT, errors.UploadPending: errno.EAGAIN,
        errors.RequestExpired: errno.ETIMEDOUT, errors.ResponseMismatch: errno.EACCES,
        errors.ResourceDeleted: errno.ESTALE, errors.HashMismatch: errno.EBADMSG,
        errors.LengthMismatch: errno.EINVAL, errors.InvalidName: errno.EINVAL,
        errors.TooManyRequests: errno.EBUSY, errors.IsADirectory: errno.EISDIR,
        errors.NotADirectory: errno.ENOTDIR, errors.AlreadyExists: errno.EEXIST,
        errors.StoreLocked: errno.EBUSY, errors.NameTooLong: errno.ENAMETOOLONG,
    }
    for cls, code in expected.items():
        assert issubclass(cls, errors.StoreError) and cls.errno == code
    assert issubclass(errors.InvalidName, ValueError)
