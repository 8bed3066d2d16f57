"""The in-place upgrade of a format-2 store (whole-file blobs) to chunks in packs: nothing lost, crash or not."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import blake3
import lmdb
import pytest

from fusestore import Store, errors
from fusestore.catalog import LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, LOST
from fusestore.catalog.records import FORMAT_VERSION
from fusestore.cli import fsck_cmd
from fusestore.digests import EMPTY_DIGEST
from fusestore.pool import LocalPackStore, NoBlobs
from fusestore.pool.local import blob_path
from fusestore.store import gathering
from fusestore.store.fsck import run_checks
from fusestore.store.inspect import Inspection

from .format2 import CHUNK_TABLES, make_format1, make_format2, write_blob
from .helpers import ENV, put, read

MiB = 1 << 20
SMALL = b"small file\n"
LARGE = hashlib.shake_256(b"large").digest(9 * MiB)  # three 4 MiB batches of Chunks.store, appends of 1 MiB
SPARSE = b"head" + bytes(6 * MiB) + b"tail"
CRASHED = 17  # the exit status of a child that reached its crash point
UPGRADE_LOG = "fusestore.store.upgrade"


def fill(store: Store) -> None:
    """Every kind of file an old store may hold."""
    put(store, "small", SMALL)
    put(store, "dir/large", LARGE)
    put(store, "dup1", SMALL + b"twice")
    put(store, "dir/dup2", SMALL + b"twice")
    put(store, "empty", b"")
    put(store, "sparse", SPARSE)
    parent, _, ino = store.locate_for_environment(ENV, "small")
    store.namespace.link(ino, parent, b"hard")
    store.xattrs.set(ino, b"user.note", b"kept")


FILES = {"small": SMALL, "hard": SMALL, "dir/large": LARGE, "dup1": SMALL + b"twice",
         "dir/dup2": SMALL + b"twice", "empty": b"", "sparse": SPARSE}


@pytest.fixture
def old_store(store_path: Path) -> Path:
    make_format2(store_path, fill)
    return store_path


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def assert_upgraded(store_path: Path) -> None:
    """Every file reads back, no whole-file blob is left, and the chunks and packs hold nothing stray."""
    with Store.open(store_path) as store:
        for path, data in FILES.items():
            assert read(store, path) == data, path
        _, _, ino = store.locate_for_environment(ENV, "small")
        assert store.namespace.getattr(ino).nlink == 2
        assert store.xattrs.get(ino, b"user.note") == b"kept"
        assert isinstance(store.content.blobs, NoBlobs)
    assert_only_chunks(store_path)


def assert_only_chunks(store_path: Path) -> None:
    assert not (store_path / "pool").exists()
    with Inspection.open(store_path) as ins:
        assert ins.meta()[b"format"] == str(FORMAT_VERSION).encode()
        uses: Counter[bytes] = Counter()
        for _, extent in ins.extents():
            uses[extent.chunk] += extent.count
        for res in ins.resources():
            if res.digest == EMPTY_DIGEST or res.state == LOST:
                assert ins.extents_of(res.digest) == []
                continue
            assert res.layout == LAYOUT_CHUNKS, res
            extents = ins.extents_of(res.digest)
            assert extents[-1].end == res.length
            assert all(a.end == b.start for a, b in zip(extents, extents[1:], strict=False)), "a gap"
        chunks = {chunk.digest: chunk for chunk in ins.chunks()}
        assert {d: c.refcount for d, c in chunks.items()} == dict(uses), "chunk refcounts are their uses"
        live: Counter[int] = Counter()
        for chunk in chunks.values():
            live[chunk.pack] += chunk.stored
        rows = {pack.pack: pack for pack in ins.pack_rows()}
        assert {pack: row.live for pack, row in rows.items() if row.live} == dict(live)
        assert {f.pack for f in ins.pack_files()} == set(rows), "pack files are the packs the catalog knows"
        assert sorted(ins.pack_index()) == sorted((c.pack, c.offset, c.digest) for c in chunks.values())
        assert ins.freed() == []


def test_a_format2_store_is_what_format2_wrote(old_store: Path) -> None:
    with Inspection.open(old_store) as ins:
        assert ins.meta().keys() == {b"format", b"next_ino"} and ins.meta()[b"format"] == b"2"
        assert {res.layout for res in ins.resources()} == {LAYOUT_WHOLE_BLOB}
        assert list(ins.chunks()) == [] and list(ins.extents()) == []
        blobs = {blob.digest: blob for blob in ins.blobs()}
        assert set(blobs) == {digest_of(data) for data in FILES.values() if data}  # duplicates: one blob
        assert os.stat(blobs[digest_of(SPARSE)].path).st_blocks * 512 < MiB  # holes stay holes
    env = lmdb.open(str(old_store / "catalog"), readonly=True, lock=False, max_dbs=32)
    try:
        with env.begin() as txn:
            names = {bytes(key) for key in txn.cursor().iternext(values=False)}
    finally:
        env.close()
    assert names.isdisjoint(CHUNK_TABLES) and len(names) == 10
    assert not (old_store / "packs").exists()


def test_every_file_reads_back_identical_after_the_upgrade_and_the_pool_goes(
        old_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=UPGRADE_LOG):
        assert_upgraded(old_store)
    lines = [record.getMessage() for record in caplog.records if record.name == UPGRADE_LOG]
    assert lines[0].startswith("upgrade: chunking the whole-file blobs of 4 contents")
    assert lines[-1].startswith("upgrade: done: 4 contents") and "0 lost; pool/ removed" in lines[-1]


def test_a_format1_store_is_upgraded_too(store_path: Path) -> None:
    make_format1(store_path, fill)
    assert_upgraded(store_path)


def test_a_store_made_with_chunks_is_not_upgraded(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(store_path) as store:
        put(store, "a", SMALL)
    with caplog.at_level(logging.DEBUG, logger=UPGRADE_LOG), Store.open(store_path) as store:
        assert read(store, "a") == SMALL
    assert not [record for record in caplog.records if record.name == UPGRADE_LOG]


class DyingPacks(LocalPackStore):
    """A pack store whose process dies (``os._exit``) at its ``appends``-th append: a crash between batches."""

    def __init__(self, root: Path, appends: int) -> None:
        super().__init__(root)
        self.left = appends

    def append(self, pack: int, data: bytes | memoryview) -> int:
        self.left -= 1
        if self.left <= 0:
            os._exit(CRASHED)
        return super().append(pack, data)


class DieOn(logging.Handler):
    """A log handler whose process dies at the ``count``-th record of ``message`` (the upgrade's DEBUG line)."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(logging.DEBUG)
        self.message, self.left = message, count

    def emit(self, record: logging.LogRecord) -> None:
        if self.message in record.getMessage():
            self.left -= 1
            if self.left <= 0:
                os._exit(CRASHED)


def upgrade_in_child(store_path: Path, *, packs: int | None = None, switches: int | None = None) -> None:
    """Open the store in a forked child that dies at a chosen point of the upgrade; it must have died there."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            logger = logging.getLogger(UPGRADE_LOG)
            logger.setLevel(logging.DEBUG)
            if switches is not None:
                logger.addHandler(DieOn("is in chunks now", switches))
            gathering.BATCH_BYTES = 4 << 20  # the large file in three batches
            dying = DyingPacks(store_path / "packs", packs) if packs is not None else None
            Store.open(store_path, packs=dying)
        finally:
            os._exit(1)  # the upgrade ended before its crash point
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == CRASHED


def test_a_crash_between_batches_is_converted_again(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_format2(store_path, lambda store: put(store, "dir/large", LARGE))
    upgrade_in_child(store_path, packs=6)  # in the second batch of the large file (one append per MiB)
    digest = digest_of(LARGE)
    with Inspection.open(store_path) as ins:
        res = ins.resource(digest)
        assert res is not None and res.complete and res.layout == LAYOUT_WHOLE_BLOB
        assert ins.extents_of(digest), "the first batch was recorded"
        assert Path(blob_path(store_path / "pool", digest)).stat().st_size == len(LARGE)
    with caplog.at_level(logging.INFO, logger=UPGRADE_LOG), Store.open(store_path) as store:
        assert read(store, "dir/large") == LARGE
    assert any("a crash cut short the conversion" in record.getMessage() for record in caplog.records)
    assert_only_chunks(store_path)


@pytest.mark.parametrize("switches", [1, 3])
def test_a_crash_after_a_switch_before_its_blob_is_deleted_loses_nothing(old_store: Path, switches: int) -> None:
    upgrade_in_child(old_store, switches=switches)
    with Inspection.open(old_store) as ins:
        switched = [res for res in ins.resources() if res.layout == LAYOUT_CHUNKS]
        assert len(switched) == switches
        assert set(ins.freed()) == {res.digest for res in switched}, "listed as freed in the switch"
        assert {blob.digest for blob in ins.blobs()} & set(ins.freed()), "the last one not yet deleted"
    assert_upgraded(old_store)


def test_one_crash_after_another_then_an_open_finishes_the_upgrade(store_path: Path) -> None:
    make_format2(store_path, fill)
    upgrade_in_child(store_path, packs=3)
    upgrade_in_child(store_path, packs=6)  # each open releases what the last one cut short, and goes further
    assert_upgraded(store_path)


def test_damaged_blobs_end_lost_with_a_line_naming_their_files_and_the_others_convert(
        store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wrong, short, missing = b"w" * 100_000, b"s" * 70_000, b"missing bytes"

    def some(store: Store) -> None:
        for name, data in ("ok", SMALL), ("d/wrong", wrong), ("short", short), ("gone", missing), ("large", LARGE):
            put(store, name, data)

    make_format2(store_path, some)
    pool = store_path / "pool"
    Path(blob_path(pool, digest_of(wrong))).write_bytes(b"W" * len(wrong))
    os.truncate(blob_path(pool, digest_of(short)), 1000)
    os.unlink(blob_path(pool, digest_of(missing)))
    with caplog.at_level(logging.INFO, logger=UPGRADE_LOG), Store.open(store_path) as store:
        assert read(store, "ok") == SMALL
        assert read(store, "large") == LARGE
        for name in ("d/wrong", "short", "gone"):
            with pytest.raises(errors.ContentLost):
                read(store, name)
    errors_logged = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    for name, data, why in (("d/wrong", wrong, "does not hash to its name"), ("short", short, "has 1000 bytes"),
                            ("gone", missing, "is missing")):
        line = next(line for line in errors_logged if digest_of(data).hex() in line)
        assert why in line and f"/{ENV}/{name}" in line, line
    found = sorted(os.listdir(store_path / "lost+found"))
    assert found == sorted([digest_of(wrong).hex(), digest_of(short).hex()])
    with Inspection.open(store_path) as ins:
        for data in (wrong, short, missing):
            res = ins.resource(digest_of(data))
            assert res is not None and res.state == LOST and res.layout == LAYOUT_CHUNKS
            assert ins.extents_of(res.digest) == []
    assert_only_chunks(store_path)
    with Store.open(store_path) as store:  # writing the same bytes again restores a lost content
        put(store, "again", wrong)
        assert read(store, "d/wrong") == wrong


def test_a_blob_no_content_names_goes_to_lost_and_found_so_that_the_pool_can_go(old_store: Path) -> None:
    stray = b"nothing references me"
    write_blob(old_store, digest_of(stray), stray)
    assert_upgraded(old_store)
    assert (old_store / "lost+found" / digest_of(stray).hex()).read_bytes() == stray


def test_a_foreign_file_in_the_pool_keeps_it_with_a_warning(old_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    (old_store / "pool" / "notes.txt").write_text("mine")
    with caplog.at_level(logging.INFO, logger=UPGRADE_LOG), Store.open(old_store) as store:
        for path, data in FILES.items():
            assert read(store, path) == data
    assert any("notes.txt is in the pool but is not a blob" in record.getMessage() for record in caplog.records)
    assert (old_store / "pool" / "notes.txt").read_text() == "mine"
    (old_store / "pool" / "notes.txt").unlink()
    assert_upgraded(old_store)  # the next open removes the pool


def test_fsck_and_stats_read_a_format2_store_that_was_never_upgraded(old_store: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert fsck_cmd.check(old_store, verify=True, repair=False, out=out, err=err) == 0, out.getvalue()
    assert out.getvalue() == (f"notice: the store holds 4 whole-file blobs ({sum(map(len, set(FILES.values())))} "
                              "bytes) of a store made before chunks: a mount or fsck --repair chunks them into packs\n")
    result = subprocess.run([sys.executable, "-m", "fusestore", "stats", "--json", str(old_store)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["files"] == 6 and figures["logical_bytes"] == sum(len(data) for data in FILES.values()) - len(SMALL)
    assert (old_store / "pool").is_dir() and not (old_store / "packs").exists(), "nothing was changed"
    with Inspection.open(old_store) as ins:
        assert ins.meta()[b"format"] == b"2"


def test_fsck_repair_of_a_format2_store_upgrades_it(old_store: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    fsck_cmd.check(old_store, verify=False, repair=True, out=out, err=err)
    assert "repaired: chunked the whole-file blobs into packs (the store's upgrade)" in out.getvalue()
    assert not (old_store / "pool").exists()
    with Inspection.open(old_store) as ins:
        for res in ins.resources():
            assert res.digest == EMPTY_DIGEST or (res.layout == LAYOUT_CHUNKS and ins.extents_of(res.digest))


def test_fsck_repair_of_a_format2_store_leaves_every_file_readable(old_store: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    fsck_cmd.check(old_store, verify=False, repair=True, out=out, err=err)
    assert "marked content" not in out.getvalue()
    assert_upgraded(old_store)


def set_format(store_path: Path, value: bytes) -> None:
    env = lmdb.open(str(store_path / "catalog"), map_size=1 << 40, max_dbs=32)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format", value, db=env.open_db(b"meta", txn=txn))
        env.sync(True)
    finally:
        env.close()


def test_a_version_3_store_opens_as_version_4_with_nothing_else_changed(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a", SMALL)
    set_format(store_path, b"3")
    with Store.open(store_path) as store:
        assert read(store, "a") == SMALL
    with Inspection.open(store_path) as ins:
        assert ins.meta()[b"format"] == str(FORMAT_VERSION).encode() == b"4"
        assert [str(problem) for problem in run_checks(ins)] == []


def test_a_store_of_a_newer_format_is_refused_untouched_with_a_clear_message(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a", SMALL)
    set_format(store_path, str(FORMAT_VERSION + 1).encode())
    before = (store_path / "catalog" / "data.mdb").read_bytes()
    expected = (f"store at {store_path} has format '{FORMAT_VERSION + 1}'; this fusestore reads formats 4, 3, 2 and 1 "
                "only: a newer fusestore wrote it: open it with that version (this one changed nothing)")
    with pytest.raises(errors.UnknownFormat) as refused:
        Store.open(store_path)
    assert str(refused.value) == expected
    out, err = io.StringIO(), io.StringIO()
    assert fsck_cmd.check(store_path, verify=False, repair=True, out=out, err=err) == 2
    assert err.getvalue() == f"fusestore: {expected}\n"
    assert (store_path / "catalog" / "data.mdb").read_bytes() == before


def test_a_store_of_an_unknown_format_is_told_to_use_a_matching_version(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a", SMALL)
    set_format(store_path, b"x9")
    with pytest.raises(errors.UnknownFormat, match="has format 'x9'; this fusestore reads formats 4, 3, 2 and 1 only: "
                                                   "use a matching fusestore version$"):
        Store.open(store_path)


def test_a_mount_of_a_format2_store_upgrades_it_and_serves_its_files(old_store: Path, tmp_path: Path) -> None:
    from .mount_helpers import Mount, require_fuse

    require_fuse()
    mount = Mount(old_store, tmp_path / "mnt", tmp_path / "daemon.log")
    mount.mount()
    try:
        for path, data in FILES.items():
            assert (mount.path / ENV / path).read_bytes() == data, path
        assert os.stat(mount.path / ENV / "small").st_nlink == 2
        assert os.getxattr(mount.path / ENV / "small", "user.note") == b"kept"
        assert not (old_store / "pool").exists()
        assert mount.blob_count() == 4
    finally:
        mount.release(failed=False)
    assert "upgrade: done: 4 contents" in mount.log_text()
    assert_only_chunks(old_store)


UPGRADER = """
import logging, sys, time
from fusestore import Store

logging.basicConfig(filename=sys.argv[2], level=logging.INFO, format="%(message)s")
logging.info("start")
store = Store.open(sys.argv[1])
logging.info("upgraded")
time.sleep(3600)
"""
CUT_FILES = {"small": SMALL, "dup1": SMALL + b"twice", "dir/dup2": SMALL + b"twice", "empty": b"",
             "large": LARGE[:5 * MiB], **{f"many/{n}": LARGE[n * 10_000:n * 10_000 + 30_000] for n in range(30)}}
ROUNDS = 12


def fill_for_cuts(store: Store) -> None:
    for path, data in CUT_FILES.items():
        put(store, path, data)


@pytest.mark.timeout(300)
def test_a_power_cut_during_the_upgrade_loses_nothing(tmp_path: Path) -> None:
    """The upgrade through the power-loss simulator, cut at random moments: every file reads back after it."""
    import random

    from .helpers import restart_machine
    from .mount_helpers import require_fuse
    from .test_power_loss import KEEP, REPO, cut, simulated, wait_for

    require_fuse()
    rng = random.Random(int(os.environ.get("POWERCUT_SEED", 20261201)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cut_short = 0
    for number in range(ROUNDS):
        backing, log_path = tmp_path / f"backing-{number}", tmp_path / f"upgrader-{number}.log"
        make_format2(backing / "store", fill_for_cuts)
        with simulated(backing, mnt, rng.randrange(1 << 30), rng.choice(KEEP)) as sim:
            upgrader = subprocess.Popen([sys.executable, "-c", UPGRADER, str(mnt / "store"), str(log_path)],
                                        cwd=REPO, stderr=subprocess.PIPE)
            wait_for(lambda log=log_path, started=upgrader: log.exists() or started.poll() is not None,
                     60, "the upgrader")
            time.sleep(rng.uniform(0, 0.3))  # the upgrade takes about 0.2 s after the log's first line here
            cut(sim, upgrader, "upgrader")
        said = log_path.read_text()
        cut_short += "upgrade: chunking" in said and "upgraded" not in said
        restart_machine(backing / "store" / "catalog")
        with Store.open(backing / "store") as store:
            for path, data in CUT_FILES.items():
                assert read(store, path) == data, (number, path, said)
        assert_only_chunks(backing / "store")
        shutil.rmtree(backing)
    assert cut_short, f"none of the {ROUNDS} cuts came during an upgrade: cut them earlier"
