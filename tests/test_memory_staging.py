"""Small files are staged in memory (``pool/memory_staging.py``) and keep every promise the disk kept."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

from fusestore import Store
from fusestore.pool import memory_root, staging
from fusestore.pool.memory_staging import ENVIRONMENT, MEMORY_FILE_MAX
from fusestore.store.fsck import find_problems
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner
from fusestore.store.repair import recovery_plan

from .helpers import ENV, crash_before_commit, leftover_staging, read, restart_machine
from .mount_helpers import Mount, kill_daemon_mid_write, offline_problems

SMALL = b"a small file's bytes\n" * 100


def memory_dir(store: Store) -> Path:
    assert store.staging.memory is not None, "this run stages small files in memory"
    return Path(store.staging.memory)


def memory_dir_of(store_path: Path) -> Path:
    with Inspection.open(store_path) as ins:
        store_id = ins.tx.store_id()
    assert store_id is not None
    root = memory_root(store_id, store_path, create=False)
    assert root is not None
    return Path(root)


def create(store: Store, name: bytes) -> staging.StagingFile:
    env = store.namespace.lookup(1, ENV.encode()).ino
    return store.namespace.create(env, name, 0o644, Owner(0, 0))[1]


def commit(store: Store, staged: staging.StagingFile) -> None:
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size)


@pytest.fixture
def env_store(store: Store) -> Store:
    store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
    return store


# -- where the bytes are ---------------------------------------------------------------------------------


def test_a_created_file_is_staged_in_memory_until_it_grows_past_the_limit(env_store: Store) -> None:
    store = env_store
    staged = create(store, b"f")
    staged.write(SMALL, 0)
    assert os.listdir(memory_dir(store)) == [staged.name]
    assert leftover_staging(store) == [staged.name] and os.listdir(store.path / "staging") == []
    big = os.urandom(MEMORY_FILE_MAX)
    staged.write(big, len(SMALL))  # now past the limit: the file moves to the disk, whole
    assert os.listdir(memory_dir(store)) == []
    assert os.listdir(store.path / "staging") == [staged.name]
    assert staged.read(len(SMALL) + len(big), 0) == SMALL + big
    commit(store, staged)
    assert read(store, "f") == SMALL + big
    assert leftover_staging(store) == [] and find_problems(store) == []


def test_a_truncation_past_the_limit_moves_the_file_too(env_store: Store) -> None:
    staged = create(env_store, b"f")
    staged.write(SMALL, 0)
    staged.truncate(MEMORY_FILE_MAX + 1)
    assert not staged.in_memory and os.listdir(memory_dir(env_store)) == []
    commit(env_store, staged)
    assert read(env_store, "f") == SMALL + bytes(MEMORY_FILE_MAX + 1 - len(SMALL))


def test_an_fsync_moves_the_file_to_the_disk_first(env_store: Store) -> None:
    staged = create(env_store, b"f")
    staged.write(SMALL, 0)
    env_store.writes.sync_staged(staged)
    assert not staged.in_memory and os.listdir(memory_dir(env_store)) == []
    assert (env_store.path / "staging" / staged.name).read_bytes() == SMALL


def test_the_mtime_a_move_keeps_is_the_one_recovery_would(env_store: Store) -> None:
    staged = create(env_store, b"f")
    staged.write(SMALL, 0)
    staged.set_modified_ns(1_234_567_891_000_000_000)
    staged.sync()
    assert not staged.in_memory and staged.modified_ns() == 1_234_567_891_000_000_000


def test_files_past_the_memory_budget_are_staged_on_the_disk(env_store: Store,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "MEMORY_BUDGET", 3 * len(SMALL))
    files = [create(env_store, f"f{i}".encode()) for i in range(5)]
    for each in files:
        each.write(SMALL, 0)
    where = [each.in_memory for each in files]
    assert where[:3] == [True] * 3 and where[3:] == [False] * 2, where
    for each in files:
        commit(env_store, each)
    later = create(env_store, b"later")  # the budget came back with the commits
    assert later.in_memory
    commit(env_store, later)
    assert [read(env_store, f"f{i}") for i in range(5)] == [SMALL] * 5
    assert leftover_staging(env_store) == []


def test_a_full_memory_moves_the_file_that_found_it_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real tmpfs of 64 KiB: the write that meets ENOSPC there goes to the disk, and nothing is lost."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", str(tiny)], check=True)
    try:
        monkeypatch.setenv(ENVIRONMENT, str(tiny))
        with Store.open(tmp_path / "store") as store:
            store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
            data = [os.urandom(40_000) for _ in range(3)]
            files = [create(store, f"f{i}".encode()) for i in range(3)]
            for each, content in zip(files, data, strict=True):
                assert each.in_memory
                assert each.write(content, 0) == len(content)
            assert [each.in_memory for each in files] == [True, False, False]
            for each in files:
                commit(store, each)
            assert [read(store, f"f{i}") for i in range(3)] == data
            assert leftover_staging(store) == [] and find_problems(store) == []
    finally:
        subprocess.run(["umount", "--lazy", str(tiny)], check=True)


def test_a_memory_directory_that_went_meanwhile_sends_new_files_to_the_disk(env_store: Store) -> None:
    """Someone emptied /dev/shm under a running store: new files are staged on the disk, nothing fails."""
    memory_dir(env_store).rmdir()
    staged = create(env_store, b"f")
    staged.write(SMALL, 0)
    assert not staged.in_memory and os.listdir(env_store.path / "staging") == [staged.name]
    commit(env_store, staged)
    assert read(env_store, "f") == SMALL


def test_memory_staging_off_stages_on_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT, "off")
    with Store.open(tmp_path / "store") as store:
        store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
        staged = create(store, b"f")
        assert store.staging.memory is None and not staged.in_memory
        assert os.listdir(store.path / "staging") == [staged.name]
        commit(store, staged)


@pytest.mark.parametrize("damage", ["open to others", "another owner", "a symlink", "a file"])
def test_a_per_uid_directory_that_is_not_private_turns_memory_staging_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    """/dev/shm is everyone's: a directory another user made (or opened up) there must not receive our bytes."""
    parent = tmp_path / "shm"
    parent.mkdir()
    mine = parent / f"fusestore-{os.geteuid()}"
    if damage == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        mine.symlink_to(tmp_path / "elsewhere")
    elif damage == "a file":
        mine.write_bytes(b"")
    else:
        mine.mkdir(mode=0o700)
        if damage == "open to others":
            mine.chmod(0o755)
        else:
            os.chown(mine, 4242, 4242)
    monkeypatch.setenv(ENVIRONMENT, str(parent))
    with caplog.at_level(logging.WARNING), Store.open(tmp_path / "store") as store:
        store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
        staged = create(store, b"f")
        staged.write(SMALL, 0)
        assert store.staging.memory is None and not staged.in_memory
        commit(store, staged)
        assert read(store, "f") == SMALL
    assert "memory staging is off" in caplog.text
    if damage == "a symlink":
        assert list((tmp_path / "elsewhere").iterdir()) == [], "nothing went where the symlink points"


def test_the_store_leaves_no_memory_directory_behind_when_it_closes(store_path: Path) -> None:
    with Store.open(store_path) as store:
        memory = memory_dir(store)
        assert memory.is_dir()
    assert not memory.exists()


# -- crashes and power losses ---------------------------------------------------------------------------


def test_recovery_commits_a_small_file_a_killed_process_left_in_memory(store_path: Path) -> None:
    crash_before_commit(store_path, SMALL)
    memory = memory_dir_of(store_path)
    assert len(os.listdir(memory)) == 1 and os.listdir(store_path / "staging") == []
    problems = offline_problems(store_path)
    assert problems == [], problems
    with Inspection.open(store_path) as ins:
        assert any(f"commit the {len(SMALL)} bytes written" in line for line in recovery_plan(ins))
    with Store.open(store_path) as store:
        assert read(store, "f") == SMALL
        assert leftover_staging(store) == [] and find_problems(store) == []


def test_a_copy_of_a_store_never_touches_the_files_the_original_has_in_memory(tmp_path: Path,
                                                                              store_path: Path) -> None:
    crash_before_commit(store_path, SMALL)
    copy = tmp_path / "copy"
    shutil.copytree(store_path, copy)
    with Store.open(copy) as copied:  # its record's file is the original's: not the copy's to take
        assert read(copied, "f") == b""
    assert len(os.listdir(memory_dir_of(store_path))) == 1
    with Store.open(store_path) as store:
        assert read(store, "f") == SMALL


def test_a_store_moved_after_a_crash_finds_what_it_left_in_memory(tmp_path: Path, store_path: Path) -> None:
    crash_before_commit(store_path, SMALL)
    left = memory_dir_of(store_path)
    moved = tmp_path / "moved"
    store_path.rename(moved)
    with Store.open(moved) as store:
        assert read(store, "f") == SMALL
        assert leftover_staging(store) == [] and find_problems(store) == []
    assert not left.exists() and not Path(f"{left}.path").exists()


def test_a_move_to_the_disk_cut_short_is_undone_by_recovery(store_path: Path) -> None:
    """Until the memory file goes, it is the whole truth: a partial copy on the disk beside it is dropped."""
    crash_before_commit(store_path, SMALL, """
        open(store.staging.path_of(staged.name), "wb").write(b"the first bytes of a copy")
    """)
    with Store.open(store_path) as store:
        assert read(store, "f") == SMALL
        assert leftover_staging(store) == [] and os.listdir(store.path / "staging") == []


def test_a_power_loss_takes_what_was_in_memory_and_keeps_what_an_fsync_moved(store_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    crash_before_commit(store_path, SMALL, """
        g = store.namespace.create(env, b"g", 0o644, Owner(0, 0))[1]
        g.write(b"fsynced", 0)
        store.writes.sync_staged(g)
        store.sync()
    """)
    restart_machine(store_path / "catalog")
    with caplog.at_level(logging.WARNING), Store.open(store_path) as store:
        assert read(store, "f") == b"" and read(store, "g") == b"fsynced"
        assert leftover_staging(store) == [] and find_problems(store) == []
    assert "was never fsynced, and the power took it" in caplog.text


def test_a_small_file_open_when_the_daemon_is_killed_comes_back_at_the_next_mount(mount: Mount) -> None:
    env = mount.path / ENV
    env.mkdir()
    def in_memory() -> None:
        assert os.listdir(mount.store / "staging") == [], "the open file's bytes are in memory"

    kill_daemon_mid_write(mount, "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
                                 "os.write(fd, b'written before the kill')", env / "f", in_memory)
    assert (env / "f").read_bytes() == b"written before the kill"
    assert blake3.blake3((env / "f").read_bytes()).hexdigest() == os.getxattr(
        env / "f", "user.fusestore.blake3").decode()
    mount.umount()
    assert offline_problems(mount.store) == []


def test_cp_a_and_a_shell_redirection_of_small_and_large_files_read_back_whole(mount: Mount) -> None:
    """Files on both sides of the memory limit, written by real tools; nothing is left staged anywhere after."""
    shell_tree = mount.path / ENV
    shell_tree.mkdir()
    source = shell_tree.parent.parent / "source"
    source.mkdir()
    files = {f"s{i}": os.urandom(i * 1000) for i in range(20)} | {"big": os.urandom(3 * MEMORY_FILE_MAX)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    subprocess.run(["cp", "-a", f"{source}/.", str(shell_tree)], check=True)
    subprocess.run(["sh", "-c", f"head -c 5000 /dev/urandom > {shell_tree}/redirected && sync {shell_tree}/redirected"],
                   check=True)
    for name, data in files.items():
        assert (shell_tree / name).read_bytes() == data
    assert (shell_tree / "redirected").stat().st_size == 5000
    mount.umount()
    assert offline_problems(mount.store) == []
    assert os.listdir(mount.store / "staging") == []
    assert not memory_dir_of(mount.store).exists(), "nothing is left in memory, nor the store's directory there"
