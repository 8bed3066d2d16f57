"""Huge and sparse files in the store: holes are never read nor stored, a size limit, and commits a stop cuts short.

The mount side (EFBIG through the kernel, a stop during a long commit) is
in test_fs_large_files.py.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors
from fusestore.cli.mount_cmd import size
from fusestore.digests import hash_fd
from fusestore.linux import extents
from fusestore.pool import StagingArea
from fusestore.store.owners import Owner
from fusestore.store.stopping import Stopping

from .helpers import ENV, ManualClock, read

MiB = 1 << 20


def sparse_file(path: Path, length: int, data: dict[int, bytes]) -> bytes:
    """A file of ``length`` bytes, holes but for ``data`` (offset -> bytes); returns its bytes."""
    with open(path, "wb") as out:
        out.truncate(length)
        for offset, piece in data.items():
            out.seek(offset)
            out.write(piece)
    return path.read_bytes()


def test_extents_name_the_data_and_the_holes(tmp_path: Path) -> None:
    sparse_file(tmp_path / "f", 64 * MiB, {8 * MiB: b"x" * 4096, 40 * MiB: b"y"})
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        found = list(extents(fd, 0, 64 * MiB))
    finally:
        os.close(fd)
    assert sum(length for _, length, _ in found) == 64 * MiB
    assert [data for _, _, data in found] == [False, True, False, True, False]
    assert found[1][0] <= 8 * MiB < found[1][0] + found[1][1]
    assert all(start + length == after for (start, length, _), (after, _, _) in zip(found, found[1:], strict=False))


@pytest.mark.parametrize("layout", [
    {}, {0: b"a"}, {MiB - 1: b"bc"}, {5 * MiB: os.urandom(3 * MiB)}, {12 * MiB - 1: b"z"},
], ids=["all hole", "data first", "across a piece", "data inside", "data last"])
def test_hashing_a_sparse_file_gives_the_hash_of_its_bytes(tmp_path: Path, layout: dict[int, bytes]) -> None:
    content = sparse_file(tmp_path / "f", 12 * MiB, layout)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    seen: list[int] = []
    try:
        assert hash_fd(fd, seen.append) == (blake3.blake3(content).digest(), len(content))
    finally:
        os.close(fd)
    assert sum(seen) == len(content)


def staged_file(store: Store, length: int, tail: bytes) -> tuple[int, bytes]:
    """A file created as through the mount, truncated to ``length`` with ``tail`` at its end, committed."""
    env = store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
    node, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
    staged.truncate(length)
    staged.write(tail, length - len(tail))
    digest, size_ = staged.hash()
    store.writes.commit(staged, digest, size_)
    return node.ino, digest


def test_a_sparse_file_is_stored_and_copied_for_an_edit_without_filling_its_holes(store: Store) -> None:
    ino, digest = staged_file(store, 1 << 30, b"end")
    reader = store.content.open_content(digest)
    try:
        assert reader.hash() == (digest, 1 << 30)
    finally:
        reader.close()
    store.sync()
    assert sum(os.stat(pack).st_blocks * 512 for pack in (store.path / "packs").iterdir()) <= MiB, \
        "the packs hold the holes' zeros"
    with store.catalog.read() as tx:
        assert len(list(tx.extents(digest))) <= 4, "a hole is one run of one chunk of zeros"
    staged = store.writes.stage(ino, 1 << 30)  # an in-place edit, over the content
    assert os.stat(staged.path).st_blocks * 512 <= MiB, "nothing is copied"
    assert store.writes.hash(staged) == (digest, 1 << 30)
    store.writes.abandon(staged, remove_created=False)


def test_a_commit_cut_short_by_a_stop_is_finished_by_recovery(store_path: Path) -> None:
    """As a stopping daemon's commit: the hashing gives up, the staging file stays recorded, the next open commits."""
    content = b"written out of order"
    with Store.open(store_path) as store:
        env = store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
        _, staged = store.namespace.create(env.ino, b"f", 0o644, Owner(0, 0))
        staged.write(content[5:], 5)
        staged.write(content[:5], 0)
        store.stopping.stop_after(0)
        with pytest.raises(errors.Interrupted) as raised:
            staged.hash(store.stopping.check)
        assert raised.value.errno == 5  # EIO
        staged.close()
    with Store.open(store_path) as store:
        assert read(store, "f") == content
        assert list(store.staging.names()) == []


def test_a_stop_gives_work_in_flight_its_grace_then_every_check_raises() -> None:
    clock = ManualClock()
    stopping = Stopping(clock)
    stopping.check()
    stopping.stop_after(5)
    clock.advance(4.9)
    stopping.check()
    stopping.stop_after(60)  # a later deadline does not postpone the first
    clock.advance(0.1)
    with pytest.raises(errors.Interrupted):
        stopping.check()


def test_no_file_grows_past_the_size_limit(store_path: Path) -> None:
    with Store.open(store_path, max_file_size=10) as store:
        writes = store.writes
        assert writes.writable(0, 10) == 10
        assert writes.writable(8, 5) == 2  # short, as ext4 at its own maximum
        for offset in (10, 11, 1 << 62):
            with pytest.raises(errors.FileTooLarge) as raised:
                writes.writable(offset, 1)
            assert raised.value.errno == 27  # EFBIG
        writes.check_size(10)
        with pytest.raises(errors.FileTooLarge):
            writes.check_size(11)
        store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
        with pytest.raises(errors.FileTooLarge):
            store.put_for_environment(ENV, "big", io.BytesIO(b"x" * 11), 11)
        store.put_for_environment(ENV, "fits", io.BytesIO(b"x" * 10), 10)
    with Store.open(store_path) as store:
        store.writes.check_size(1 << 62)  # no limit unless asked for


def test_sizes_take_k_m_g_t_suffixes() -> None:
    assert [size(text) for text in ("0", "17", "4K", "256m", "3G", "10T")] == \
        [0, 17, 4 << 10, 256 << 20, 3 << 30, 10 << 40]
    for bad in ("", "T", "1P", "-1", "1.5G", "١٢"):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)


def test_a_staging_file_reads_its_holes_as_zeros_and_ends_where_it_ends(tmp_path: Path) -> None:
    """Reads that fall in a hole are answered without a pread: the bytes must be the same."""
    area = StagingArea(tmp_path / "staging")
    staged = area.create()
    try:
        staged.truncate(3 * MiB)
        staged.write(b"data", 2 * MiB)
        assert staged.read(MiB, 0) == bytes(MiB)
        assert staged.read(MiB, 2 * MiB - 10) == bytes(10) + b"data" + bytes(MiB - 14)
        assert staged.read(MiB, 3 * MiB - 100) == bytes(100)
        assert staged.read(MiB, 3 * MiB) == b""
        assert staged.read(MiB, 5 * MiB) == b""
    finally:
        area.discard(staged)
