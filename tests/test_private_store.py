"""The store on disk is no back door: 0700 directories, 0600 files whatever the umask, loose stores refused.

Library-level (``fusestore.private`` through ``Store.open``) and command-level
(``fusestore mount`` refuses before it mounts, so no /dev/fuse is needed);
that other uids really are kept out of a mounted store is ``test_tenants``.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors, private

from .helpers import ENV, put, umask
from .mount_helpers import FUSESTORE


def modes(root: Path) -> dict[str, int]:
    """Permission bits of the store directory and of everything under it."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_0700_and_its_files_0600_under_the_most_open_umask(store_path: Path) -> None:
    with umask(0):
        with Store.open(store_path) as store:
            put(store, "a.txt", b"tenant bytes")
            store.staging.create().close()
    found = modes(store_path)
    assert found["."] == 0o700
    directories = {path for path in found if (store_path / path).is_dir()}
    assert {path: found[path] for path in directories} == dict.fromkeys(directories, 0o700)
    files = set(found) - directories
    assert {"lock", "catalog/data.mdb", "catalog/lock.mdb"} <= files
    assert any(path.startswith("packs/") for path in files) and any(path.startswith("staging/") for path in files)
    assert {path: found[path] for path in files} == dict.fromkeys(files, 0o600)


def test_a_strict_umask_does_not_lock_the_owner_out(store_path: Path) -> None:
    with umask(0o277):
        with Store.open(store_path) as store:
            put(store, "a/b.txt", b"written under umask 0277")
        with Store.open(store_path) as store:
            put(store, "a/c.txt", b"and again after a reopen")
    found = modes(store_path)
    assert all(mode == 0o700 for path, mode in found.items() if (store_path / path).is_dir())


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o770, 0o705, 0o1777])
def test_an_existing_empty_directory_open_to_others_is_refused_untouched(tmp_path: Path, mode: int) -> None:
    loose = tmp_path / "store"
    loose.mkdir()
    loose.chmod(mode)
    with pytest.raises(errors.StoreExposed) as refused:
        Store.open(loose)
    assert refused.value.errno == errno.EACCES
    assert f"{mode:04o}" in str(refused.value) and f"chmod 700 {loose}" in str(refused.value)
    assert list(loose.iterdir()) == [] and mode_of(loose) == mode


def test_a_store_opened_up_later_is_refused(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "a.txt", b"x")
    store_path.chmod(0o755)
    with pytest.raises(errors.StoreExposed):
        Store.open(store_path)
    store_path.chmod(0o700)
    with Store.open(store_path) as store:
        reader, _ = store.get_for_environment(ENV, "a.txt")
        with reader:
            assert reader.read() == b"x"


def test_an_existing_private_directory_becomes_the_store(tmp_path: Path) -> None:
    mine = tmp_path / "store"
    mine.mkdir(mode=0o700)
    with Store.open(mine) as store:
        put(store, "a.txt", b"x")
    assert mode_of(mine) == 0o700


def test_a_file_in_the_way_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "store").write_bytes(b"")
    with pytest.raises(errors.NotADirectory):
        Store.open(tmp_path / "store")


def test_lost_and_found_is_private_whatever_the_blob_was(store_path: Path) -> None:
    from fusestore.cli.fsck_cmd import check

    from .format2 import make_format2

    damaged = b"a blob that will be damaged"
    make_format2(store_path, lambda store: put(store, "a.txt", damaged))
    digest = blake3.blake3(damaged).hexdigest()
    blob = store_path / "pool" / digest[:2] / digest[2:4] / digest
    os.truncate(blob, 3)
    blob.chmod(0o644)  # as a store written before the rule left it
    with umask(0), open(os.devnull, "w") as out:
        assert check(store_path, verify=False, repair=True, out=out, err=out) == 1
    moved = store_path / "lost+found" / digest
    assert (mode_of(moved.parent), mode_of(moved)) == (0o700, 0o600)


def test_the_log_is_made_0600_or_made_so(tmp_path: Path) -> None:
    log = tmp_path / "new.log"
    with umask(0):
        os.close(private.open_log(log))
    assert mode_of(log) == 0o600
    old = tmp_path / "old.log"
    old.write_text("earlier lines\n")
    old.chmod(0o644)
    fd = private.open_log(old)
    try:
        os.write(fd, b"appended\n")
    finally:
        os.close(fd)
    assert mode_of(old) == 0o600 and old.read_text() == "earlier lines\nappended\n"


def test_mount_refuses_a_loose_store_in_one_line_before_mounting(tmp_path: Path) -> None:
    loose = tmp_path / "store"
    loose.mkdir()
    loose.chmod(0o755)
    (tmp_path / "mnt").mkdir()
    for extra in ([], ["--foreground"]):
        result = subprocess.run([*FUSESTORE, "mount", str(loose), str(tmp_path / "mnt"), *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"fusestore: store directory {loose} has mode 0755: other users could read its blobs, catalog "
            f"and log; make it private first (`chmod 700 {loose}`)"
        ]
        assert list(loose.iterdir()) == []  # not even the log


def test_mount_creates_a_missing_store_0700_with_its_log_0600(tmp_path: Path) -> None:
    """Up to the mount itself: the store and the log exist, private, before the daemon starts."""
    store = tmp_path / "parent" / "store"
    with umask(0):
        result = subprocess.run([*FUSESTORE, "mount", str(store), str(tmp_path / "no-mount-point")],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert mode_of(store) == 0o700
    assert mode_of(store / "fusestore.log") == 0o600


def test_reading_a_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for command in ("fsck", "stats"):
        result = subprocess.run([*FUSESTORE, command, str(missing)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
    assert not missing.exists()


def test_packs_made_through_the_library_keep_the_rule(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusestore.store import chunks

    monkeypatch.setattr(chunks, "PACK_TARGET", 64 << 10)  # every few contents a new pack
    with Store.open(store_path) as store:
        with umask(0):
            for n in range(20):
                data = os.urandom(40 << 10)
                store.put_for_environment(ENV, f"f{n}", io.BytesIO(data), len(data))
    packs = store_path / "packs"
    found = modes(packs)
    assert len([path for path in found if (packs / path).is_file()]) > 5
    assert found["."] == 0o700
    assert all(mode == 0o600 for path, mode in found.items() if (packs / path).is_file())
