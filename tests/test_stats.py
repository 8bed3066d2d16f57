"""``fusestore stats`` and ``/.stats``: what each figure counts, on a real store and through a mount."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fusestore import Store
from fusestore.cli.mounts import human_bytes as human
from fusestore.cli.stats_cmd import table
from fusestore.store import stats
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner
from fusestore.store.stats import KEYS, Stats

from .helpers import ENV, ENV2, put
from .mount_helpers import Mount

ROOT_INO = 1
FUSESTORE = [sys.executable, "-m", "fusestore"]


def figures(store: Store) -> Stats:
    return stats.of_store(store, reader_uid=0)


def fusestore(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSESTORE, *map(str, args)], capture_output=True, text=True, timeout=60)


# -- the library -----------------------------------------------------------------------------------


def test_an_empty_store_counts_nothing_and_its_ratio_is_one(store: Store) -> None:
    empty = figures(store)
    assert empty == Stats()
    assert empty.as_dict() == {"files": 0, "directories": 0, "environments": 0, "logical_bytes": 0,
                               "contents": 0, "chunk_bytes": 0, "stored_bytes": 0, "dedup_ratio": 1.0,
                               "chunks": 0, "packs": 0, "pack_bytes": 0, "live_bytes": 0, "per_environment": {}}
    assert list(json.loads(empty.to_json())) == list(KEYS)


def test_two_copies_store_once_and_give_a_ratio_of_two(store: Store) -> None:
    put(store, "a", b"same bytes")
    put(store, "b", b"same bytes", env=ENV2)
    put(store, "c", b"")  # the empty content: a file of 0 bytes, no chunk
    got = figures(store)
    assert (got.files, got.environments, got.logical_bytes, got.contents) == (3, 2, 20, 1)
    assert (got.chunk_bytes, got.stored_bytes) == (10, 10)  # too short to compress
    assert (got.chunks, got.packs, got.pack_bytes, got.live_bytes) == (1, 1, 10, 10)
    assert got.dedup_ratio == 2.0
    assert got.per_environment == {ENV: 10, ENV2: 10}


def test_a_file_with_several_names_counts_once(store: Store) -> None:
    put(store, "f", b"12345")
    parent, _, ino = store.locate_for_environment(ENV, "f")
    store.namespace.link(ino, parent, b"g")
    store.namespace.link(ino, parent, b"h")
    got = figures(store)
    assert (got.files, got.logical_bytes, got.stored_bytes, got.contents) == (1, 5, 5, 1)


def test_user_and_global_files_are_not_in_environments(store: Store) -> None:
    store.put_for_user("alice", "d/private", io.BytesIO(b"only alice"), 10)
    store.put_global("g/shared", io.BytesIO(b"everyone's"), 10)
    got = figures(store)
    assert (got.files, got.directories, got.logical_bytes, got.contents, got.chunk_bytes, got.stored_bytes) == (
        0, 0, 0, 0, 0, 0)
    assert (got.chunks, got.live_bytes) == (2, 20), "the store-wide figures count every namespace"
    put(store, "copy", b"everyone's")  # a content global files also use counts once, for the environment
    got = figures(store)
    assert (got.files, got.directories, got.logical_bytes, got.stored_bytes, got.contents) == (1, 0, 10, 10, 1)
    assert (got.chunks, got.live_bytes) == (2, 20)


def test_an_empty_environment_is_listed_with_zero(store: Store) -> None:
    store.namespace.mkdir(ROOT_INO, ENV2.encode(), 0o755, Owner(0, 0))
    put(store, "f", b"abc")
    got = figures(store)
    assert got.environments == 2
    assert got.per_environment == {ENV: 3, ENV2: 0}


def test_directories_inside_environments_count_the_environment_directories_do_not(store: Store) -> None:
    put(store, "a/b/c/file", b"x")
    put(store, "a/other", b"y")
    store.namespace.mkdir(ROOT_INO, ENV2.encode(), 0o755, Owner(0, 0))
    assert figures(store).directories == 3


def test_a_pending_upload_is_a_file_without_logical_bytes(store: Store) -> None:
    seen: list[Stats] = []

    class Watching(io.BytesIO):
        """Takes the figures while the put is in flight (its file exists, with no content yet)."""

        def read(self, size: int | None = -1) -> bytes:
            if not seen:
                seen.append(figures(store))
            return super().read(size)

    store.put_for_environment(ENV, "big", Watching(b"z" * 100), 100)
    assert (seen[0].files, seen[0].logical_bytes, seen[0].stored_bytes) == (1, 0, 0)
    assert (figures(store).files, figures(store).logical_bytes) == (1, 100)


def test_chunks_count_once_within_and_across_files_and_compression_shows(store: Store) -> None:
    # About a dozen chunks, incompressible, and the same in every run: how many bytes the join below
    # adds before the cut points line up again varies with the bytes (random ones passed the bound in
    # 2 of 300 draws), so random ones made this test fail now and then.
    piece = random.Random(20261202).randbytes(200 << 10)
    put(store, "random", piece)
    put(store, "twice", piece + piece)  # cut alike after the join: its chunks are mostly the first file's
    put(store, "zeros", bytes(1 << 20))  # one chunk of zeros, 16 times, that compresses to almost nothing
    got = figures(store)
    assert got.logical_bytes == (600 << 10) + (1 << 20)
    assert got.contents == 3
    with Inspection.over(store.catalog, store.path) as ins:
        chunks = list(ins.chunks())
    assert got.chunks == len(chunks) and got.chunk_bytes == sum(chunk.length for chunk in chunks)
    assert got.stored_bytes == got.live_bytes == sum(chunk.stored for chunk in chunks)
    assert (200 << 10) + 65536 <= got.chunk_bytes < (300 << 10) + 65536, "each distinct chunk once"
    assert got.stored_bytes < (300 << 10), "the zeros compress"
    assert got.dedup_ratio == got.logical_bytes / got.stored_bytes > 5
    assert got.pack_bytes >= got.live_bytes and got.packs == 1


def test_a_deletion_lowers_live_bytes_and_leaves_the_dead_bytes_in_the_sealed_pack(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "kept", os.urandom(40 << 10))
        put(store, "gone", os.urandom(40 << 10))
    with Store.open(store_path) as store:  # the first pack is sealed now
        before = figures(store)
        store.remove_for_environment(ENV, "gone")
        after = figures(store)
    assert after.pack_bytes == before.pack_bytes and after.packs == before.packs
    assert after.live_bytes < before.live_bytes - (39 << 10) and after.chunks < before.chunks
    assert after.stored_bytes == after.live_bytes and after.logical_bytes == 40 << 10


def test_an_inspection_of_a_closed_store_gives_the_open_stores_figures(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "x/y", b"hello")
        live = figures(store)
    with Inspection.open(store_path) as inspection:
        assert stats.compute(inspection, reader_uid=0) == live


def test_the_json_reads_back_and_nothing_else_does() -> None:
    some = Stats(files=2, directories=1, environments=1, logical_bytes=10, contents=1, chunk_bytes=8,
                 stored_bytes=4, chunks=2, packs=1, pack_bytes=9, live_bytes=6, per_environment={ENV: 10})
    assert Stats.from_json(some.to_json()) == some
    assert json.loads(some.to_json())["dedup_ratio"] == 2.5
    for bad in (b"[]", b'{"files": 1}', some.to_json().replace(b'"contents"', b'"content"'),
                some.to_json().replace(b'"chunks": 2', b'"chunks": "2"')):
        with pytest.raises(ValueError):
            Stats.from_json(bad)


def test_people_get_binary_units_with_one_decimal_and_the_ratio_with_two() -> None:
    assert [human(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
    text = table(Stats(files=1, environments=2, logical_bytes=3 << 20, stored_bytes=1 << 20, contents=1,
                       per_environment={ENV: 3 << 20, ENV2: 0}))
    assert "3145728  (3.0 MiB)" in text and "dedup ratio" in text and " 3.00\n" in text
    for row in ("contents", "chunk bytes", "stored bytes", "store-wide chunks", "packs", "pack bytes", "live bytes"):
        assert f"\n{row} " in text, row
    assert f"  {ENV}  3145728  (3.0 MiB)" in text and text.endswith(f"  {ENV2}        0  (0 B)\n")


# -- the mount and the command ---------------------------------------------------------------------


def read_stats(mount: Mount) -> dict[str, object]:
    data = (mount.path / ".stats").read_bytes()
    assert len(data) == os.stat(mount.path / ".stats").st_size
    result: dict[str, object] = json.loads(data)
    return result


def test_stats_is_a_read_only_root_file_in_the_listing_of_the_root(mount: Mount) -> None:
    assert ".stats" in os.listdir(mount.path)
    info = os.stat(mount.path / ".stats")
    assert (info.st_mode, info.st_uid, info.st_gid, info.st_nlink) == (stat.S_IFREG | 0o444, 0, 0, 1)
    assert os.geteuid() == 0, "the mount tests run as root"
    for mode in ("w", "r+", "a"):
        with pytest.raises(PermissionError) as refused:
            open(mount.path / ".stats", mode)
        assert refused.value.errno == errno.EACCES
    for refused_call in (lambda: os.unlink(mount.path / ".stats"), lambda: os.chmod(mount.path / ".stats", 0o644),
                         lambda: os.setxattr(mount.path / ".stats", "user.x", b"1")):
        with pytest.raises(PermissionError) as refused_change:
            refused_call()
        assert refused_change.value.errno == errno.EPERM
    with pytest.raises(FileExistsError):
        os.mkdir(mount.path / ".stats")


def test_stats_holds_a_fresh_snapshot_at_each_open(mount: Mount) -> None:
    first = read_stats(mount)
    assert list(first) == list(KEYS)
    assert first["files"] == 0 and first["per_environment"] == {}
    env = mount.path / ENV
    env.mkdir()
    (env / "sub").mkdir()
    (env / "sub" / "a").write_bytes(b"twice" * 1000)
    held = open(mount.path / ".stats", "rb")
    try:
        before = held.read()
        (env / "b").write_bytes(b"twice" * 1000)
        os.link(env / "b", env / "c")
        now = read_stats(mount)
        assert (now["files"], now["directories"], now["environments"]) == (2, 1, 1)
        assert (now["logical_bytes"], now["contents"], now["chunk_bytes"]) == (10000, 1, 5000)
        stored = now["stored_bytes"]
        assert isinstance(stored, int) and 0 < stored < 1000, "repeated text compresses"
        assert now["live_bytes"] == stored and now["chunks"] == 1 and now["packs"] == 1
        assert now["dedup_ratio"] == 10000 / stored and now["per_environment"] == {ENV: 10000}
        held.seek(0)
        assert held.read() == before  # an open handle keeps its snapshot
        assert json.loads(before)["files"] == 1
    finally:
        held.close()


def test_the_command_reads_a_mount_and_an_unmounted_store_alike(mount: Mount) -> None:
    env = mount.path / ENV
    env.mkdir()
    (env / "f").write_bytes(b"content")
    (mount.path / ".global" / "g").write_bytes(b"not counted")
    live = read_stats(mount)
    assert live["files"] == 1

    by_mount = fusestore("stats", mount.path, "--json")
    assert by_mount.returncode == 0, by_mount.stderr
    assert json.loads(by_mount.stdout) == live
    people = fusestore("stats", mount.path)
    assert people.returncode == 0 and "dedup ratio" in people.stdout and ENV in people.stdout

    held = fusestore("stats", mount.store, "--json")
    assert held.returncode == 2 and held.stdout == ""
    assert held.stderr.startswith("fusestore: ") and str(mount.path) in held.stderr
    assert len(held.stderr.splitlines()) == 1

    mount.umount()
    offline = fusestore("stats", mount.store, "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == live
    assert fusestore("stats", mount.store).stdout == people.stdout


def test_the_command_on_a_path_that_is_no_store_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (missing, empty):
        result = fusestore("stats", path, "--json")
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("fusestore: ") and len(result.stderr.splitlines()) == 1
    assert not missing.exists() and list(empty.iterdir()) == []
