"""``fusestore fsck``, run as a command on real stores damaged on disk: it finds, repairs, and exits as promised."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import lmdb
import pytest

from fusestore import Store, errors
from fusestore.catalog import COMPLETE, LAYOUT_WHOLE_BLOB, Catalog, Chunk, Inode, Resource
from fusestore.store.inspect import Inspection

from .helpers import ENV, ENV2, put, read

SHARED = b"shared bytes"
OTHER = b"other bytes, used once"
FUSESTORE = [sys.executable, "-m", "fusestore"]
RESOURCE = struct.Struct(">QQBB")
INODE = struct.Struct(">IIIIQqqqQQQ")
CHUNK = struct.Struct(">QQIIBQ")
PACK = struct.Struct(">QQB")
U64 = struct.Struct(">Q")
OLD = b"a whole-file blob of a format-2 store"


def fsck(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSESTORE, "fsck", str(path), *flags], capture_output=True, text=True, timeout=120)


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def blob_path(store: Path, data: bytes) -> Path:
    h = digest_of(data).hex()
    return store / "pool" / h[:2] / h[2:4] / h


def chunk_of(store: Path, data: bytes) -> Chunk:
    """The chunk of a content of one chunk, as the catalog places it."""
    with Inspection.open(store) as ins:
        (extent,) = ins.extents_of(digest_of(data))
        chunk = ins.chunk(extent.chunk)
    assert chunk is not None
    return chunk


def pack_path(store: Path, pack: int) -> Path:
    return store / "packs" / f"{pack:016x}"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``, with the sha256 of each file's bytes (a directory: its mode)."""
    seen = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            seen[os.path.join(directory, name)] = oct(os.lstat(os.path.join(directory, name)).st_mode)
        for name in files:
            seen[os.path.join(directory, name)] = hashlib.sha256(Path(directory, name).read_bytes()).hexdigest()
    return seen


@pytest.fixture
def made(store_path: Path) -> Path:
    """A closed store: SHARED at /ENV/a/b and /ENV2/copy, OTHER at /ENV/other."""
    with Store.open(store_path) as store:
        put(store, "a/b", SHARED)
        put(store, "copy", SHARED, env=ENV2)
        put(store, "other", OTHER)
    return store_path


# -- raw damage, below fusestore's own code --------------------------------------------------------------------


@contextmanager
def raw(path: Path, db: bytes) -> Iterator[tuple[lmdb.Transaction, lmdb._Database]]:
    env = lmdb.open(str(path / "catalog"), max_dbs=16, map_size=1 << 40)
    try:
        database = env.open_db(db, create=False)
        with env.begin(write=True) as txn:
            yield txn, database
    finally:
        env.close()


def lookup(path: Path, names: list[bytes]) -> int:
    env = lmdb.open(str(path / "catalog"), max_dbs=16, map_size=1 << 40, readonly=True)
    try:
        dirents = env.open_db(b"dirents", create=False)
        ino = 1
        with env.begin() as txn:
            for name in names:
                ino = U64.unpack(txn.get(U64.pack(ino) + name, db=dirents))[0]
        return ino
    finally:
        env.close()


def change_resource(path: Path, data: bytes, *, refcount: int = 0, state: int | None = None) -> None:
    with raw(path, b"resources") as (txn, db):
        length, count, old_state, layout = RESOURCE.unpack(txn.get(digest_of(data), db=db))
        new_state = old_state if state is None else state
        txn.put(digest_of(data), RESOURCE.pack(length, count + refcount, new_state, layout), db=db)


def set_nlink(path: Path, ino: int, nlink: int) -> None:
    with raw(path, b"inodes") as (txn, db):
        value = txn.get(U64.pack(ino), db=db)
        fields = list(INODE.unpack_from(value))
        fields[3] = nlink
        txn.put(U64.pack(ino), INODE.pack(*fields) + value[INODE.size:], db=db)


def bump_refcount(path: Path) -> None:
    change_resource(path, SHARED, refcount=+1)


def add_extra_blob(path: Path) -> None:
    blob = blob_path(path, b"nobody's bytes")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"nobody's bytes")


def add_whole_blob_file(path: Path) -> None:
    """/ENV/old, a file of a format-2 store: its content a whole-file blob in ``pool/``."""
    blob_path(path, OLD).parent.mkdir(parents=True)
    blob_path(path, OLD).write_bytes(OLD)
    env_ino = lookup(path, [ENV.encode()])
    catalog = Catalog(path / "catalog")
    try:
        with catalog.write() as tx:
            ino = tx.new_ino()
            tx.save_inode(Inode(ino, 0o100644, 0, 0, size=len(OLD), space=env_ino, content=digest_of(OLD)))
            tx.add_entry(env_ino, b"old", ino)
            tx.save_resource(Resource(digest_of(OLD), len(OLD), 1, COMPLETE, LAYOUT_WHOLE_BLOB))
    finally:
        catalog.close()


def flip_a_byte(path: Path, data: bytes = SHARED) -> None:
    """One bit of the content's chunk, in its pack file."""
    chunk = chunk_of(path, data)
    with open(pack_path(path, chunk.pack), "r+b") as pack:
        pack.seek(chunk.offset + 3)
        byte = pack.read(1)
        pack.seek(-1, os.SEEK_CUR)
        pack.write(bytes([byte[0] ^ 0x01]))


def delete_the_pack(path: Path) -> None:
    pack_path(path, chunk_of(path, SHARED).pack).unlink()


def cut_the_pack(path: Path) -> None:
    """The pack ends inside OTHER's chunk (stored after SHARED's)."""
    chunk = chunk_of(path, OTHER)
    os.truncate(pack_path(path, chunk.pack), chunk.offset + 2)


def add_foreign_pack(path: Path) -> None:
    pack_path(path, 0xFF).write_bytes(b"not ours")


def change_chunk_refcount(path: Path) -> None:
    with raw(path, b"chunks") as (txn, db):
        fields = list(CHUNK.unpack(txn.get(digest_of(SHARED), db=db)))
        fields[5] += 2
        txn.put(digest_of(SHARED), CHUNK.pack(*fields), db=db)


def change_pack_live(path: Path) -> None:
    key = U64.pack(chunk_of(path, SHARED).pack)
    with raw(path, b"packs") as (txn, db):
        size, live, sealed = PACK.unpack(txn.get(key, db=db))
        txn.put(key, PACK.pack(size, live + 7, sealed), db=db)


def delete_index_row(path: Path) -> None:
    chunk = chunk_of(path, SHARED)
    with raw(path, b"packchunks") as (txn, db):
        assert txn.delete(U64.pack(chunk.pack) + U64.pack(chunk.offset), db=db)


def delete_extent(path: Path) -> None:
    with raw(path, b"extents") as (txn, db):
        assert txn.delete(digest_of(OTHER) + U64.pack(len(OTHER)), db=db)


def delete_chunk_row(path: Path) -> None:
    chunk = chunk_of(path, OTHER)
    with raw(path, b"chunks") as (txn, db):
        assert txn.delete(chunk.digest, db=db)


def add_unsynced_unknown_pack(path: Path) -> None:
    with raw(path, b"unsynced") as (txn, db):
        txn.put(U64.pack(999), U64.pack(0), db=db)


def add_dangling_entry(path: Path) -> None:
    env_ino = lookup(path, [ENV.encode()])
    with raw(path, b"dirents") as (txn, db):
        txn.put(U64.pack(env_ino) + b"ghost", U64.pack(10**6), db=db)


def wrong_nlink(path: Path) -> None:
    set_nlink(path, lookup(path, [ENV.encode(), b"other"]), 3)


def make_pending(path: Path) -> None:
    change_resource(path, SHARED, state=0)


def orphan_an_inode(path: Path) -> None:
    """/ENV/other loses its only entry but keeps its inode (nlink 1): an inode without a name."""
    env_ino = lookup(path, [ENV.encode()])
    with raw(path, b"dirents") as (txn, db):
        assert txn.delete(U64.pack(env_ino) + b"other", db=db)


def record_a_named_file_as_orphan(path: Path) -> None:
    """An orphan record of /ENV/other, which still has its name: recovery alone would delete the file."""
    ino = lookup(path, [ENV.encode(), b"other"])
    with raw(path, b"orphans") as (txn, db):
        txn.put(U64.pack(ino), b"", db=db)


def unfinished_put(path: Path) -> None:
    """What a put cut off leaves: a staging record and its file (recovery undoes it)."""
    name = "0123456789abcdef0123456789abcdef"
    ino = lookup(path, [ENV.encode(), b"other"])
    with raw(path, b"staging") as (txn, db):
        txn.put(name.encode(), U64.pack(ino) + b"\0" + U64.pack(0) + b"\0", db=db)
    (path / "staging" / name).write_bytes(b"half a put")


# (name, damage, flags, what the check says, what the repair says)
DAMAGES: list[tuple[str, Callable[[Path], None], tuple[str, ...], str, str]] = [
    ("refcount", bump_refcount, (), "refcounts_match_references: resource", "set the refcount of"),
    ("deleted-pack", delete_the_pack, (), "packs_have_files: pack", "whose file is missing"),
    ("cut-pack", cut_the_pack, (), "chunks_lie_within_their_packs: chunk", f"marked content {digest_of(OTHER).hex()} "
     "lost: its chunk"),
    ("foreign-pack", add_foreign_pack, (), "pack_files_have_rows: pack 00000000000000ff", "ran recovery"),
    ("extra-blob", add_extra_blob, (), "no_stray_blobs: blob", "a blob no content names, to lost+found"),
    ("flipped-byte", flip_a_byte, ("--verify",), "chunks_hash_to_their_names: chunk", "does not hash to its name"),
    ("chunk-refcount", change_chunk_refcount, (), "chunk_refcounts_match_extents: chunk", "set the refcount of chunk"),
    ("pack-live", change_pack_live, (), "pack_live_matches_chunks: pack", "set the live bytes of pack"),
    ("index-row", delete_index_row, (), "pack_index_matches_chunks: chunk", "indexed chunk"),
    ("extent", delete_extent, (), "extents_cover_their_contents: resource", "deleted chunk"),
    ("chunk-row", delete_chunk_row, (), "extents_name_their_chunks: content", "has no row"),
    ("unsynced-pack", add_unsynced_unknown_pack, (), "unsynced_keys_are_known: pack 00000000000003e7",
     "ran recovery"),
    ("dangling-entry", add_dangling_entry, (), f"entries_point_at_inodes: entry /{ENV}/ghost",
     f"removed entry /{ENV}/ghost"),
    ("nlink", wrong_nlink, (), "nlink_matches_entries:", "from 3 to 1"),
    ("pending", make_pending, (), "pending_resources_are_reserved: resource", "completed pending resource"),
    ("nameless-inode", orphan_an_inode, (), "inodes_have_names: inode", "which no entry named"),
    ("unfinished-put", unfinished_put, (), "recovery would undo the unfinished change", "ran recovery"),
    ("named-orphan", record_a_named_file_as_orphan, (), "orphans_have_nlink_zero:", "forgot the orphan record"),
]


@pytest.mark.parametrize(("damage", "flags", "found", "repaired"), [d[1:] for d in DAMAGES],
                         ids=[d[0] for d in DAMAGES])
def test_each_damage_is_found_unchanged_then_repaired(made: Path, damage: Callable[[Path], None],
                                                        flags: tuple[str, ...], found: str, repaired: str) -> None:
    damage(made)
    before = snapshot(made)
    checked = fsck(made, *flags)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert found in checked.stdout, checked.stdout
    assert snapshot(made) == before, "fsck without --repair changed the store"
    fixed = fsck(made, "--repair", *flags)
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    assert repaired in fixed.stdout + fixed.stderr, fixed.stdout + fixed.stderr  # the upgrade's lines are logged
    assert "not repaired" not in fixed.stdout, fixed.stdout
    again = fsck(made, "--verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "_" not in again.stdout.replace("notice:", ""), again.stdout  # no check's name: only notices


def test_a_named_file_recorded_as_orphan_survives_the_repair(made: Path) -> None:
    record_a_named_file_as_orphan(made)
    assert "fsck --repair forgets that record first" in fsck(made).stdout
    assert fsck(made, "--repair").returncode == 1
    with Store.open(made) as store:
        assert read(store, "other") == OTHER


def test_a_healthy_store_exits_0_with_nothing_to_say(made: Path) -> None:
    result = fsck(made, "--verify")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def test_a_flipped_byte_goes_unseen_without_verify(made: Path) -> None:
    flip_a_byte(made)
    assert fsck(made).returncode == 0


def test_lines_name_the_paths_and_the_pack(made: Path) -> None:
    chunk = chunk_of(made, OTHER)
    cut_the_pack(made)
    out = fsck(made).stdout
    assert out == (f"chunks_lie_within_their_packs: chunk {chunk.digest.hex()} ends at {chunk.offset + chunk.stored} "
                   f"in pack {chunk.pack:016x}, whose file has {chunk.offset + 2} bytes (used by /{ENV}/other)\n"
                   f"sealed_pack_sizes_match_files: sealed pack {chunk.pack:016x} has size "
                   f"{chunk.offset + chunk.stored}, its file {chunk.offset + 2} bytes\n")


def test_a_cut_pack_loses_only_the_contents_past_the_cut(made: Path) -> None:
    cut_the_pack(made)
    fixed = fsck(made, "--repair").stdout
    assert f"marked content {digest_of(SHARED).hex()}" not in fixed, fixed
    assert "set the size of sealed pack" in fixed, fixed
    assert fsck(made, "--verify").returncode == 0
    with Store.open(made) as store:
        assert read(store, "a/b") == SHARED
        with pytest.raises(errors.ContentLost):
            read(store, "other")


def test_a_deleted_pack_is_freed_once_nothing_is_in_it(made: Path) -> None:
    pack = chunk_of(made, SHARED).pack
    delete_the_pack(made)
    fixed = fsck(made, "--repair").stdout
    assert f"freed sealed pack {pack:016x}" in fixed, fixed
    with Inspection.open(made) as ins:
        assert list(ins.pack_rows()) == [] and list(ins.chunks()) == [] and list(ins.extents()) == []
        assert {res.state for res in ins.resources() if res.length} == {2}  # every content with bytes: lost


def test_a_pack_row_without_its_file_is_left_to_recovery(made: Path) -> None:
    """A crash between a new pack's row and its file: no damage, and the next open frees it."""
    with raw(made, b"packs") as (txn, db):
        txn.put(U64.pack(50), PACK.pack(0, 0, 0), db=db)
    checked = fsck(made)
    assert checked.stdout == ("recovery would free pack 0000000000000032: a crash came between its row and its file, "
                              "and nothing is in it\n"), checked.stdout
    assert "ran recovery" in fsck(made, "--repair").stdout
    assert fsck(made).returncode == 0


def test_a_lost_chunk_reads_content_lost_until_the_same_bytes_come_back(made: Path) -> None:
    flip_a_byte(made)
    fixed = fsck(made, "--verify", "--repair")
    assert fixed.returncode == 1
    assert f"marked content {digest_of(SHARED).hex()} lost" in fixed.stdout
    later = fsck(made, "--verify")
    assert later.returncode == 0, later.stdout
    assert later.stdout.startswith(f"notice: content {digest_of(SHARED).hex()}") and f"/{ENV2}/copy" in later.stdout
    with Store.open(made) as store:
        with pytest.raises(errors.ContentLost) as raised:
            read(store, "a/b")
        assert raised.value.errno == errno.EIO
        assert read(store, "other") == OTHER
        put(store, "again", SHARED, env=ENV2)  # the same content, under another name
        assert read(store, "a/b") == SHARED
        assert read(store, "copy", env=ENV2) == SHARED
    assert fsck(made, "--verify").stdout == ""


def test_a_proof_of_access_ask_for_lost_content_says_upload_it(made: Path) -> None:
    """ENOENT, as for unknown content: the client then uploads, which is what restores the content."""
    flip_a_byte(made)
    fsck(made, "--verify", "--repair")
    with Store.open(made) as store:
        with pytest.raises(errors.NotFound, match="is lost: upload it"):
            store.put_for_environment_request(ENV, "linked", digest_of(SHARED).hex())


def test_a_whole_file_blob_of_an_older_store_is_checked_and_repaired_as_before(made: Path) -> None:
    add_whole_blob_file(made)
    assert fsck(made, "--verify").returncode == 0  # a writable open would upgrade it: only fsck reads it here
    os.truncate(blob_path(made, OLD), 4)
    assert "blob_sizes_match_lengths" in fsck(made).stdout
    fixed = fsck(made, "--repair")  # the upgrade it runs marks the content lost, and says so in its log
    assert "has 4 bytes" in fixed.stdout and "marked lost" in fixed.stdout + fixed.stderr
    assert (made / "lost+found" / digest_of(OLD).hex()).stat().st_size == 4
    assert fsck(made).returncode == 0
    with Store.open(made) as store:
        assert read(store, "other") == OTHER
        with pytest.raises(errors.ContentLost):
            read(store, "old")


def test_a_flipped_byte_of_a_whole_file_blob_is_found_by_verify(made: Path) -> None:
    add_whole_blob_file(made)
    data = bytearray(OLD)
    data[3] ^= 0x01
    blob_path(made, OLD).write_bytes(bytes(data))
    assert "blobs_hash_to_their_names: blob" in fsck(made, "--verify").stdout
    fixed = fsck(made, "--verify", "--repair")  # the upgrade it runs marks the content lost, and logs it
    assert "blobs_hash_to_their_names: blob" in fixed.stdout and "marked lost" in fixed.stdout + fixed.stderr
    assert (made / "lost+found" / digest_of(OLD).hex()).read_bytes() == bytes(data)
    assert fsck(made, "--verify").returncode == 0


def test_a_directory_cycle_is_reported_not_repaired(made: Path) -> None:
    a, env_ino = lookup(made, [ENV.encode(), b"a"]), lookup(made, [ENV.encode()])
    with raw(made, b"dirents") as (txn, db):
        txn.put(U64.pack(a) + b"loop", U64.pack(env_ino), db=db)  # /ENV/a/loop is /ENV
    assert "no_directory_cycles: directories in a cycle of entries" in fsck(made).stdout
    fixed = fsck(made, "--repair")
    assert "not repaired (remove one of these entries by hand): directories in a cycle" in fixed.stdout
    assert fsck(made).returncode == 1


def test_a_damaged_catalog_file_is_reported_before_lmdb_opens_it(made: Path) -> None:
    with Store.open(made) as store:
        for i in range(200):
            put(store, f"many/{i}", str(i).encode())
    data = made / "catalog" / "data.mdb"
    with open(data, "r+b") as f:
        for page in range(2, data.stat().st_size // 4096):
            f.seek(page * 4096 + 20)
            f.write(b"\xff" * 16)
    before = snapshot(made)
    for flags in ((), ("--repair",)):
        result = fsck(made, *flags)
        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith("catalog_structure: catalog/data.mdb: ")
        assert "not repaired" in result.stderr
    assert snapshot(made) == before


# -- could not run: exit 2 ---------------------------------------------------------------------------------------


def test_a_missing_path_is_exit_2(tmp_path: Path) -> None:
    result = fsck(tmp_path / "nothing")
    assert result.returncode == 2 and "no store" in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_a_directory_that_is_no_store_is_exit_2_and_stays_empty(tmp_path: Path) -> None:
    result = fsck(tmp_path, "--repair")
    assert result.returncode == 2 and "no store" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_exit_2_untouched(made: Path) -> None:
    with raw(made, b"meta") as (txn, db):
        txn.put(b"format", b"99", db=db)
    before = snapshot(made)
    result = fsck(made, "--repair")
    assert result.returncode == 2 and "format '99'" in result.stderr
    assert snapshot(made) == before


def test_a_catalog_that_is_not_lmdb_is_exit_2(made: Path) -> None:
    (made / "catalog" / "data.mdb").write_bytes(b"not lmdb" * 1000)
    result = fsck(made)
    assert result.returncode == 2 and "not an LMDB data file" in result.stderr


def test_a_store_held_by_a_live_process_is_exit_2(made: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from fusestore import Store; s = Store.open(sys.argv[1]); "
         "print('open', flush=True); time.sleep(60)", str(made)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        for flags in ((), ("--repair",)):
            result = fsck(made, *flags)
            assert result.returncode == 2 and f"process {holder.pid}" in result.stderr, result.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# -- progress ------------------------------------------------------------------------------------------------------


def test_progress_off_a_terminal_has_no_control_characters(made: Path) -> None:
    with Store.open(made) as store:
        put(store, "big", os.urandom(8 << 20))
    result = fsck(made, "--verify")
    assert result.returncode == 0
    assert not any(c in result.stderr for c in "\r\x1b\b"), repr(result.stderr)


def test_progress_on_a_terminal_is_a_bar(made: Path) -> None:
    from fusestore.cli.fsck_cmd import Meter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    meter = Meter(err, total_bytes=4 << 20, total_files=2, what="chunks")
    meter.started -= 1.0
    meter.shown -= 1.0
    meter.advance(2 << 20, 1)
    meter.finish()
    shown = err.getvalue()
    assert shown.startswith("\rverify chunks [") and "2.0 MiB/4.0 MiB, 1/2 chunks" in shown and "ETA" in shown


# -- through the mount -----------------------------------------------------------------------------------------------


def test_a_file_whose_chunk_fsck_lost_fails_with_eio_until_written_again(mount: object) -> None:
    from .mount_helpers import Mount

    assert isinstance(mount, Mount)
    (mount.path / ENV).mkdir()
    target = mount.path / ENV / "f"
    target.write_bytes(SHARED)
    mount.umount()
    delete_the_pack(mount.store)
    assert fsck(mount.store, "--repair").returncode == 1
    mount.mount()
    cat = subprocess.run(["cat", str(target)], capture_output=True, text=True, timeout=30)
    assert cat.returncode != 0 and "Input/output error" in cat.stderr, cat.stderr
    with pytest.raises(OSError) as raised:
        target.read_bytes()
    assert raised.value.errno == errno.EIO
    (mount.path / ENV / "g").write_bytes(SHARED)
    assert target.read_bytes() == SHARED
