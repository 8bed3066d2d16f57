"""In-place edits through the mount: no copy of the file first, reads see base and writes, the commit stores
only around the edit, and a kill of the daemon mid-edit loses neither (``store/edits.py``)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest

from .helpers import ENV
from .mount_helpers import Mount, kill_daemon_mid_write, offline_problems

MiB = 1 << 20
SIZE = 48 * MiB


def fresh(size: int, seed: bytes) -> bytes:
    return blake3.blake3(seed).digest(length=size)


def staging_disk_bytes(store: Path) -> int:
    return sum(entry.stat().st_blocks * 512 for entry in (store / "staging").iterdir())


def pack_bytes(store: Path) -> int:
    return sum(entry.stat().st_size for entry in (store / "packs").iterdir())


@pytest.fixture
def big(mount: Mount) -> tuple[Path, bytearray]:
    """A committed file of SIZE fresh bytes in ENV, and the model of its content."""
    env = mount.path / ENV
    env.mkdir()
    data = fresh(SIZE, b"base")
    (env / "big").write_bytes(data)
    return env / "big", bytearray(data)


def test_an_edit_in_the_middle_copies_nothing_first_and_stores_only_around_it(mount: Mount,
                                                                                big: tuple[Path, bytearray]) -> None:
    path, model = big
    before = pack_bytes(mount.store)
    patch = os.urandom(MiB)
    with open(path, "r+b") as file:
        file.seek(SIZE // 2 + 777)
        file.write(patch)
        file.flush()
        assert staging_disk_bytes(mount.store) < 2 * MiB, "the staging file holds the write, not a copy"
        file.seek(SIZE // 2)
        assert file.read(2 * MiB) == bytes(model[SIZE // 2:SIZE // 2 + 777]) + patch + bytes(
            model[SIZE // 2 + 777 + MiB:SIZE // 2 + 2 * MiB]), "reads see the base and the write"
    model[SIZE // 2 + 777:SIZE // 2 + 777 + MiB] = patch
    assert path.read_bytes() == model
    grown = pack_bytes(mount.store) - before
    assert MiB <= grown < 2 * MiB, grown
    assert os.getxattr(path, "user.fusestore.blake3").decode() == blake3.blake3(model).hexdigest()
    mount.umount()
    assert offline_problems(mount.store) == []


def test_small_unaligned_writes_truncations_and_writes_past_the_end_read_as_on_any_filesystem(
        mount: Mount, big: tuple[Path, bytearray], tmp_path: Path) -> None:
    path, model = big
    plain = tmp_path / "plain"
    plain.write_bytes(model)
    rng = random.Random(7)
    with open(path, "r+b") as file, open(plain, "r+b") as reference:
        for step in range(60):
            kind = rng.choice(["write", "write", "write", "truncate", "read"])
            size = os.fstat(reference.fileno()).st_size
            if kind == "write":
                offset = rng.choice([rng.randrange(0, size + 1), rng.randrange(0, 1 << 16), size + rng.randrange(5000)])
                data = os.urandom(rng.choice([1, 100, 4095, 4096, 4097, 70_000]))
                for target in (file, reference):
                    target.seek(offset)
                    target.write(data)
                    target.flush()
            elif kind == "truncate":
                length = rng.choice([rng.randrange(0, size + 1), size + rng.randrange(1, 9000)])
                file.truncate(length)
                reference.truncate(length)
            else:
                offset = rng.randrange(0, size + 1)
                file.seek(offset)
                reference.seek(offset)
                assert file.read(100_000) == reference.read(100_000), f"step {step}: read at {offset}"
    assert path.read_bytes() == plain.read_bytes()
    mount.remount()
    assert path.read_bytes() == plain.read_bytes()
    mount.umount()
    assert offline_problems(mount.store) == []


def test_the_file_a_rename_replaces_mid_edit_keeps_reading_its_base(mount: Mount, big: tuple[Path, bytearray]) -> None:
    """The edit's record holds its base: a rename over the file (its content released) changes nothing for it."""
    path, model = big
    other = path.parent / "other"
    other.write_bytes(b"something else")
    with open(path, "r+b") as file:
        file.seek(100)
        file.write(b"edited")
        os.rename(other, path)  # the edited inode is unlinked, still open
        file.seek(0)
        model[100:106] = b"edited"
        assert file.read() == model
    assert path.read_bytes() == b"something else"
    mount.umount()
    assert offline_problems(mount.store) == []


def test_a_kill_of_the_daemon_mid_edit_loses_neither_the_base_nor_the_writes(mount: Mount,
                                                                           big: tuple[Path, bytearray]) -> None:
    path, model = big
    kill_daemon_mid_write(mount, "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
                                 "os.pwrite(fd, b'x' * 5000, 12345)\n"
                                 "os.pwrite(fd, b'y' * 3, 40 * 1024 * 1024 + 1)", path)
    model[12345:12345 + 5000] = b"x" * 5000
    model[40 * MiB + 1:40 * MiB + 4] = b"yyy"
    assert path.read_bytes() == model, "recovery committed the edit over its base"
    assert "committed what was written" in mount.log_text()
    mount.umount()
    assert offline_problems(mount.store) == []
