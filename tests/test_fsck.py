"""Each fsck check finds the damage it is named for, on a real store damaged on disk; a healthy store has none.

The healthy store holds chunked contents (small files, one of several
chunks, one that repeats a chunk, one of zeros, one deleted, hard links) and
one whole-file blob of an older store, which the blob checks are about.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import blake3
import lmdb
import pytest

from fusestore import Store
from fusestore.catalog import (
    COMPLETE,
    LAYOUT_WHOLE_BLOB,
    LOST,
    PENDING,
    ROOT_INO,
    Catalog,
    Chunk,
    Extent,
    Inode,
    Pack,
    Resource,
    StagingRecord,
    Txn,
)
from fusestore.catalog.records import u64
from fusestore.store.fsck import CHECKS, DEEP_CHECKS, find_problems, run_checks
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner
from fusestore.store.repair import recovery_plan

from .helpers import ENV, ENV2, put

SHARED = b"shared bytes"
BIG = blake3.blake3(b"big").digest(length=256 << 10)  # about 16 chunks of the default 16 KiB
TWICE = BIG[:96 << 10] * 2  # its second half repeats the chunks of its first (the cuts fall alike again)
ZEROS = bytes(1 << 20)  # 16 chunks of 64 KiB of zeros: one extent
OLD = b"a whole-file blob of a format-2 store"
STAGING_NAME = "0123456789abcdef0123456789abcdef"


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


@dataclass
class Healthy:
    """A closed store with a bit of everything, and the inodes the damages aim at."""

    path: Path
    env: int  # /ENV
    directory: int  # /ENV/a
    file: int  # /ENV/a/b and /ENV/hard: content SHARED
    empty: int  # /ENV/empty

    def blob(self, data: bytes = OLD) -> Path:
        h = blake3.blake3(data).hexdigest()
        return self.path / "pool" / h[:2] / h[2:4] / h

    def chunk(self, data: bytes = SHARED, index: int = 0) -> Chunk:
        """The chunk of the ``index``-th extent of the content ``data``."""
        with Inspection.open(self.path) as ins:
            chunk = ins.chunk(ins.extents_of(digest_of(data))[index].chunk)
        assert chunk is not None
        return chunk

    def pack_file(self, pack: int) -> Path:
        return self.path / "packs" / f"{pack:016x}"


@pytest.fixture
def healthy(store_path: Path) -> Healthy:
    return make_healthy(store_path)


def make_healthy(store_path: Path) -> Healthy:
    with Store.open(store_path) as store:
        put(store, "a/b", SHARED)
        put(store, "copy", SHARED, env=ENV2)
        put(store, "empty", b"")
        put(store, "x/y/deep", b"deep")
        put(store, "z/other", b"other")
        store.put_for_user("alice", "notes", io.BytesIO(b"mine"), 4)
        store.put_global("everyone", io.BytesIO(b"ours"), 4)
        directory, _, file = store.locate_for_environment(ENV, "a/b")
        env, _, empty = store.locate_for_environment(ENV, "empty")
        store.namespace.link(file, env, b"hard")
        store.xattrs.set(file, b"user.note", b"hello")
        store.namespace.symlink(env, b"sym", b"a/b", Owner(0, 0))
        x, _, _ = store.locate_for_environment(ENV, "x/y")
        z, _, _ = store.locate_for_environment(ENV, "z/other")
        store.namespace.rename(x, b"y", z, b"y", 0)  # a directory moved: its parent field follows
        put(store, "open", b"still open")
        _, _, opened = store.locate_for_environment(ENV, "open")
        store.opens.opened(opened)
        store.remove_for_environment(ENV, "open")  # unlinked while open: an orphan until recovery
        put(store, "big", BIG)
        put(store, "twice", TWICE)
        put(store, "zeros", ZEROS)
        put(store, "gone", b"deleted, and its chunk with it")
        store.remove_for_environment(ENV, "gone")
    healthy = Healthy(store_path, env, directory, file, empty)
    add_whole_blob_file(healthy)
    return healthy


def add_whole_blob_file(h: Healthy) -> None:
    """/ENV/old, whose content is a whole-file blob in ``pool/`` as a store of format 2 kept it."""
    h.blob().parent.mkdir(parents=True)
    h.blob().write_bytes(OLD)
    with catalog_write(h.path) as tx:
        ino = tx.new_ino()
        tx.save_inode(Inode(ino, stat.S_IFREG | 0o644, 0, 0, size=len(OLD), space=h.env, content=digest_of(OLD)))
        tx.add_entry(h.env, b"old", ino)
        tx.save_resource(Resource(digest_of(OLD), len(OLD), 1, COMPLETE, LAYOUT_WHOLE_BLOB))


def problems(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with Inspection.open(path) as ins:
        for problem in run_checks(ins, CHECKS + DEEP_CHECKS):
            found.setdefault(problem.check, []).append(problem.message)
    return found


@contextmanager
def catalog_write(path: Path) -> Iterator[Txn]:
    catalog = Catalog(path / "catalog")
    try:
        with catalog.write() as tx:
            yield tx
    finally:
        catalog.close()


Row = TypeVar("Row")


def changed(row: Row | None, fields: dict[str, object]) -> Row:
    """The catalog row, which must be there, with ``fields`` set (behind the store's back: a damage to find)."""
    assert row is not None
    for name, value in fields.items():
        setattr(row, name, value)
    return row


def change_inode(h: Healthy, ino: int, **fields: object) -> None:
    with catalog_write(h.path) as tx:
        tx.save_inode(changed(tx.inode(ino), fields))


def change_resource(h: Healthy, data: bytes, **fields: object) -> None:
    with catalog_write(h.path) as tx:
        tx.save_resource(changed(tx.resource(blake3.blake3(data).digest()), fields))


def bump_refcount_raw(h: Healthy) -> None:
    """A raw LMDB write, below the catalog's API: the refcount field of SHARED's resource plus one."""
    env = lmdb.open(str(h.path / "catalog"), max_dbs=16, map_size=1 << 40)
    try:
        db = env.open_db(b"resources", create=False)
        with env.begin(write=True) as tx:
            key = blake3.blake3(SHARED).digest()
            length, refcount, state, layout = struct.unpack(">QQBB", tx.get(key, db=db))
            tx.put(key, struct.pack(">QQBB", length, refcount + 1, state, layout), db=db)
    finally:
        env.close()


def remove_global_entry(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.remove_entry(ROOT_INO, b".global")


def rename_to_bad_name(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.remove_entry(h.env, b"empty")
        tx.add_entry(h.env, b"bad/name", h.empty)


def add_dangling_entry(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_entry(h.env, b"ghost", 10**6)


def add_entry_in_a_file(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_entry(h.file, b"inside", h.empty)
        node = tx.inode(h.empty)
        assert node is not None
        node.nlink += 1
        tx.save_inode(node)


def remove_hard_link_entry(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.remove_entry(h.env, b"hard")


def add_xattr_of_missing_inode(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.set_xattr(10**6, b"user.x", b"v")


def rewind_next_ino(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.meta_put(b"next_ino", u64(ROOT_INO + 1))


def record_linked_file_as_orphan(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_orphan(h.file)


def unlink_without_orphan_record(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.remove_entry(h.env, b"empty")
        node = tx.inode(h.empty)
        assert node is not None
        node.nlink = 0
        tx.save_inode(node)


def point_at_unknown_content(h: Healthy) -> None:
    change_inode(h, h.empty, content=blake3.blake3(b"never stored").digest())


def add_unsynced_unknown_blob(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_unsynced(blake3.blake3(b"gone").digest(), 0)


def add_unsynced_unknown_pack(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_unsynced(u64(999), 0)


def add_unsynced_odd_key(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_unsynced(b"odd", 0)


def free_a_pack_that_has_its_row(h: Healthy) -> None:
    pack = h.chunk().pack
    with catalog_write(h.path) as tx:
        tx.add_freed(u64(pack))


# -- damage to chunks and packs --


def mark_lost_keeping_extents(h: Healthy) -> None:
    change_resource(h, SHARED, state=LOST)


def delete_an_extent(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        extent = list(tx.extents(digest_of(BIG)))[3]
        tx.raw.delete(digest_of(BIG) + u64(extent.end), db=tx.catalog.extents)


def add_extents_of_no_resource(h: Healthy) -> None:
    chunk = h.chunk()
    with catalog_write(h.path) as tx:
        tx.add_extents(digest_of(b"no such content"), [Extent(chunk.length, chunk.digest, chunk.length)])


def lengthen_an_extent(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        last = list(tx.extents(digest_of(BIG)))[-1]
        tx.add_extents(digest_of(BIG), [Extent(last.end, last.chunk, last.length + 1, last.count)])


def delete_a_chunk_row_only(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.raw.delete(digest_of(SHARED), db=tx.catalog.chunks)


def change_chunk(h: Healthy, data: bytes = SHARED, **fields: object) -> None:
    chunk = h.chunk(data)
    with catalog_write(h.path) as tx:
        tx.save_chunk(changed(chunk, fields))


def add_unused_chunk_row(h: Healthy) -> None:
    pack = h.chunk().pack
    end = h.pack_file(pack).stat().st_size
    with catalog_write(h.path) as tx:
        tx.add_chunk(Chunk(digest_of(b"unused"), pack, end, 0, 6, 0, refcount=0))


def move_chunk_to_a_missing_pack(h: Healthy) -> None:
    chunk = h.chunk()
    with catalog_write(h.path) as tx:
        tx.move_chunk(chunk, 999, chunk.offset, chunk.stored, chunk.codec)


def change_pack(h: Healthy, **fields: object) -> None:
    pack_id = h.chunk().pack
    with catalog_write(h.path) as tx:
        tx.save_pack(changed(tx.pack(pack_id), fields))


def delete_an_index_row(h: Healthy) -> None:
    chunk = h.chunk()
    with catalog_write(h.path) as tx:
        tx.delete_index_row(chunk.pack, chunk.offset)


def overlap_two_chunks(h: Healthy) -> None:
    first, second = h.chunk(BIG, 0), h.chunk(BIG, 1)
    with catalog_write(h.path) as tx:
        tx.move_chunk(second, first.pack, first.offset + 1, second.stored, second.codec)


def truncate_the_pack(h: Healthy) -> None:
    chunk = h.chunk(BIG, 5)
    os.truncate(h.pack_file(chunk.pack), chunk.offset + 1)


def append_to_the_pack(h: Healthy) -> None:
    with open(h.pack_file(h.chunk().pack), "ab") as pack:
        pack.write(b"more")


def copy_the_pack_file(h: Healthy) -> None:
    h.pack_file(999).write_bytes(h.pack_file(h.chunk().pack).read_bytes())


def add_packs_debris(h: Healthy) -> None:
    (h.path / "packs" / "notes.txt").write_bytes(b"x")
    (h.path / "packs" / "00000000000000AB").write_bytes(b"upper case")


def flip_a_byte_of_a_chunk(h: Healthy, data: bytes = SHARED) -> None:
    chunk = h.chunk(data)
    with open(h.pack_file(chunk.pack), "r+b") as pack:
        pack.seek(chunk.offset + chunk.stored // 2)
        byte = pack.read(1)
        pack.seek(-1, os.SEEK_CUR)
        pack.write(bytes([byte[0] ^ 0x40]))


def add_stray_blob(h: Healthy) -> None:
    blob = h.blob(b"nobody's")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"nobody's")


def add_pool_debris(h: Healthy) -> None:
    (h.path / "pool" / "notes.txt").write_bytes(b"x")
    misplaced = h.path / "pool" / "00" / "00" / blake3.blake3(b"misplaced").hexdigest()
    misplaced.parent.mkdir(parents=True, exist_ok=True)
    misplaced.write_bytes(b"misplaced")


def add_entry_cycle(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.add_entry(h.directory, b"loop", h.env)  # /ENV/a/loop is /ENV again


def add_nameless_fifo(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.save_inode(Inode(tx.new_ino(), stat.S_IFIFO | 0o644, 0, 0, nlink=1, space=h.env))


def add_unreserved_pending_resource(h: Healthy) -> None:
    with catalog_write(h.path) as tx:
        tx.save_resource(Resource(blake3.blake3(b"nobody uploads this").digest(), 19, 1, PENDING))


def add_staging(h: Healthy, record: StagingRecord, *, with_file: bool = True) -> None:
    with catalog_write(h.path) as tx:
        tx.add_staging(record)
    if with_file:
        (h.path / "staging" / record.name).write_bytes(b"")


DAMAGES: list[tuple[str, Callable[[Healthy], None]]] = [
    ("root_and_namespaces_exist", remove_global_entry),
    ("entry_names_are_valid", rename_to_bad_name),
    ("entries_point_at_inodes", add_dangling_entry),
    ("entries_are_in_directories", add_entry_in_a_file),
    ("nlink_matches_entries", lambda h: change_inode(h, h.file, nlink=3)),
    ("nlink_matches_entries", remove_hard_link_entry),
    ("directories_have_parents", lambda h: change_inode(h, h.directory, parent=ROOT_INO)),
    ("directories_reach_the_root", lambda h: change_inode(h, h.directory, parent=h.directory)),
    ("directories_reach_the_root", lambda h: change_inode(h, h.directory, parent=10**6)),
    ("no_directory_cycles", add_entry_cycle),
    ("spaces_follow_the_tree", lambda h: change_inode(h, h.file, space=h.file)),
    ("xattrs_belong_to_inodes", add_xattr_of_missing_inode),
    ("next_ino_is_past_every_inode", rewind_next_ino),
    ("orphans_have_nlink_zero", record_linked_file_as_orphan),
    ("unlinked_inodes_are_orphans", unlink_without_orphan_record),
    ("inodes_have_names", add_nameless_fifo),
    ("resources_are_well_formed", lambda h: change_resource(h, SHARED, layout=3)),
    ("refcounts_match_references", bump_refcount_raw),
    ("referenced_contents_have_resources", point_at_unknown_content),
    ("file_contents_are_complete", lambda h: change_resource(h, SHARED, state=PENDING)),
    ("pending_resources_are_reserved", add_unreserved_pending_resource),
    ("sizes_match_contents", lambda h: change_inode(h, h.file, size=99)),
    ("pending_files_have_uploads", lambda h: change_inode(h, h.empty, content=None)),
    ("unsynced_keys_are_known", add_unsynced_unknown_blob),
    ("unsynced_keys_are_known", add_unsynced_unknown_pack),
    ("unsynced_keys_are_known", add_unsynced_odd_key),
    ("freed_packs_have_no_rows", free_a_pack_that_has_its_row),
    ("extents_cover_their_contents", mark_lost_keeping_extents),
    ("extents_cover_their_contents", delete_an_extent),
    ("extents_cover_their_contents", add_extents_of_no_resource),
    ("extents_cover_their_contents", lambda h: change_resource(h, SHARED, layout=LAYOUT_WHOLE_BLOB)),
    ("extents_name_their_chunks", lengthen_an_extent),
    ("extents_name_their_chunks", delete_a_chunk_row_only),
    ("chunk_refcounts_match_extents", lambda h: change_chunk(h, refcount=5)),
    ("chunk_refcounts_match_extents", add_unused_chunk_row),
    ("chunks_are_in_packs", move_chunk_to_a_missing_pack),
    ("pack_live_matches_chunks", lambda h: change_pack(h, live=1)),
    ("pack_index_matches_chunks", delete_an_index_row),
    ("pack_index_matches_chunks", lambda h: change_chunk(h, offset=1)),
    ("chunks_lie_within_their_packs", overlap_two_chunks),
    ("chunks_lie_within_their_packs", truncate_the_pack),
    ("sealed_pack_sizes_match_files", lambda h: change_pack(h, size=1)),
    ("sealed_pack_sizes_match_files", append_to_the_pack),
    ("packs_have_files", lambda h: h.pack_file(h.chunk().pack).unlink()),
    ("pack_files_have_rows", copy_the_pack_file),
    ("packs_directory_holds_only_packs", add_packs_debris),
    ("complete_resources_have_blobs", lambda h: h.blob().unlink()),
    ("no_stray_blobs", add_stray_blob),
    ("no_stray_blobs", lambda h: h.blob(SHARED).parent.mkdir(parents=True) or h.blob(SHARED).write_bytes(SHARED)),
    ("blob_sizes_match_lengths", lambda h: os.truncate(h.blob(), 4)),
    ("pool_holds_only_blobs", add_pool_debris),
    ("staging_records_have_inodes", lambda h: add_staging(h, StagingRecord(STAGING_NAME, 10**6))),
    ("reservations_name_a_digest", lambda h: add_staging(h, StagingRecord(STAGING_NAME, h.file, reserved=True))),
    ("staging_records_have_files",
     lambda h: add_staging(h, StagingRecord(STAGING_NAME, h.file, keep=True), with_file=False)),
    ("staging_files_have_records", lambda h: (h.path / "staging" / STAGING_NAME).write_bytes(b"")),
    ("chunks_hash_to_their_names", flip_a_byte_of_a_chunk),
    ("chunks_hash_to_their_names", lambda h: flip_a_byte_of_a_chunk(h, ZEROS)),
    ("blobs_hash_to_their_names", lambda h: h.blob().write_bytes(b"x" * len(OLD))),
]

# Damages that break exactly one invariant: the other checks must stay quiet.
ALONE = {
    "entry_names_are_valid", "entries_point_at_inodes", "entries_are_in_directories", "directories_have_parents",
    "spaces_follow_the_tree", "xattrs_belong_to_inodes", "next_ino_is_past_every_inode", "orphans_have_nlink_zero",
    "unlinked_inodes_are_orphans", "resources_are_well_formed", "refcounts_match_references",
    "sizes_match_contents", "unsynced_keys_are_known", "freed_packs_have_no_rows", "complete_resources_have_blobs",
    "no_stray_blobs", "pool_holds_only_blobs", "staging_records_have_inodes", "reservations_name_a_digest",
    "staging_records_have_files", "staging_files_have_records", "blobs_hash_to_their_names",
    "pack_live_matches_chunks", "pack_files_have_rows",
    "packs_directory_holds_only_packs", "chunks_hash_to_their_names",
}


def test_a_healthy_store_has_no_problems(healthy: Healthy) -> None:
    assert problems(healthy.path) == {}
    with Inspection.open(healthy.path) as ins:
        assert len(ins.orphans()) == 1, "the healthy store has an orphan: its checks run too"
        assert len(ins.extents_of(digest_of(BIG))) > 4, "a content of several chunks"
        twice = ins.extents_of(digest_of(TWICE))
        assert len({e.chunk for e in twice}) < len(twice), "a content that names one chunk twice"
        assert [e.count for e in ins.extents_of(digest_of(ZEROS))] == [16], "zeros are one run of one chunk"
        assert ins.chunk(digest_of(b"deleted, and its chunk with it")) is None
        assert [blob.digest for blob in ins.blobs()] == [digest_of(OLD)], "and one whole-file blob"


def test_a_pending_prefix_and_an_unborn_pack_are_not_damage(healthy: Healthy) -> None:
    """What a crash leaves for recovery: fsck's checks stay quiet, and the recovery plan says what happens."""
    chunk = healthy.chunk()
    digest = digest_of(b"half stored")
    with catalog_write(healthy.path) as tx:
        tx.save_resource(Resource(digest, 10 * chunk.length, 1, PENDING, 1))
        tx.add_extents(digest, [Extent(chunk.length, chunk.digest, chunk.length)])
        tx.save_chunk(Chunk(**{**chunk.__dict__, "refcount": chunk.refcount + 1}))
        tx.add_staging(StagingRecord(STAGING_NAME, healthy.file, reserved=True, expected=digest))
        tx.save_pack(Pack(tx.new_pack_id()))  # its row, then the crash: no file
    (healthy.path / "staging" / STAGING_NAME).write_bytes(b"")
    assert problems(healthy.path) == {}
    with Inspection.open(healthy.path) as ins:
        plan = list(recovery_plan(ins))
    assert any("recovery would free pack" in line and "between its row and its file" in line for line in plan), plan
    assert any(f"releasing its reservation of {digest.hex()}" in line for line in plan), plan
    Store.open(healthy.path).close()  # recovery settles both
    assert problems(healthy.path) == {}


def test_the_recovery_plan_says_it_releases_the_prefix_of_an_abandoned_content(healthy: Healthy) -> None:
    chunk = healthy.chunk()
    digest = digest_of(b"half stored, and nobody will finish it")
    with catalog_write(healthy.path) as tx:
        tx.save_resource(Resource(digest, 10 * chunk.length, 0, PENDING, 1))  # as Chunks.store makes it
        tx.add_extents(digest, [Extent(chunk.length, chunk.digest, chunk.length)])
        tx.save_chunk(Chunk(**{**chunk.__dict__, "refcount": chunk.refcount + 1}))
    assert problems(healthy.path) == {}
    with Inspection.open(healthy.path) as ins:
        plan = list(recovery_plan(ins))
    assert plan[1:] == [  # the first: the healthy store's orphan
        f"recovery would drop the content {digest.hex()} ({10 * chunk.length} bytes), still pending with "
        f"no upload left to finish it, and release the {chunk.length} bytes of chunks stored for it so far"]
    Store.open(healthy.path).close()
    assert problems(healthy.path) == {}
    assert healthy.chunk().refcount == chunk.refcount
    with Inspection.open(healthy.path) as ins:
        assert ins.resource(digest) is None


def test_a_pending_resource_with_more_than_a_prefix_is_reported(healthy: Healthy) -> None:
    chunk = healthy.chunk()
    digest = digest_of(b"claims fewer bytes than its extents")
    with catalog_write(healthy.path) as tx:
        tx.save_resource(Resource(digest, chunk.length - 1, 0, PENDING, 1))
        tx.add_extents(digest, [Extent(chunk.length, chunk.digest, chunk.length)])
        tx.save_chunk(Chunk(**{**chunk.__dict__, "refcount": chunk.refcount + 1}))
    assert problems(healthy.path) == {"extents_cover_their_contents": [
        f"resource {digest.hex()} ({chunk.length - 1} bytes) has extents covering {chunk.length} bytes"]}


@pytest.mark.parametrize(("check", "damage"), DAMAGES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(DAMAGES)])
def test_each_check_finds_the_damage_it_is_named_for(healthy: Healthy, check: str, damage: Callable[..., None]) -> None:
    damage(healthy)
    found = problems(healthy.path)
    assert check in found, found
    if check in ALONE:
        assert list(found) == [check], found


def test_every_check_is_tested_and_says_what_it_checks() -> None:
    assert {check.__name__ for check in CHECKS + DEEP_CHECKS} == {name for name, _ in DAMAGES}
    assert all(check.__doc__ for check in CHECKS + DEEP_CHECKS)


def test_problems_name_the_paths_that_use_a_digest(healthy: Healthy) -> None:
    healthy.blob().unlink()
    flip_a_byte_of_a_chunk(healthy)
    found = problems(healthy.path)
    assert found["complete_resources_have_blobs"] == [
        f"blob {digest_of(OLD).hex()} is missing from the pool (used by /{ENV}/old)"
    ]
    chunk = healthy.chunk()
    (line,) = found["chunks_hash_to_their_names"]
    assert line.startswith(f"chunk {chunk.digest.hex()} (pack {chunk.pack:016x} offset {chunk.offset}) ")
    assert line.endswith(f"(used by /{ENV}/a/b, /{ENV}/hard, /{ENV2}/copy)")


def test_a_deleted_pack_names_every_file_it_held(healthy: Healthy) -> None:
    chunk = healthy.chunk()
    healthy.pack_file(chunk.pack).unlink()
    (line,) = problems(healthy.path)["packs_have_files"]
    assert line.startswith(f"pack {chunk.pack:016x} (")
    for name in ("a/b", "hard", "big", "twice", "zeros"):
        assert f"/{ENV}/{name}" in line or "more)" in line, line


def test_find_problems_checks_a_store_open_in_this_process(store: Store, store_path: Path) -> None:
    put(store, "a", SHARED)
    assert find_problems(store) == []
    with Inspection.over(store.catalog, store.path) as ins:
        chunk = ins.chunk(digest_of(SHARED))
        assert chunk is not None
        os.truncate(ins.pack_files()[0].path, chunk.offset)
    assert find_problems(store) == [
        f"chunks_lie_within_their_packs: chunk {chunk.digest.hex()} ends at {chunk.offset + chunk.stored} in pack "
        f"{chunk.pack:016x}, whose file has {chunk.offset} bytes (used by /{ENV}/a)"
    ]
