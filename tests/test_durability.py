"""Group commit: pack appends become durable at checkpoints, and recovery checks the packs no checkpoint covered.

A crashed process is a real child process that ends with ``os._exit``
before closing its store, at a moment a ``FailingPackStore`` cue picks. A
power loss, which cannot be staged here, is modelled by what it may leave:
a catalog that reached the disk and a pack whose bytes did not (the pack
file cut short, missing, or holding other bytes).
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
import pytest

from fusestore import Store, errors
from fusestore.catalog import Chunk
from fusestore.pool import FailingPackStore, LocalPackStore, StagingFile
from fusestore.store.fsck import find_problems
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner

from .chunk_accounting import accounting_problems
from .helpers import ENV, ENV2, leftover_staging, live_chunk_bytes, put, read, stored_contents

if TYPE_CHECKING:
    from .mount_helpers import Mount

CONTENTS = 'A = b"a" * 100_000\nB = b"b" * 200_000\n'
A = b"a" * 100_000
B = b"b" * 200_000


def unsynced(store: Store) -> list[int]:
    """The packs listed as appended to since the checkpoint that covered them."""
    with store.catalog.read() as tx:
        return [int.from_bytes(key, "big") for key in tx.unsynced()]


def places_of(store_path: Path, data: bytes) -> list[Chunk]:
    """The chunk rows of a content, read without opening the store (which would recover it)."""
    with Inspection.open(store_path) as inspection:
        chunks = [inspection.chunk(extent.chunk) for extent in inspection.extents_of(blake3.blake3(data).digest())]
    assert chunks and all(chunk is not None for chunk in chunks)
    return [chunk for chunk in chunks if chunk is not None]


def places_of_open(store: Store, data: bytes) -> list[Chunk]:
    with store.catalog.read() as tx:
        return [chunk for extent in tx.extents(blake3.blake3(data).digest()) if (chunk := tx.chunk(extent.chunk))]


def pack_path(store_path: Path, pack: int) -> Path:
    return store_path / "packs" / f"{pack:016x}"


def pack_files(store_path: Path) -> list[int]:
    return list(LocalPackStore(store_path / "packs").packs())


def crash_after(store_path: Path, steps: str) -> None:
    """Run ``steps`` against the store in a child process that dies without closing it."""
    script = textwrap.dedent("""
        import io, os, sys
        from fusestore import Store
        from fusestore.pool import FailingPackStore, LocalPackStore
        packs = FailingPackStore(LocalPackStore(sys.argv[1] + "/packs"))
        store = Store.open(sys.argv[1], packs=packs)
        def put(env, path, data):
            store.put_for_environment(env, path, io.BytesIO(data), len(data))
        def roll_over():  # seal the open pack: what is appended next goes to a pack of its own
            store.chunks.close()
    """) + CONTENTS + textwrap.dedent(steps) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", script, str(store_path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)


def test_a_pack_appended_to_is_unsynced_until_the_checkpoint(store: Store) -> None:
    put(store, "a", A)
    [pack] = pack_files(store.path)
    assert unsynced(store) == [pack]
    store.sync()
    assert unsynced(store) == []
    put(store, "again", A)  # a dedup hit appends nothing
    assert unsynced(store) == []
    assert find_problems(store) == []


def test_a_pack_appended_to_during_a_checkpoint_waits_for_the_next(store_path: Path) -> None:
    """Only appends recorded before the checkpoint began are known to be covered by its barrier.

    Here the chunks of A are released and appended anew while the barrier
    runs: the pack is listed again, and that listing must survive the checkpoint.
    """
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        put(store, "a", A)

        def the_same_content_comes_back() -> None:
            store.remove_for_environment(ENV, "a")
            put(store, "a again", A)

        packs.on("barrier", the_same_content_comes_back)
        store.sync()
        assert unsynced(store) == pack_files(store_path)
        store.sync()
        assert unsynced(store) == []


def test_close_is_a_checkpoint(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a", A)
    with Store.open(store_path) as store:
        assert unsynced(store) == []
        assert read(store, "a") == A


def test_a_pack_freed_before_the_checkpoint_leaves_the_list_with_its_file(store: Store) -> None:
    """(Whole-file blobs left the list with their release; a pack stays listed while it holds appends.)"""
    put(store, "a", A)
    store.chunks.close()
    [pack] = pack_files(store.path)
    store.remove_for_environment(ENV, "a")
    assert unsynced(store) == [pack], "its appends are still to flush until the barrier"
    store.sync()
    assert unsynced(store) == [] and pack_files(store.path) == []
    assert find_problems(store) == []


def test_after_a_process_crash_every_unsynced_pack_checks_out(store_path: Path) -> None:
    crash_after(store_path, f"""
        put({ENV!r}, "a", A)
        store.sync()
        put({ENV!r}, "b", B)
    """)
    with Store.open(store_path) as store:
        assert read(store, "a") == A
        assert read(store, "b") == B
        assert find_problems(store) == []


def damage(store_path: Path, data: bytes, how: str) -> int:
    """What a power loss may do to the pack of ``data``'s chunks, appended after the last checkpoint; its id."""
    chunks = places_of(store_path, data)
    [pack] = {chunk.pack for chunk in chunks}
    path = pack_path(store_path, pack)
    if how == "truncated":
        os.truncate(path, min(chunk.offset for chunk in chunks))
    elif how == "missing":
        path.unlink()
    else:
        with open(path, "r+b") as file:
            for chunk in chunks:
                file.seek(chunk.offset)
                file.write(bytes(chunk.stored))
    return pack


@pytest.mark.parametrize("how", ["truncated", "missing", "other bytes"])
def test_content_a_power_loss_took_becomes_an_empty_file_and_is_logged(
    store_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    crash_after(store_path, f"""
        put({ENV!r}, "a", A)
        store.sync()
        roll_over()
        put({ENV!r}, "b", B)
        put({ENV2!r}, "copy of b", B)
    """)
    pack = damage(store_path, B, how)
    with caplog.at_level(logging.ERROR), Store.open(store_path) as store:
        assert read(store, "a") == A, "content synced before the crash is untouched"
        assert read(store, "b") == b""
        assert read(store, "copy of b", env=ENV2) == b""
        assert find_problems(store) == []
        assert stored_contents(store) == [blake3.blake3(A).digest()]
        put(store, "b again", B)
        assert read(store, "b again") == B, "the same content can be stored again"
    assert pack not in pack_files(store_path), "the damaged pack, with nothing live, is freed and deleted"
    lost = [r for r in caplog.records if "was lost in a crash" in r.getMessage()]
    assert len(lost) == 2


def test_chunks_appended_by_a_commit_that_never_came_are_dead_and_their_pack_goes(store_path: Path) -> None:
    """A crash between a batch's appends and its transaction: the bytes are in a pack, no row names them."""
    crash_after(store_path, f"""
        packs.on("append", lambda: os._exit(0), after=True)  # dies before the batch's transaction
        put({ENV!r}, "b", B)
    """)
    [pack] = pack_files(store_path)
    assert pack_path(store_path, pack).stat().st_size > 0
    with Store.open(store_path) as store:
        assert stored_contents(store) == [] and live_chunk_bytes(store) == 0
        assert store.resource(blake3.blake3(B).hexdigest()) is None
        assert find_problems(store) == []
    assert pack_files(store_path) == []


def test_a_crash_in_a_later_batch_of_a_large_file_releases_the_earlier_batches(store_path: Path) -> None:
    """The first batches' transactions committed (extents and chunk references of a pending content), then a kill.

    Recovery drops the pending content and the references its extents
    took: no chunk keeps a refcount, and no pack live bytes, for it.
    """
    crash_after(store_path, f"""
        import blake3
        from fusestore.store.gathering import BATCH_BYTES
        put({ENV!r}, "a", A)
        big = os.urandom(3 * BATCH_BYTES)
        digest = blake3.blake3(big).digest()
        def dies_once_a_batch_is_recorded():
            with store.catalog.read() as tx:
                if next(tx.extents(digest), None) is not None:
                    os._exit(0)
        packs.on("append", dies_once_a_batch_is_recorded, always=True)
        put({ENV!r}, "big", big)
        os._exit(1)  # not reached: the put must not finish
    """)
    with Inspection.open(store_path) as inspection:
        [pending] = [res for res in inspection.resources() if not res.complete]
        assert inspection.extents_of(pending.digest), "a batch was recorded before the crash"
    with Store.open(store_path) as store:
        assert stored_contents(store) == [blake3.blake3(A).digest()]
        assert store.resource(pending.digest.hex()) is None
        with store.catalog.read() as tx:
            assert {chunk.digest for chunk in tx.chunks()} == {e.chunk for _, e in tx.all_extents()}
            assert sum(pack.live for pack in tx.packs()) == live_chunk_bytes(store)
        assert accounting_problems(store) == []
        assert find_problems(store) == []
        assert read(store, "a") == A


def test_a_kill_during_a_pack_append_leaves_a_torn_tail_that_nothing_references(store_path: Path) -> None:
    """Part of an append at the pack's end, then death: the pack is sealed at the next open, its tail dead."""
    crash_after(store_path, f"""
        put({ENV!r}, "a", A)
        store.sync()
        def torn():  # what a kill mid-write leaves: some of the bytes, at the end of the open pack
            [pack] = packs.inner.packs()
            with open(packs.inner.path_of(pack), "ab") as file:
                file.write(b"half an append")
            os._exit(0)
        packs.on("append", torn)
        put({ENV!r}, "b", B)
    """)
    [torn] = pack_files(store_path)
    with Store.open(store_path) as store:
        assert read(store, "a") == A
        assert stored_contents(store) == [blake3.blake3(A).digest()]
        with store.catalog.read() as tx:
            pack = tx.pack(torn)
            assert pack is not None and pack.sealed and pack.size == pack_path(store_path, torn).stat().st_size
            assert pack.live == live_chunk_bytes(store) < pack.size, "the torn tail counts as nothing live"
        assert accounting_problems(store) == []
        put(store, "b", B)
        assert read(store, "b") == B
        assert torn not in {chunk.pack for chunk in places_of_open(store, B)}, "no append after a sealed pack's end"
        assert find_problems(store) == []


ROLLOVER = 1 << 20  # the children's PACK_TARGET: a few MiB roll over a few times
C1 = random.Random(1).randbytes(3 << 20)
C2 = random.Random(2).randbytes(3 << 20)


@pytest.mark.parametrize("op, after", [("create", False), ("create", True), ("seal", False), ("seal", True)],
                         ids=["row-without-file", "file-without-chunks", "before-seal", "sealed-not-recorded"])
def test_a_kill_during_a_rollover_keeps_what_was_stored_and_no_pack_for_nothing(
    store_path: Path, op: str, after: bool
) -> None:
    """Kills at each step of a rollover: seal the full pack, write the new pack's row, make its file.

    Between the row and the file the catalog knows a pack that does not
    exist; after the file, a pack holds nothing; a pack may be sealed in
    the pack store and not yet in the catalog. The next open settles each.
    """
    crash_after(store_path, f"""
        import random
        from fusestore.store import chunks
        chunks.PACK_TARGET = {ROLLOVER}
        c1, c2 = random.Random(1).randbytes(3 << 20), random.Random(2).randbytes(3 << 20)
        put({ENV!r}, "c1", c1)
        store.sync()
        packs.on({op!r}, lambda: os._exit(0), after={after!r})
        put({ENV!r}, "c2", c2)
        os._exit(1)  # not reached: a rollover comes within 3 MiB
    """)
    with Store.open(store_path) as store:
        assert read(store, "c1") == C1
        with pytest.raises(errors.NotFound):
            store.get_for_environment(ENV, "c2")
        assert stored_contents(store) == [blake3.blake3(C1).digest()]
        assert accounting_problems(store) == []
        assert find_problems(store) == []
        put(store, "c2", C2)
        assert read(store, "c2") == C2
    with Store.open(store_path) as store:
        assert accounting_problems(store) == []
        with store.catalog.read() as tx:
            assert {pack.pack for pack in tx.packs()} == set(pack_files(store_path))


def test_a_pack_freed_just_before_a_crash_is_deleted(store_path: Path) -> None:
    crash_after(store_path, f"""
        put({ENV!r}, "a", A)
        roll_over()
        store.sync()
        packs.on("delete", lambda: os._exit(0))  # dies between the commit and the deletion
        store.remove_for_environment({ENV!r}, "a")
        store.sync()  # the deletion waits for the commit to be durable
    """)
    [pack] = pack_files(store_path)
    with Store.open(store_path) as store:
        assert pack not in pack_files(store_path)
        with store.catalog.read() as tx:
            assert tx.freed() == [] and tx.pack(pack) is None
        assert find_problems(store) == []


def test_an_unfinished_checked_put_of_lost_content_is_undone(store_path: Path) -> None:
    digest = blake3.blake3(B).hexdigest()
    crash_after(store_path, f"""
        put({ENV!r}, "b", B)

        class DiesMidway(io.RawIOBase):
            def readinto(self, buffer):
                os._exit(0)

        store.put_for_environment_and_check_hash({ENV!r}, "checked", DiesMidway(), len(B), {digest!r})
    """)
    damage(store_path, B, "missing")
    with Store.open(store_path) as store:
        assert read(store, "b") == b""
        assert find_problems(store) == []
        with store.catalog.read() as tx:
            assert tx.resource(bytes.fromhex(digest)) is None
        assert store.put_for_environment_and_check_hash(ENV, "checked", io.BytesIO(B), len(B), digest) == digest
        assert read(store, "checked") == B


KILL_LOOP_SCRIPT = """
import io, os, random, sys
from fusestore import Store
store = Store.open(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
contents = [bytes([i]) * (1000 * (i + 1)) for i in range(8)] + [b""]
envs = [{ENV!r}, {ENV2!r}]
def say(*words):
    sys.stdout.write(" ".join(words) + "\\n")
    sys.stdout.flush()
say("open")
while True:
    env, path = rng.choice(envs), f"d{{rng.randrange(3)}}/f{{rng.randrange(12)}}"
    say("begin", env, path)
    choice = rng.random()
    if choice < 0.7:
        data = rng.choice(contents + [os.urandom(rng.randrange(1, 300_000))])
        digest = store.put_for_environment(env, path, io.BytesIO(data), len(data))
        say("put", env, path, digest)
    elif choice < 0.95:
        try:
            store.remove_for_environment(env, path)
        except Exception:
            pass
        say("removed", env, path)
    else:
        store.sync()
        say("synced", env, path)
"""


@pytest.mark.parametrize("seed", range(6))
def test_killed_at_a_random_moment_the_store_keeps_everything_that_returned(store_path: Path, seed: int) -> None:
    """SIGKILL while puts, removes and checkpoints run: on reopening, every finished put reads back."""
    script = KILL_LOOP_SCRIPT.format(ENV=ENV, ENV2=ENV2)
    for round_number in range(3):
        child = subprocess.Popen([sys.executable, "-c", script, str(store_path), f"{seed}{round_number}"],
                                 stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        assert child.stdout is not None
        assert child.stdout.readline() == "open\n"
        time.sleep(random.Random(seed * 10 + round_number).uniform(0.05, 0.6))
        child.kill()
        log = child.stdout.read().split("\n")[:-1]  # a line cut by the kill has no newline yet
        child.wait()
        expected: dict[tuple[str, str], str | None] = {}
        unsure: set[tuple[str, str]] = set()
        for line in log:
            word, env, path, *rest = line.split()
            if word == "begin":
                unsure.add((env, path))
                continue
            unsure.discard((env, path))
            if word == "put":
                expected[env, path] = rest[0]
            elif word == "removed":
                expected[env, path] = None
        with Store.open(store_path) as store:
            assert find_problems(store) == []
            for (env, path), digest in expected.items():
                if (env, path) in unsure:
                    continue
                if digest is None:
                    with pytest.raises(errors.NotFound):
                        store.get_for_environment(env, path)
                else:
                    assert blake3.blake3(read(store, path, env=env)).hexdigest() == digest


def test_a_checkpoint_after_deletions_makes_them_durable_before_forgetting_them(store_path: Path) -> None:
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        put(store, "a", A)
        store.chunks.close()
        store.sync()
        [pack] = pack_files(store_path)
        barriers = packs.calls["barrier"]
        store.remove_for_environment(ENV, "a")
        with store.catalog.read() as tx:
            assert tx.freed() == [pack.to_bytes(8, "big")]
        store.sync()
        assert packs.calls["delete"] == 1 and pack_files(store_path) == []
        assert packs.calls["barrier"] == barriers + 1, "the deletion's unlink is covered by a barrier"
        with store.catalog.read() as tx:
            assert tx.freed() == []


def test_a_spare_blob_name_a_crash_left_alone_in_staging_is_removed(store_path: Path) -> None:
    Store.open(store_path).close()
    spare = store_path / "staging" / ("ab" * 16 + ".blob")
    spare.write_bytes(b"half published")
    with Store.open(store_path) as store:
        assert not spare.exists()
        assert leftover_staging(store) == []
        assert find_problems(store) == []


def test_a_file_fsynced_then_closed_survives_a_power_loss_before_the_next_checkpoint(store_path: Path) -> None:
    """The fsync made the staging file and its record durable; the close's commit never reached the disk.

    The power loss is modelled by what it leaves: the catalog as the fsync's
    checkpoint synced it (saved then), and the staging directory as it is
    (a committed change's staging file stays until a checkpoint covers the commit).
    """
    saved = store_path.parent / "catalog-at-fsync"
    crash_after(store_path, f"""
        import shutil
        from fusestore.store.owners import Owner
        env = store.namespace.mkdir(1, {ENV!r}.encode(), 0o755, Owner(0, 0))
        node, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
        staged.write(B, 0)
        staged.sync()  # what fsync(2) on the mount does: the staging file, then a checkpoint
        store.sync()
        shutil.copytree(sys.argv[1] + "/catalog", {str(saved)!r})
        digest, size = staged.hash()
        store.writes.commit(staged, digest, size)  # close(): committed, not yet synced
    """)
    shutil.rmtree(store_path / "catalog")
    shutil.copytree(saved, store_path / "catalog")
    with Store.open(store_path) as store:
        assert read(store, "f") == B
        assert find_problems(store) == []


def _created_and_written(store: Store, data: bytes) -> StagingFile:
    env = store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
    _, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
    staged.write(data, 0)
    return staged


def test_a_change_a_checkpoint_made_durable_keeps_its_staging_file_until_the_next(store: Store) -> None:
    staged = _created_and_written(store, A)
    store.sync()  # as an fsync does: the record and the staging file are durable now
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size)
    assert store.writes.retired() == [staged.name] == store.staging.names()
    store.sync()
    assert store.staging.names() == [] and store.writes.retired() == []
    assert read(store, "f") == A


def test_a_change_no_checkpoint_covered_drops_its_staging_file_at_its_commit(store: Store) -> None:
    staged = _created_and_written(store, A)
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size)
    assert store.staging.names() == [] and store.writes.retired() == []


def test_recovery_keeps_the_time_of_the_last_write_as_the_mtime_and_logs_the_path(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crash_after(store_path, f"""
        from fusestore.store.owners import Owner
        env = store.namespace.mkdir(1, {ENV!r}.encode(), 0o755, Owner(0, 0))
        node, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
        staged.write(A, 0)
        os.utime(staged.path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # its last write, long ago
    """)
    with caplog.at_level(logging.INFO), Store.open(store_path) as store:
        assert read(store, "f") == A
        _, _, ino = store.locate_for_environment(ENV, "f")
        assert store.namespace.getattr(ino).mtime_ns == 1_000_000_000_000_000_000
    assert f"recovery: committed what was written to /{ENV}/f (inode {ino}) before the crash (100000 bytes, " \
        f"BLAKE3 {blake3.blake3(A).hexdigest()})" in caplog.text


def test_a_pack_store_where_syncfs_cannot_be_trusted_fsyncs_each_pack_at_the_barrier(store_path: Path) -> None:
    packs = FailingPackStore(LocalPackStore(store_path / "packs", trust_syncfs=False))
    with Store.open(store_path, packs=packs) as store:
        put(store, "a", A)
        put(store, "b", B)
        store.remove_for_environment(ENV, "b")  # deleted before the barrier: nothing to fsync
        store.sync()
        assert unsynced(store) == []
        assert read(store, "a") == A
        assert find_problems(store) == []


def test_syncfs_is_trusted_on_this_disk_and_not_on_a_fuse_mount(tmp_path: Path, mount: "Mount") -> None:
    assert LocalPackStore(tmp_path / "packs").trust_syncfs, "the test machine's disk is ext4-like"
    inside = mount.path / ENV
    inside.mkdir()
    assert not LocalPackStore(inside / "packs").trust_syncfs, "syncfs(2) never reaches a FUSE daemon"


def test_chunks_whose_pack_a_power_loss_took_come_back_from_the_fsynced_staging_file(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit reached the disk, its pack's file did not; the retired staging file still has the bytes."""
    crash_after(store_path, f"""
        from fusestore.store.owners import Owner
        env = store.namespace.mkdir(1, {ENV!r}.encode(), 0o755, Owner(0, 0))
        node, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
        staged.write(B, 0)
        staged.sync()
        store.sync()
        digest, size = staged.hash()
        store.writes.commit(staged, digest, size)
    """)
    lost = damage(store_path, B, "missing")
    with caplog.at_level(logging.WARNING), Store.open(store_path) as store:
        assert read(store, "f") == B
        assert lost not in {chunk.pack for chunk in places_of_open(store, B)}
        assert find_problems(store) == []
    assert f"the bytes of {blake3.blake3(B).hexdigest()} were lost in a crash; stored them again" in caplog.text


def test_a_resource_left_pending_with_no_upload_is_dropped_by_recovery(
        store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fusestore.catalog import PENDING, Resource

    with Store.open(store_path) as store:
        put(store, "a", A)
        with store.catalog.write() as tx:  # what no write path leaves, and recovery must not keep
            tx.save_resource(Resource(blake3.blake3(B).digest(), len(B), 1, PENDING))
    with caplog.at_level(logging.INFO, logger="fusestore"), Store.open(store_path) as store:
        with store.catalog.read() as tx:
            assert tx.resource(blake3.blake3(B).digest()) is None
        assert read(store, "a") == A and find_problems(store) == []
    assert f"dropped the content {blake3.blake3(B).hexdigest()}" in caplog.text
