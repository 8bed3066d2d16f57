"""The read-only look at a store: it changes no byte, refuses a live store unless asked, and reads it all."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors
from fusestore.catalog import FORMAT_VERSION, LAYOUT_CHUNKS, ROOT_INO, Catalog, Extent
from fusestore.store.fsck import CHECKS, DEEP_CHECKS, run_checks
from fusestore.store.inspect import Entry, Inspection
from fusestore.store.owners import Owner

from .helpers import ENV, ENV2, put

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and directory under ``root``: (sha256 of a file's bytes, mtime, mode)."""
    seen = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            seen[str(path.relative_to(root))] = (digest, info.st_mtime_ns, info.st_mode)
    return seen


def read_everything(ins: Inspection) -> None:
    """Every scan and lookup an inspection offers, and every check."""
    list(ins.resources())
    list(ins.inodes())
    entries = list(ins.entries())
    list(ins.xattrs())
    list(ins.staging_records())
    ins.orphans()
    list(ins.unsynced())
    ins.freed()
    ins.meta()
    ins.blobs()
    ins.pool_debris()
    ins.staging_files()
    list(ins.extents())
    list(ins.pack_rows())
    list(ins.pack_index())
    ins.pack_files()
    ins.pack_debris()
    for entry in entries:
        ins.paths_of(entry.child)
    for res in ins.resources():
        ins.paths_using(res.digest)
    for chunk in ins.chunks():
        ins.paths_using_chunk(chunk.digest)
        ins.stored_bytes_of(chunk)
    assert run_checks(ins, CHECKS + DEEP_CHECKS) == []


@pytest.fixture
def closed_store(store_path: Path) -> Path:
    """A closed store with files, a hard link, a symlink, an attribute and shared content."""
    with Store.open(store_path) as store:
        put(store, "a/b", b"shared bytes")
        put(store, "copy", b"shared bytes", env=ENV2)
        put(store, "empty", b"")
        _, _, ino = store.locate_for_environment(ENV, "a/b")
        env_ino, _, _ = store.locate_for_environment(ENV, "empty")
        store.namespace.link(ino, env_ino, b"hard")
        store.xattrs.set(ino, b"user.note", b"hello")
        owner = store.namespace.getattr(env_ino)
        store.namespace.symlink(env_ino, b"sym", b"a/b", Owner(owner.uid, owner.gid))
    return store_path


def test_an_inspection_changes_no_byte_and_no_mtime(closed_store: Path) -> None:
    before = snapshot(closed_store)
    with Inspection.open(closed_store) as ins:
        read_everything(ins)
        assert not ins.live
    assert snapshot(closed_store) == before


def test_a_missing_lock_file_is_not_created(closed_store: Path) -> None:
    (closed_store / "lock").unlink()
    before = snapshot(closed_store)
    with Inspection.open(closed_store) as ins:
        read_everything(ins)
    assert snapshot(closed_store) == before


def test_a_store_owned_by_another_process_is_refused_unless_live_is_allowed(store_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import io, sys, time; from fusestore import Store; s = Store.open(sys.argv[1]); "
         f"s.put_for_environment({ENV!r}, 'x/y', io.BytesIO(b'live'), 4); "
         "print('open', flush=True); time.sleep(60)", str(store_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(errors.StoreLocked, match=f"process {holder.pid}"):
            with Inspection.open(store_path):
                pass
        with Inspection.open(store_path, allow_live=True) as ins:
            assert ins.live
            digest = blake3.blake3(b"live").digest()
            assert ins.paths_using(digest) == [f"/{ENV}/x/y"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Inspection.open(store_path) as ins:  # the owner is gone: its lock went with it
        assert not ins.live


def test_a_store_open_in_this_process_is_inspected_through_its_catalog(store: Store, store_path: Path) -> None:
    """LMDB must not open one environment twice in a process: even a live look goes through ``over``."""
    put(store, "f", b"data")
    for allow_live in (False, True):
        with pytest.raises(errors.StoreLocked, match="this process" if allow_live else f"process {os.getpid()}"):
            with Inspection.open(store_path, allow_live=allow_live):
                pass
    with Inspection.over(store.catalog, store.path) as ins:
        assert ins.paths_using(blake3.blake3(b"data").digest()) == [f"/{ENV}/f"]


def test_no_store_opens_while_an_inspection_looks(closed_store: Path) -> None:
    with Inspection.open(closed_store):
        other = subprocess.run(  # inspections share the lock (LMDB allows one per process)
            [sys.executable, "-c",
             "import sys; from fusestore.store.inspect import Inspection\n"
             "with Inspection.open(sys.argv[1]) as ins: print(len(ins.pack_files()))", str(closed_store)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert (other.returncode, other.stdout) == (0, "1\n"), other.stderr
        with pytest.raises(errors.StoreLocked, match="an inspection"):
            Store.open(closed_store)
    Store.open(closed_store).close()


def test_scans_return_what_puts_made(closed_store: Path) -> None:
    shared, empty = blake3.blake3(b"shared bytes").digest(), blake3.blake3(b"").digest()
    with Inspection.open(closed_store) as ins:
        resources = {res.digest: res for res in ins.resources()}
        assert {d: (r.refcount, r.length, r.complete) for d, r in resources.items()} == {
            shared: (2, 12, True), empty: (1, 0, True),
        }
        assert resources[shared].layout == LAYOUT_CHUNKS
        assert ins.blobs() == [] and ins.pool_debris() == [] and ins.staging_files() == []
        (chunk,) = ins.chunks()  # 12 bytes are one chunk, stored once for both files
        assert (chunk.digest, chunk.length, chunk.refcount) == (shared, 12, 1)
        assert ins.extents_of(shared) == [Extent(12, shared, 12, 1)] and ins.extents_of(empty) == []
        assert list(ins.extents()) == [(shared, Extent(12, shared, 12, 1))]
        (pack,) = ins.pack_rows()
        assert (pack.pack, pack.sealed, pack.live) == (chunk.pack, True, chunk.stored)
        assert [(f.pack, f.size) for f in ins.pack_files()] == [(pack.pack, pack.size)]
        assert list(ins.pack_index()) == [(pack.pack, chunk.offset, shared)] and ins.pack_debris() == []
        assert ins.stored_bytes_of(chunk) == b"shared bytes"  # too short to compress
        assert ins.paths_using_chunk(shared) == sorted([f"/{ENV}/a/b", f"/{ENV}/hard", f"/{ENV2}/copy"])
        env = next(e.child for e in ins.entries() if e.parent == ROOT_INO and e.name == ENV.encode())
        names = {e.name: e.child for e in ins.entries() if e.parent == env}
        assert sorted(names) == [b"a", b"empty", b"hard", b"sym"]
        a_dir = ins.inode(names[b"a"])
        assert a_dir is not None and a_dir.parent == env
        file_ino = names[b"hard"]
        assert Entry(names[b"a"], b"b", file_ino) in list(ins.entries())
        node = ins.inode(file_ino)
        assert node is not None and (node.nlink, node.content, node.size) == (2, shared, 12)
        symlink = ins.inode(names[b"sym"])
        assert symlink is not None and symlink.target == b"a/b"
        assert list(ins.xattrs()) == [(file_ino, b"user.note", b"hello")]
        assert list(ins.staging_records()) == [] and ins.orphans() == []
        assert list(ins.unsynced()) == [] and ins.freed() == []  # close is a checkpoint
        assert ins.meta()[b"format"] == str(FORMAT_VERSION).encode()


def test_reverse_lookups_give_paths_from_the_mount_root(closed_store: Path) -> None:
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")  # not UTF-8: kept by surrogateescape
    with Store.open(closed_store) as store:
        put(store, f"deep/{odd}", b"shared bytes")
    with Inspection.open(closed_store) as ins:
        shared = blake3.blake3(b"shared bytes").digest()
        assert ins.paths_using(shared) == sorted(
            [f"/{ENV}/a/b", f"/{ENV}/hard", f"/{ENV2}/copy", f"/{ENV}/deep/{odd}"]
        )
        assert os.fsencode(f"/{ENV}/deep/{odd}").endswith(b"/caf\xe9")
        (ino,) = [i for i in ins.inodes_using(shared) if len(ins.paths_of(i)) == 2]
        assert ins.paths_of(ino) == [f"/{ENV}/a/b", f"/{ENV}/hard"]
        assert ins.path_of(ROOT_INO) == "/" and ins.paths_of(ROOT_INO) == ["/"]
        deep = next(e.parent for e in ins.entries() if e.name == b"caf\xe9")
        assert ins.path_of(deep) == f"/{ENV}/deep"
        users = next(e.child for e in ins.entries() if e.parent == ROOT_INO and e.name == b".users")
        assert ins.path_of(users) == "/.users"
        assert ins.describe(ino) == f"/{ENV}/a/b (inode {ino})"
        assert ins.path_of(10**9) is None and ins.paths_of(10**9) == []


def test_a_repeated_chunk_is_one_extent_and_names_every_file_using_it(store_path: Path) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB: a chunk boundary depends on the bytes, so repeats cut alike
    with Store.open(store_path) as store:
        put(store, "zeros", bytes(1 << 20))
        put(store, "other", piece + b"tail")
    with Inspection.open(store_path) as ins:
        zeros = blake3.blake3(bytes(1 << 20)).digest()
        extents = ins.extents_of(zeros)
        assert sum(extent.count for extent in extents) > len(extents) >= 1, extents
        assert extents[-1].end == 1 << 20
        assert ins.extent_map()[zeros] == extents
        (chunk_digest,) = {extent.chunk for extent in extents if extent.count > 1}
        assert ins.contents_using_chunk(chunk_digest) == {zeros}
        assert ins.paths_using_chunk(chunk_digest) == [f"/{ENV}/zeros"]
        chunk = ins.chunk(chunk_digest)
        assert chunk is not None and chunk.refcount == sum(e.count for e in extents if e.chunk == chunk_digest)
        assert chunk.stored < chunk.length  # zeros compress
        assert ins.paths_using_chunk(bytes(32)) == []


def test_stored_bytes_of_a_chunk_of_a_cut_pack_are_what_is_left(closed_store: Path) -> None:
    with Inspection.open(closed_store) as ins:
        (chunk,) = ins.chunks()
        os.truncate(ins.pack_files()[0].path, chunk.offset + 5)
        assert ins.stored_bytes_of(chunk) == b"share"
        os.unlink(ins.pack_files()[0].path)
        with pytest.raises(FileNotFoundError):
            ins.stored_bytes_of(chunk)


# -- what is not a store ---------------------------------------------------------------------


def test_a_missing_directory_is_no_store(tmp_path: Path) -> None:
    with pytest.raises(errors.NoStore):
        with Inspection.open(tmp_path / "nothing"):
            pass
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(errors.NoStore):
        with Inspection.open(tmp_path / "file"):
            pass


def test_a_directory_that_is_not_a_store_is_no_store_and_stays_empty(tmp_path: Path) -> None:
    with pytest.raises(errors.NoStore) as raised:
        with Inspection.open(tmp_path):
            pass
    assert raised.value.errno == errors.NotFound.errno
    assert list(tmp_path.iterdir()) == []


def test_a_catalog_that_is_not_lmdb_is_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "data.mdb").write_bytes(b"not lmdb" * 4096)
    before = snapshot(tmp_path)
    with pytest.raises(errors.UnknownFormat):
        with Inspection.open(tmp_path):
            pass
    assert snapshot(tmp_path) == before


def test_an_empty_catalog_is_no_store(tmp_path: Path) -> None:
    Catalog(tmp_path / "catalog").close()  # an LMDB environment that no store initialised
    with pytest.raises(errors.NoStore, match="never initialised"):
        with Inspection.open(tmp_path):
            pass


def test_a_store_of_an_unknown_format_version_is_refused_untouched(closed_store: Path) -> None:
    catalog = Catalog(closed_store / "catalog")
    with catalog.write() as tx:
        tx.meta_put(b"format", b"99")
    catalog.close()
    before = snapshot(closed_store)
    with pytest.raises(errors.UnknownFormat, match="format '99'"):
        with Inspection.open(closed_store):
            pass
    assert snapshot(closed_store) == before


# -- the read-only catalog ------------------------------------------------------------------------


@pytest.fixture
def readonly(closed_store: Path) -> Iterator[Catalog]:
    catalog = Catalog(closed_store / "catalog", readonly=True)
    yield catalog
    catalog.close()


def test_a_read_only_catalog_refuses_writes(readonly: Catalog) -> None:
    with pytest.raises(errors.ReadOnly) as raised:
        with readonly.write():
            pass
    assert raised.value.errno == errno.EROFS
    readonly.sync()  # a checkpoint of a read-only catalog has nothing to do


def test_a_read_only_catalog_is_never_created(tmp_path: Path) -> None:
    with pytest.raises(errors.NoStore):
        Catalog(tmp_path / "catalog", readonly=True)
    assert not (tmp_path / "catalog").exists()
