"""The resource catalog's seed semantics, the format check and the store lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import lmdb
import pytest

from fusestore import Store, errors
from fusestore.catalog.catalog import RESERVE_MIN, Catalog

DIGEST = blake3.blake3(b"content").digest()


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog")
    yield cat
    cat.close()


def test_put_creates_pending_resource_with_refcount_one(catalog: Catalog) -> None:
    with catalog.write() as tx:
        res = tx.put(DIGEST, 7)
    assert (res.refcount, res.complete, res.length) == (1, False, 7)


def test_get_and_find_of_pending_resource_say_upload_pending(catalog: Catalog) -> None:
    with catalog.write() as tx:
        tx.put(DIGEST, 7)
    with catalog.read() as tx:
        with pytest.raises(errors.UploadPending):
            tx.get(DIGEST)
        with pytest.raises(errors.UploadPending):
            tx.find(DIGEST.hex())


def test_get_and_find_of_unknown_resource_say_not_found(catalog: Catalog) -> None:
    with catalog.read() as tx:
        with pytest.raises(errors.NotFound):
            tx.get(DIGEST)
        with pytest.raises(errors.NotFound):
            tx.find(DIGEST.hex())


def test_put_again_increments_and_upload_complete_once(catalog: Catalog) -> None:
    with catalog.write() as tx:
        tx.put(DIGEST, 7)
        assert tx.put(DIGEST, 7).refcount == 2
        tx.upload_complete(DIGEST)
        with pytest.raises(errors.AlreadyExists):
            tx.upload_complete(DIGEST)
    with catalog.read() as tx:
        assert tx.find(DIGEST.hex()) == DIGEST
        assert tx.get(DIGEST).refcount == 2


def test_put_with_other_length_is_length_mismatch(catalog: Catalog) -> None:
    with catalog.write() as tx:
        tx.put(DIGEST, 7)
    with pytest.raises(errors.LengthMismatch):
        with catalog.write() as tx:
            tx.put(DIGEST, 8)
    with catalog.read() as tx:
        assert tx.resource(DIGEST).refcount == 1


def test_remove_decrements_and_deletes_at_zero(catalog: Catalog) -> None:
    with catalog.write() as tx:
        tx.put(DIGEST, 7)
        tx.put(DIGEST, 7)
        assert tx.remove(DIGEST) is None
        gone = tx.remove(DIGEST)
        assert gone is not None and gone.digest == DIGEST and gone.refcount == 0
        assert tx.resource(DIGEST) is None
        with pytest.raises(errors.NotFound):
            tx.remove(DIGEST)


def test_aborted_transaction_changes_nothing(catalog: Catalog) -> None:
    with pytest.raises(RuntimeError):
        with catalog.write() as tx:
            tx.put(DIGEST, 7)
            raise RuntimeError("abort")
    with catalog.read() as tx:
        assert tx.resource(DIGEST) is None


def test_store_of_unknown_format_is_refused_untouched(tmp_path: Path) -> None:
    """Refused before anything is written: no database is made, not one byte of the catalog changes."""
    path = tmp_path / "store"
    Store.open(path).close()
    env = lmdb.open(str(path / "catalog"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
        txn.drop(env.open_db(b"freed", txn=txn), delete=True)
    env.close()
    before = (path / "catalog" / "data.mdb").read_bytes()
    with pytest.raises(errors.UnknownFormat, match="format '99'"):
        Store.open(path)
    with pytest.raises(errors.UnknownFormat, match="format '99'"):
        Catalog(path / "catalog")
    assert (path / "catalog" / "data.mdb").read_bytes() == before


def test_a_first_open_that_stopped_before_writing_the_format_opens_as_new(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir(mode=0o700)  # as that first open made it
    (tmp_path / "store" / "catalog").mkdir()
    env = lmdb.open(str(tmp_path / "store" / "catalog"), max_dbs=16)
    env.open_db(b"meta")
    env.open_db(b"inodes")
    env.close()
    with Store.open(tmp_path / "store") as store:
        assert read_root(store) == (b".global", b".users")


def read_root(store: Store) -> tuple[bytes, ...]:
    return tuple(name for name, _ in store.namespace.readdir(1, b"", 10))


def test_a_catalog_with_data_but_no_format_is_refused(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "catalog"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"some", b"thing")
    env.close()
    with pytest.raises(errors.UnknownFormat, match="format none"):
        Catalog(tmp_path / "catalog")


def test_second_open_is_store_locked_naming_the_owner(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s"):
        with pytest.raises(errors.StoreLocked, match=f"process {os.getpid()}"):
            Store.open(tmp_path / "s")


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from fusestore import Store; s = Store.open(sys.argv[1]); "
         "print('open', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(errors.StoreLocked, match=f"process {holder.pid}"):
            Store.open(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Store.open(path) as store:
        assert store.resources() == []


def test_disk_space_stays_reserved_past_the_catalog_end(tmp_path: Path) -> None:
    """Deleting files on a full disk needs new catalog pages: they come from this reserve."""
    catalog = Catalog(tmp_path / "catalog")
    try:
        data = os.stat(tmp_path / "catalog" / "data.mdb")
        assert data.st_blocks * 512 >= data.st_size + RESERVE_MIN
        with catalog.write() as tx:
            for i in range(2000):
                tx.set_xattr(i, b"user.x", os.urandom(1000))
        catalog.sync()  # a checkpoint tops the reserve up as the file grows
        grown = os.stat(tmp_path / "catalog" / "data.mdb")
        assert grown.st_size > data.st_size
        assert grown.st_blocks * 512 >= grown.st_size + RESERVE_MIN
    finally:
        catalog.close()
