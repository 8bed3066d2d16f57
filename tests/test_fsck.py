"""Each fsck check finds the damage it is named for, on a real store damaged on disk; a healthy store has none."""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3
import lmdb
import pytest

from fusestore import Store
from fusestore.catalog import PENDING, ROOT_INO, Catalog, Inode, Resource, StagingRecord, Txn
from fusestore.catalog.records import u64
from fusestore.store.fsck import CHECKS, DEEP_CHECKS, find_problems, run_checks
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner

from .helpers import ENV, ENV2, put

SHARED = b"shared bytes"
STAGING_NAME = "0123456789abcdef0123456789abcdef"


@dataclass
class Healthy:
    """A closed store with a bit of everything, and the inodes the damages aim at."""

    path: Path
    env: int  # /ENV
    directory: int  # /ENV/a
    file: int  # /ENV/a/b and /ENV/hard: content SHARED
    empty: int  # /ENV/empty

    def blob(self, data: bytes = SHARED) -> Path:
        h = blake3.blake3(data).hexdigest()
        return self.path / "pool" / h[:2] / h[2:4] / h


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
    return Healthy(store_path, env, directory, file, empty)


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


def change_inode(h: Healthy, ino: int, **fields: object) -> None:
    with catalog_write(h.path) as tx:
        node = tx.inode(ino)
        assert node is not None
        for name, value in fields.items():
            setattr(node, name, value)
        tx.save_inode(node)


def change_resource(h: Healthy, data: bytes, **fields: object) -> None:
    with catalog_write(h.path) as tx:
        res = tx.resource(blake3.blake3(data).digest())
        assert res is not None
        for name, value in fields.items():
            setattr(res, name, value)
        tx.save_resource(res)


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
    ("unsynced_blobs_are_complete", add_unsynced_unknown_blob),
    ("complete_resources_have_blobs", lambda h: h.blob().unlink()),
    ("no_stray_blobs", add_stray_blob),
    ("blob_sizes_match_lengths", lambda h: os.truncate(h.blob(), 4)),
    ("pool_holds_only_blobs", add_pool_debris),
    ("staging_records_have_inodes", lambda h: add_staging(h, StagingRecord(STAGING_NAME, 10**6))),
    ("reservations_name_a_digest", lambda h: add_staging(h, StagingRecord(STAGING_NAME, h.file, reserved=True))),
    ("staging_records_have_files",
     lambda h: add_staging(h, StagingRecord(STAGING_NAME, h.file, keep=True), with_file=False)),
    ("staging_files_have_records", lambda h: (h.path / "staging" / STAGING_NAME).write_bytes(b"")),
    ("blobs_hash_to_their_names", lambda h: h.blob().write_bytes(b"x" * len(SHARED))),
]

# Damages that break exactly one invariant: the other checks must stay quiet.
ALONE = {
    "entry_names_are_valid", "entries_point_at_inodes", "entries_are_in_directories", "directories_have_parents",
    "spaces_follow_the_tree", "xattrs_belong_to_inodes", "next_ino_is_past_every_inode", "orphans_have_nlink_zero",
    "unlinked_inodes_are_orphans", "resources_are_well_formed", "refcounts_match_references",
    "sizes_match_contents", "unsynced_blobs_are_complete", "complete_resources_have_blobs", "no_stray_blobs",
    "pool_holds_only_blobs", "staging_records_have_inodes", "reservations_name_a_digest",
    "staging_records_have_files", "staging_files_have_records", "blobs_hash_to_their_names",
}


def test_a_healthy_store_has_no_problems(healthy: Healthy) -> None:
    assert problems(healthy.path) == {}
    with Inspection.open(healthy.path) as ins:
        assert len(ins.orphans()) == 1, "the healthy store has an orphan: its checks run too"


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
    digest = blake3.blake3(SHARED).hexdigest()
    assert problems(healthy.path)["complete_resources_have_blobs"] == [
        f"blob {digest} is missing from the pool (used by /{ENV}/a/b, /{ENV}/hard, /{ENV2}/copy)"
    ]


def test_find_problems_checks_a_store_open_in_this_process(store: Store, store_path: Path) -> None:
    put(store, "a", SHARED)
    assert find_problems(store) == []
    digest = blake3.blake3(SHARED).hexdigest()
    (store_path / "pool" / digest[:2] / digest[2:4] / digest).unlink()
    assert find_problems(store) == [
        f"complete_resources_have_blobs: blob {digest} is missing from the pool (used by /{ENV}/a)"
    ]
