"""Pack files on a real disk: appends and reads, threads, restarts, seals, deletes, the read cache, barriers."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fusestore.pool import LocalPackStore, PackMissing, PackSealed, PackStore, ShortRead

from .helpers import umask


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store" / "packs"


@pytest.fixture
def packs(root: Path) -> LocalPackStore:
    return LocalPackStore(root)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_appends_are_given_consecutive_offsets_and_read_back(packs: LocalPackStore, root: Path) -> None:
    packs.create(7)
    assert packs.end(7) == 0
    assert packs.append(7, b"hello") == 0
    assert packs.append(7, memoryview(b"world!")) == 5
    assert packs.append(7, b"") == 11
    assert packs.end(7) == 11
    assert packs.read(7, 0, 5) == b"hello"
    assert packs.read(7, 5, 6) == b"world!"
    assert packs.read(7, 3, 0) == b""
    assert (root / "0000000000000007").read_bytes() == b"helloworld!"  # no header, no framing


def test_create_refuses_an_existing_pack(packs: LocalPackStore) -> None:
    packs.create(1)
    packs.append(1, b"kept")
    with pytest.raises(FileExistsError):
        packs.create(1)
    assert packs.read(1, 0, 4) == b"kept"


def test_pack_ids_are_u64(packs: LocalPackStore, root: Path) -> None:
    packs.create(2**64 - 1)
    assert (root / "ffffffffffffffff").is_file()
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            packs.create(bad)


def test_a_missing_pack_is_pack_missing_for_every_operation(packs: LocalPackStore) -> None:
    for operation in (lambda: packs.append(3, b"x"), lambda: packs.read(3, 0, 1), lambda: packs.end(3),
                      lambda: packs.seal(3)):
        with pytest.raises(PackMissing):
            operation()
    assert issubclass(PackMissing, FileNotFoundError)
    packs.delete(3)  # missing: nothing


def test_reading_past_the_end_is_a_short_read(packs: LocalPackStore) -> None:
    packs.create(1)
    packs.append(1, b"0123456789")
    with pytest.raises(ShortRead):
        packs.read(1, 5, 6)
    with pytest.raises(ShortRead):
        packs.read(1, 100, 1)
    assert packs.read(1, 5, 5) == b"56789"


def test_concurrent_appends_get_disjoint_ranges_that_read_back(packs: LocalPackStore) -> None:
    packs.create(1)
    placed: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(200):
            data = rng.randbytes(rng.randrange(1, 3000))
            offset = packs.append(1, data)
            with lock:
                placed.append((offset, data))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(placed) == 16 * 200
    placed.sort()
    position = 0
    for offset, data in placed:  # back to back: no overlap, no gap
        assert offset == position
        position += len(data)
    assert packs.end(1) == position == os.stat(packs.path_of(1)).st_size
    for offset, data in placed:
        assert packs.read(1, offset, len(data)) == data


FAILED_WRITE = """
import errno, os, resource, signal, sys
from fusestore.pool import LocalPackStore
packs = LocalPackStore(sys.argv[1])
packs.create(1)
assert packs.append(1, b"a" * 1000) == 0
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
try:
    packs.append(1, b"b" * 10000)
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
else:
    raise AssertionError("the append past the file size limit succeeded")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
assert packs.end(1) == 11000  # the failed append's range is not given out again
assert packs.append(1, b"c" * 100) == 11000
assert packs.read(1, 0, 1000) == b"a" * 1000
assert packs.read(1, 11000, 100) == b"c" * 100
"""


def test_a_failed_write_leaves_its_range_dead_and_the_pack_usable(root: Path) -> None:
    """A real failing write (the file size limit, as a full disk would): the error propagates, later appends work."""
    result = subprocess.run([sys.executable, "-c", FAILED_WRITE, str(root)], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert os.stat(root / "0000000000000001").st_size == 11100


def test_a_restarted_store_continues_a_pack_at_its_end(root: Path) -> None:
    first = LocalPackStore(root)
    first.create(9)
    first.append(9, b"before the restart")
    del first
    second = LocalPackStore(root)
    assert second.end(9) == 18
    assert second.append(9, b", after") == 18
    assert second.read(9, 0, 25) == b"before the restart, after"


def test_a_sealed_pack_refuses_appends_and_still_reads(packs: LocalPackStore) -> None:
    packs.create(4)
    packs.append(4, b"final")
    before = open_fds()
    packs.seal(4)
    assert open_fds() == before - 1  # the append descriptor is closed
    with pytest.raises(PackSealed):
        packs.append(4, b"more")
    assert packs.end(4) == 5
    assert packs.read(4, 0, 5) == b"final"


def test_a_pack_can_be_sealed_after_a_restart(root: Path) -> None:
    LocalPackStore(root).create(4)
    packs = LocalPackStore(root)
    packs.seal(4)
    with pytest.raises(PackSealed):
        packs.append(4, b"x")


def test_delete_removes_the_pack_and_drops_its_descriptors(packs: LocalPackStore) -> None:
    baseline = open_fds()
    packs.create(5)
    packs.append(5, b"doomed")
    assert packs.read(5, 0, 6) == b"doomed"
    assert open_fds() == baseline + 2  # one to append, one to read
    packs.delete(5)
    assert open_fds() == baseline
    assert not os.path.exists(packs.path_of(5))
    with pytest.raises(PackMissing):
        packs.read(5, 0, 6)
    with pytest.raises(PackMissing):
        packs.append(5, b"x")
    packs.create(5)  # the id is free again, and the new pack is not the old one's cached descriptor
    packs.append(5, b"reborn")
    assert packs.read(5, 0, 6) == b"reborn"
    assert list(packs.packs()) == [5]


def test_the_read_cache_stays_within_its_bound(packs: LocalPackStore) -> None:
    for pack in range(200):
        packs.create(pack)
        packs.append(pack, pack.to_bytes(8, "big"))
        packs.seal(pack)
    baseline = open_fds()
    for _ in range(2):  # the second round reads through evictions
        for pack in range(200):
            assert packs.read(pack, 0, 8) == pack.to_bytes(8, "big")
            assert open_fds() <= baseline + 64
    assert open_fds() == baseline + 64


def test_the_most_recently_read_packs_stay_open(root: Path) -> None:
    packs = LocalPackStore(root, read_cache=2)
    for pack in range(3):
        packs.create(pack)
        packs.append(pack, b"x")
        packs.seal(pack)
    packs.read(0, 0, 1)
    packs.read(1, 0, 1)
    packs.read(0, 0, 1)  # 0 is now the most recent: reading 2 evicts 1
    packs.read(2, 0, 1)
    os.unlink(packs.path_of(0))  # a cached descriptor still reads an unlinked file; an evicted one cannot
    os.unlink(packs.path_of(1))
    assert packs.read(0, 0, 1) == b"x"
    with pytest.raises(PackMissing):
        packs.read(1, 0, 1)


def test_an_evicted_descriptor_is_not_closed_under_a_reader(root: Path) -> None:
    """Readers of many packs on many threads, with a cache of 2: every read still returns its bytes."""
    packs = LocalPackStore(root, read_cache=2)
    for pack in range(8):
        packs.create(pack)
        packs.append(pack, bytes([pack]) * 65536)
    failures: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(500):
                pack = rng.randrange(8)
                assert packs.read(pack, rng.randrange(60000), 4096) == bytes([pack]) * 4096
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_an_unsealed_pack_reads_what_its_appends_returned(packs: LocalPackStore) -> None:
    packs.create(1)
    for i in range(50):
        data = os.urandom(100 + i)
        offset = packs.append(1, data)
        assert packs.read(1, offset, len(data)) == data  # one cached read descriptor, the file growing under it


def test_packs_are_private_under_the_most_open_umask(tmp_path: Path) -> None:
    with umask(0):
        packs = LocalPackStore(tmp_path / "a" / "b" / "packs")
        packs.create(1)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "packs"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(packs.path_of(1)).st_mode) == 0o600


def test_packs_lists_only_pack_names_sorted(packs: LocalPackStore, root: Path) -> None:
    for pack in (300, 2, 2**63):
        packs.create(pack)
    for foreign in ("000000000000000A", "00000000000000001", "000000000000001", "notapack", "0000000000000002.tmp"):
        (root / foreign).write_bytes(b"")
    assert list(packs.packs()) == [2, 300, 2**63]


@pytest.mark.parametrize("trust_syncfs", [True, False])
def test_barrier_after_every_kind_of_change(root: Path, trust_syncfs: bool) -> None:
    packs = LocalPackStore(root, trust_syncfs=trust_syncfs)
    packs.barrier()  # nothing yet
    packs.create(1)
    packs.append(1, b"data")
    packs.barrier()
    packs.create(2)
    packs.seal(1)
    packs.delete(2)
    packs.barrier()
    assert list(packs.packs()) == [1]
    assert packs.read(1, 0, 4) == b"data"


def test_a_pack_deleted_behind_the_barriers_back_does_not_fail_it(root: Path) -> None:
    packs = LocalPackStore(root, trust_syncfs=False)
    packs.create(1)
    packs.append(1, b"data")
    os.unlink(packs.path_of(1))
    packs.barrier()  # nothing left to make durable
    packs.barrier()


def test_a_failed_barrier_keeps_its_list_for_the_next(root: Path) -> None:
    """A pack that cannot be flushed fails the barrier, and every barrier after it until it can be."""
    packs = LocalPackStore(root, trust_syncfs=False)
    packs.create(1)
    packs.append(1, b"data")
    path = packs.path_of(1)
    os.rename(path, path + ".moved")
    os.symlink(os.path.basename(path), path)  # a symlink loop: opening it fails with ELOOP
    with pytest.raises(OSError):
        packs.barrier()
    with pytest.raises(OSError):
        packs.barrier()  # the pack is still on the list: not dropped by the failure
    os.unlink(path)
    os.rename(path + ".moved", path)
    packs.barrier()
    os.rename(path, path + ".moved")
    os.symlink(os.path.basename(path), path)
    packs.barrier()  # the list is empty now: the pack is not flushed again


def test_a_new_pack_directory_has_its_name_flushed_by_the_first_barrier(tmp_path: Path) -> None:
    parent = tmp_path / "store"
    packs = LocalPackStore(parent / "packs", trust_syncfs=False)

    def break_parent() -> None:  # a symlink loop where the parent was: opening it fails with ELOOP
        parent.rename(tmp_path / "moved")
        parent.symlink_to(parent.name)

    def mend_parent() -> None:
        parent.unlink()
        (tmp_path / "moved").rename(parent)

    break_parent()
    with pytest.raises(OSError):
        packs.barrier()
    with pytest.raises(OSError):
        packs.barrier()  # still to do
    mend_parent()
    packs.barrier()
    break_parent()
    packs.barrier()  # done once: not again
    mend_parent()
    again = LocalPackStore(parent / "packs", trust_syncfs=False)  # an existing directory: its name is not its to flush
    break_parent()
    again.barrier()


def test_a_trusted_syncfs_barrier_flushes_the_filesystem_not_each_pack(root: Path) -> None:
    packs = LocalPackStore(root, trust_syncfs=True)
    packs.create(1)
    packs.append(1, b"data")
    path = packs.path_of(1)
    os.rename(path, path + ".moved")
    os.symlink(os.path.basename(path), path)
    packs.barrier()  # one syncfs: the loop is never opened


def test_the_local_store_is_a_pack_store(packs: LocalPackStore) -> None:
    store: PackStore = packs
    assert not store.promises.durable_on_put
