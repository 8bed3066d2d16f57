"""Huge files through the mount: --max-file-size gives EFBIG, sparse files cost no disk, and a long commit
blocks neither other users, nor SIGTERM, nor an unmount (it is left to recovery, see test_large_files.py)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from fusestore.cli.mounts import process_alive
from fusestore.fs.daemon import STOP_GRACE
from fusestore.store.inspect import Inspection

from .helpers import ENV
from .mount_helpers import Child, Mount, eventually, offline_problems

MiB = 1 << 20
HUGE = 1 << 40  # hashing its zeros takes minutes here: the commit is still running when the test stops it


def test_max_file_size_gives_efbig_past_it_and_short_writes_across_it(mount_with: Callable[..., Mount]) -> None:
    mount = mount_with("--max-file-size", "1M")
    env = mount.path / ENV
    env.mkdir()
    fd = os.open(env / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"a" * 4096, MiB - 10) == 10  # as ext4 at its own maximum
        for offset in (MiB, MiB + 1, 1 << 50):
            with pytest.raises(OSError) as raised:
                os.pwrite(fd, b"b", offset)
            assert raised.value.errno == errno.EFBIG
        with pytest.raises(OSError) as raised:
            os.ftruncate(fd, MiB + 1)
        assert raised.value.errno == errno.EFBIG
        os.ftruncate(fd, MiB)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as raised:
        os.truncate(env / "f", 10 * MiB)
    assert raised.value.errno == errno.EFBIG
    # pyfuse3 has no fallocate: fallocate(2) is EOPNOTSUPP, and glibc's posix_fallocate falls back to writes
    result = subprocess.run(["fallocate", "-l", "2M", str(env / "f")], capture_output=True, text=True)
    assert result.returncode != 0 and "not supported" in result.stderr
    fd = os.open(env / "f", os.O_RDWR)
    try:
        with pytest.raises(OSError) as raised:
            os.posix_fallocate(fd, 0, 2 * MiB)
        assert raised.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert os.stat(env / "f").st_size == MiB
    assert (env / "f").read_bytes()[-10:] == b"a" * 10
    mount.umount()
    assert offline_problems(mount.store) == []


def test_a_sparse_file_commits_without_filling_its_holes(mount: Mount, env_dir: Path) -> None:
    path = env_dir / "sparse"
    started = time.monotonic()
    with open(path, "wb") as out:
        out.truncate(8 << 30)
        out.seek((8 << 30) - 3)
        out.write(b"end")
    assert eventually(lambda: _hash_of(path) is not None, timeout=60), "the commit did not finish"
    elapsed = time.monotonic() - started
    print(f"8 GiB sparse file committed in {elapsed:.2f} s")
    used = sum(p.stat().st_blocks * 512 for p in (mount.store / "pool").rglob("*") if p.is_file())
    assert used <= MiB, f"the pool holds {used} bytes for 3 bytes of data"
    with open(path, "rb") as file:
        file.seek((8 << 30) - 4)
        assert file.read() == b"\0end"


def _hash_of(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "user.fusestore.blake3")
    except OSError as exc:
        assert exc.errno == errno.ENODATA
        return None


def start_huge_commit(env: Path) -> float:
    """truncate(1) a file to HUGE: its commit, at release, hashes its zeros for minutes. When it started."""
    subprocess.run(["truncate", "-s", str(HUGE), str(env / "huge")], check=True, timeout=30)
    return time.monotonic()


def test_a_long_commit_blocks_neither_others_nor_sigterm(mount: Mount, env_dir: Path) -> None:
    start_huge_commit(env_dir)
    time.sleep(0.5)
    started = time.monotonic()
    (env_dir / "other").write_bytes(b"not held up")
    assert (env_dir / "other").read_bytes() == b"not held up"
    assert sorted(os.listdir(env_dir)) == ["huge", "other"]
    assert time.monotonic() - started < 1.0, "another file waited for the long commit"
    pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
    os.kill(pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert eventually(lambda: not process_alive(pid), timeout=STOP_GRACE + 15), "SIGTERM did not stop the daemon"
    print(f"the daemon exited {time.monotonic() - signalled:.1f} s after SIGTERM")
    assert "recovery at the next mount finishes it" in mount.log_text()
    _left_to_recovery(mount.store)


def test_many_long_commits_stall_no_reader_and_no_other_request(mount: Mount, env_dir: Path) -> None:
    """More huge commits at once than the kernel has background slots (12) and trio has threads (40).

    Releases that waited for their commit filled the kernel's background
    slots, and every read through the page cache (readahead) waited behind
    them; commits that took all of trio's threads would hold up unlinks,
    renames and checkpoints. A reader and those still answer at once.
    """
    data = os.urandom(20 * MiB)
    (env_dir / "x").write_bytes(data)
    for index in range(45):
        subprocess.run(["truncate", "-s", str(HUGE), str(env_dir / f"huge{index}")], check=True, timeout=30)
    time.sleep(0.5)

    def read_uncached() -> bytes:
        fd = os.open(env_dir / "x", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # so that the read goes through readahead
            return blake3.blake3(os.pread(fd, 2 * len(data), 0)).digest()
        finally:
            os.close(fd)

    started = time.monotonic()
    reader = Child(read_uncached)  # a process of its own: a stalled FUSE read cannot be interrupted
    assert eventually(lambda: not reader.running(), timeout=10), "a read waited behind the long commits"
    assert reader.wait() == (0, blake3.blake3(data).digest())
    (env_dir / "other").write_bytes(os.urandom(3 * MiB))  # more than a quick commit: a worker thread of its own
    os.rename(env_dir / "other", env_dir / "renamed")
    fd = os.open(env_dir / "renamed", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(env_dir / "renamed")
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"other requests waited {elapsed:.1f} s behind the long commits"
    mount.umount()


def test_a_long_commit_does_not_hold_up_an_unmount(mount: Mount, env_dir: Path) -> None:
    start_huge_commit(env_dir)
    time.sleep(0.5)
    started = time.monotonic()
    mount.umount()  # fusestore umount waits for the daemon to exit
    print(f"fusestore umount took {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < STOP_GRACE + 15
    _left_to_recovery(mount.store)


def _left_to_recovery(store: Path) -> None:
    """The huge file's staging file is recorded, and nothing else is wrong: the next mount commits it."""
    with Inspection.open(store) as inspection:
        records = list(inspection.staging_records())
        assert [record.keep for record in records] == [True]
        assert os.stat(store / "staging" / records[0].name).st_size == HUGE
        assert os.stat(store / "staging" / records[0].name).st_blocks == 0
    assert offline_problems(store) == []
