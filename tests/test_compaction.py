"""Compaction gives the space of deleted data back, and loses nothing whatever happens meanwhile.

Real stores in temporary directories: LMDB catalogs and pack files. A
crashed process is a child that ends with ``os._exit`` at a point a pack
store subclass picks (before or after compaction's barrier, before or after
the deletion of a freed pack); the store is then opened again, and every
file must read back as it was, with exactly the pack files the catalog
knows.
"""

from __future__ import annotations

import io
import logging
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fusestore import Store
from fusestore.catalog import Pack
from fusestore.cli.compact_cmd import compact
from fusestore.pool import LocalPackStore
from fusestore.store.chunks import PACK_TARGET
from fusestore.store.compaction import SMALL_PACK, SMALL_PACKS, candidates

from .helpers import ENV, live_chunk_bytes, put, read

REPO = Path(__file__).resolve().parent.parent
FILES = 60
FILE_SIZE = 200_000


def data_of(name: str, size: int = FILE_SIZE) -> bytes:
    """Incompressible bytes, the same for the same name: a file's stored bytes are its length."""
    return random.Random(name).randbytes(size)


def pack_file_bytes(store_path: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(store_path / "packs"))


def pack_files(store_path: Path) -> set[int]:
    return {int(entry.name, 16) for entry in os.scandir(store_path / "packs")}


def pack_rows(store: Store) -> list[Pack]:
    with store.catalog.read() as tx:
        return list(tx.packs())


def assert_packs_accounted_for(store: Store) -> None:
    """The pack files are the packs the catalog knows, each one's live count is what is located in it."""
    store.sync()
    with store.catalog.read() as tx:
        rows = {pack.pack: pack for pack in tx.packs()}
        located: dict[int, int] = {}
        for chunk in tx.chunks():
            assert chunk.pack in rows, f"chunk {chunk.digest.hex()} is in pack {chunk.pack}, which is gone"
            located[chunk.pack] = located.get(chunk.pack, 0) + chunk.stored
        assert tx.freed() == []
    assert pack_files(store.path) == set(rows)
    assert {pack: row.live for pack, row in rows.items() if row.live} == located


def fill(store_path: Path, names: list[str]) -> None:
    """One open of the store that puts ``names`` and closes (which seals its pack)."""
    with Store.open(store_path) as store:
        for name in names:
            put(store, name, data_of(name))


def sparse_store(store_path: Path, keep_every: int = 10) -> list[str]:
    """A store whose sealed pack holds one live file in ``keep_every``; the names kept."""
    names = [f"f{i}" for i in range(FILES)]
    fill(store_path, names)
    with Store.open(store_path) as store:
        for number, name in enumerate(names):
            if number % keep_every:
                store.remove_for_environment(ENV, name)
    return names[::keep_every]


def test_deleting_most_files_and_compacting_gives_the_space_back(store_path: Path) -> None:
    kept = sparse_store(store_path)
    with Store.open(store_path) as store:
        before = pack_file_bytes(store_path)
        assert before >= FILES * FILE_SIZE
        done = store.compact()
        after = pack_file_bytes(store_path)
        assert after == live_chunk_bytes(store) == len(kept) * FILE_SIZE
        assert done.packs_freed == 1
        assert done.copied_bytes == after
        assert done.given_back == before - after
        for name in kept:
            assert read(store, name) == data_of(name)
        assert_packs_accounted_for(store)
    with Store.open(store_path) as store:
        assert store.compact().packs_freed == 0, "the pack it wrote is full of live chunks"
        for name in kept:
            assert read(store, name) == data_of(name)


def test_a_pack_more_than_half_live_is_left_alone(store_path: Path) -> None:
    sparse_store(store_path, keep_every=2)  # one half removed: exactly half live is not less than half
    with Store.open(store_path) as store:
        before = pack_file_bytes(store_path)
        done = store.compact()
        assert (done.packs_freed, done.copied_bytes) == (0, 0)
        assert pack_file_bytes(store_path) == before


def test_contents_of_every_kind_read_back_identical(store_path: Path) -> None:
    block = data_of("block", 65536)
    contents = {
        "empty": b"",
        "one byte": b"x",
        "small": data_of("small", 100),
        "large": data_of("large", 5 << 20),
        "repeated": block * 40 + data_of("tail", 1000) + block * 3,
        "sparse": bytes(4 << 20) + data_of("island", 70_000) + bytes(3 << 20),
        "compressible": b"hello, compaction " * 100_000,
    }
    with Store.open(store_path) as store:
        for name, data in contents.items():
            put(store, name, data)
        parent, name, ino = store.locate_for_environment(ENV, "large")
        store.namespace.link(ino, parent, b"hard link to large")
        put(store, "copy of small", contents["small"])
        put(store, "doomed", data_of("doomed", 20 << 20))
    with Store.open(store_path) as store:
        store.remove_for_environment(ENV, "doomed")
        assert store.compact().packs_freed >= 1
        assert_packs_accounted_for(store)
    with Store.open(store_path) as store:
        for name, data in contents.items():
            assert read(store, name) == data, name
        assert read(store, "hard link to large") == contents["large"]
        assert read(store, "copy of small") == contents["small"]


def test_a_sealed_pack_with_nothing_live_goes_without_a_copy(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a", data_of("a"))
        with store.catalog.write() as tx:  # a pack the release path never freed
            empty = tx.new_pack_id()
            tx.save_pack(Pack(empty, size=5, live=0, sealed=True))
        store.packs.create(empty)
        store.packs.append(empty, b"stale")
        store.packs.seal(empty)
        done = store.compact()
        assert (done.packs_freed, done.freed_bytes, done.copied_bytes) == (1, 5, 0)
        assert empty not in pack_files(store_path)
        assert read(store, "a") == data_of("a")
        assert_packs_accounted_for(store)


def test_small_packs_are_merged_once_there_are_enough_of_them(store_path: Path) -> None:
    for number in range(SMALL_PACKS - 1):
        fill(store_path, [f"open {number}"])
    with Store.open(store_path) as store:
        assert store.compact().packs_freed == 0, "a few small packs are left as they are"
    fill(store_path, [f"open {SMALL_PACKS - 1}"])
    with Store.open(store_path) as store:
        assert len(pack_rows(store)) == SMALL_PACKS
        done = store.compact()
        assert done.packs_freed == SMALL_PACKS
        assert done.given_back == 0, "every byte of them was live"
    with Store.open(store_path) as store:
        assert len(pack_rows(store)) == 1
        for number in range(SMALL_PACKS):
            assert read(store, f"open {number}") == data_of(f"open {number}")
        assert_packs_accounted_for(store)


def test_candidates_are_the_emptiest_sealed_packs_first_then_enough_small_ones() -> None:
    big = 32 << 20
    packs = [Pack(1, big, big // 3, True), Pack(2, big, big // 10, True), Pack(3, 0, 0, False),
             Pack(4, big, big // 2, True), Pack(5, 0, 0, True), Pack(6, 100, 100, True)]
    assert [pack.pack for pack in candidates(packs)] == [5, 2, 1]
    small = [Pack(10 + n, SMALL_PACK - 1, SMALL_PACK - 1, True) for n in range(SMALL_PACKS - 1)]
    assert [pack.pack for pack in candidates(packs + small)] == [5, 2, 1, 6, *(pack.pack for pack in small)]


def test_a_budget_bounds_the_bytes_one_call_copies(store_path: Path) -> None:
    kept = sparse_store(store_path, keep_every=4)
    budget = 1 << 20
    with Store.open(store_path) as store:
        live = live_chunk_bytes(store)
        calls = 0
        while (done := store.compact(budget)).copied_bytes:
            assert done.copied_bytes <= budget
            calls += 1
        assert calls >= live // budget
        assert pack_file_bytes(store_path) == live
        for name in kept:
            assert read(store, name) == data_of(name)
        assert_packs_accounted_for(store)


def test_a_reader_open_across_a_compaction_reads_right(store_path: Path) -> None:
    big = data_of("big", 3 << 20)
    with Store.open(store_path) as store:
        put(store, "big", big)
        for number in range(20):
            put(store, f"doomed {number}", data_of(f"doomed {number}"))
    with Store.open(store_path) as store:
        for number in range(20):
            store.remove_for_environment(ENV, f"doomed {number}")
        _, _, ino = store.locate_for_environment(ENV, "big")
        reader = store.content.checked_open(ino)
        try:
            head = reader.pread(100_000, 0)  # the places of the chunks that follow are looked up too
            assert store.compact().packs_freed == 1
            assert head + reader.pread(len(big), len(head)) == big
        finally:
            reader.close()
        assert_packs_accounted_for(store)


def test_a_chunk_released_or_stored_again_during_the_copy_is_not_lost(store_path: Path) -> None:
    """The move transaction skips a chunk released meanwhile, and one stored again elsewhere since."""
    kept = sparse_store(store_path, keep_every=3)
    gone, back = kept[1], kept[2]
    with Store.open(store_path, packs=Interleaving(store_path / "packs")) as store:
        packs = store.packs
        assert isinstance(packs, Interleaving)

        def meanwhile() -> None:
            store.remove_for_environment(ENV, gone)
            store.remove_for_environment(ENV, back)
            put(store, back, data_of(back))  # its chunks again, in the open pack: other places

        packs.before_barrier = meanwhile
        done = store.compact()
        assert done.packs_freed == 1
        assert pack_file_bytes(store_path) == done.copied_bytes + FILE_SIZE  # the copy and the new chunks
        for name in kept:
            if name != gone:
                assert read(store, name) == data_of(name)
        assert live_chunk_bytes(store) == (len(kept) - 1) * FILE_SIZE
        assert_packs_accounted_for(store)
    with Store.open(store_path) as store:
        for name in kept:
            if name != gone:
                assert read(store, name) == data_of(name)


def test_writes_and_deletes_during_compaction_lose_nothing(store_path: Path) -> None:
    kept = sparse_store(store_path, keep_every=3)
    with Store.open(store_path) as store:
        expected = {name: data_of(name) for name in kept}
        stop = threading.Event()
        failures: list[BaseException] = []

        def writer() -> None:
            rng = random.Random(7)
            try:
                for step in range(400):
                    name = f"w{rng.randrange(20)}"
                    if name in expected and rng.random() < 0.4:
                        store.remove_for_environment(ENV, name)
                        del expected[name]
                    else:
                        expected[name] = data_of(f"{name} {step}", rng.randrange(1, 300_000))
                        put(store, name, expected[name])
                    if rng.random() < 0.05:
                        store.chunks.close()  # seals the open pack: more sealed packs to compact
                    if stop.is_set():
                        return
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        freed_meanwhile = 0
        while thread.is_alive():
            freed_meanwhile += store.compact(1 << 20).packs_freed
        thread.join()
        assert failures == []
        assert freed_meanwhile > 1, "packs were compacted while the writer ran"
        store.compact()
        for name, data in expected.items():
            assert read(store, name) == data, name
        assert_packs_accounted_for(store)
    with Store.open(store_path) as store:
        for name, data in expected.items():
            assert read(store, name) == data, name
        assert_packs_accounted_for(store)


CRASHING = textwrap.dedent("""
    import os, sys
    from fusestore import Store
    from fusestore.pool import LocalPackStore

    store_path, point = sys.argv[1], sys.argv[2]

    class Dying(LocalPackStore):
        armed = False

        def barrier(self):
            self.die("before the barrier")
            super().barrier()
            self.die("after the barrier")

        def delete(self, pack):
            self.die("before the deletion")
            super().delete(pack)
            self.die("after the deletion")

        def die(self, here):
            if self.armed and here == point:
                os._exit(17)

    packs = Dying(store_path + "/packs")
    store = Store.open(store_path, packs=packs)
    packs.armed = True
    store.compact()
    os._exit(0)
""")


@pytest.mark.parametrize("point", ["before the barrier", "after the barrier", "before the deletion",
                                   "after the deletion"])
def test_a_crash_at_any_point_of_a_compaction_loses_nothing(store_path: Path, point: str) -> None:
    kept = sparse_store(store_path)
    with Store.open(store_path) as store:
        old_packs = {pack.pack for pack in pack_rows(store)}
    result = subprocess.run([sys.executable, "-c", CRASHING, str(store_path), point], cwd=REPO, timeout=120,
                            capture_output=True, text=True)
    assert result.returncode == 17, result.stderr  # it died there
    with Store.open(store_path) as store:
        for name in kept:
            assert read(store, name) == data_of(name)
        assert_packs_accounted_for(store)
        moved = point in ("before the deletion", "after the deletion")
        assert bool(old_packs & pack_files(store_path)) != moved, "the old pack goes once the move committed"
        store.compact()
        assert pack_file_bytes(store_path) == live_chunk_bytes(store) == len(kept) * FILE_SIZE
    with Store.open(store_path) as store:
        for name in kept:
            assert read(store, name) == data_of(name)
        assert_packs_accounted_for(store)


def test_the_command_compacts_a_store_and_says_what_it_gave_back(store_path: Path) -> None:
    kept = sparse_store(store_path)
    before = pack_file_bytes(store_path)
    out, err = io.StringIO(), io.StringIO()
    assert compact(store_path, out=out, err=err) == 0, err.getvalue()
    given_back = before - pack_file_bytes(store_path)
    assert out.getvalue().startswith(f"compacted 1 pack: {given_back} bytes (")
    assert pack_file_bytes(store_path) == len(kept) * FILE_SIZE
    out = io.StringIO()
    assert compact(store_path, out=out, err=err) == 0
    assert out.getvalue() == "nothing to compact: no pack is sparse, and small packs are few\n"
    with Store.open(store_path) as store:
        for name in kept:
            assert read(store, name) == data_of(name)


def test_the_command_on_a_new_store_has_nothing_to_do(store_path: Path) -> None:
    Store.open(store_path).close()
    out, err = io.StringIO(), io.StringIO()
    assert compact(store_path, out=out, err=err) == 0, err.getvalue()
    assert out.getvalue() == "nothing to compact: no pack is sparse, and small packs are few\n"
    assert pack_files(store_path) == set(), "no pack was started for nothing"


def test_the_command_refuses_a_store_in_use_and_a_path_without_one(store_path: Path, tmp_path: Path) -> None:
    sparse_store(store_path)
    with Store.open(store_path):
        result = subprocess.run([sys.executable, "-m", "fusestore", "compact", str(store_path)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"fusestore: store {store_path} is in use by process {os.getpid()}")
    assert "a mount compacts its store itself" in result.stderr
    err = io.StringIO()
    assert compact(tmp_path / "nothing here", out=io.StringIO(), err=err) == 2
    assert err.getvalue() == f"fusestore: no store at {tmp_path / 'nothing here'}: no catalog/data.mdb\n"
    assert not (tmp_path / "nothing here").exists()


class Interleaving(LocalPackStore):
    """A local pack store that runs ``before_barrier`` once, at its next barrier: other work meanwhile."""

    before_barrier: Callable[[], None] | None = None

    def barrier(self) -> None:
        action, self.before_barrier = self.before_barrier, None
        if action is not None:
            action()
        super().barrier()


def test_a_pack_that_cannot_be_read_is_left_as_it_is_and_said_once(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = sparse_store(store_path)
    with Store.open(store_path) as store:
        (sparse,) = pack_rows(store)
    os.truncate(store_path / "packs" / f"{sparse.pack:016x}", 10 * FILE_SIZE + 1)  # within the second kept file
    with caplog.at_level(logging.ERROR), Store.open(store_path) as store:
        done = store.compact()
        assert (done.packs_freed, done.copied_bytes) == (0, FILE_SIZE), "the first kept file was copied"
        assert store.compact().copied_bytes == 0
        assert read(store, kept[0]) == data_of(kept[0]), "moved: it reads as it did"
    said = [record for record in caplog.records if "cannot be read" in record.getMessage()]
    assert len(said) == 1


def test_copies_that_fill_the_open_pack_are_moved_before_it_rolls(store_path: Path) -> None:
    """More live bytes than one pack holds: each round is moved before the pack it copied into is sealed."""
    per_open = PACK_TARGET // FILE_SIZE - 10  # one pack each, nearly full
    names = [[f"open {number} file {index}" for index in range(per_open)] for number in range(3)]
    for batch in names:
        fill(store_path, batch)
    kept = [name for batch in names for name in batch[::2][:per_open * 9 // 20]]  # 45% of each pack live
    with Store.open(store_path) as store:
        for batch in names:
            for name in set(batch) - set(kept):
                store.remove_for_environment(ENV, name)
        assert len(pack_rows(store)) == 3
        done = store.compact()
        assert done.packs_freed == 3
        assert done.copied_bytes == len(kept) * FILE_SIZE > PACK_TARGET
        assert len(pack_rows(store)) == 2, "the open pack rolled once"
        assert pack_file_bytes(store_path) == live_chunk_bytes(store) == done.copied_bytes
        assert_packs_accounted_for(store)
    with Store.open(store_path) as store:
        for name in kept:
            assert read(store, name) == data_of(name)
