"""Wrong bytes are never served: opens check a content's length, and reads hash each chunk once, up to a limit."""

from __future__ import annotations

import errno
import logging
import os
import random
import subprocess
from pathlib import Path

import pytest

from fusestore import Store, errors

from .helpers import ENV, chunk_place, flip_a_stored_byte, put, read
from .mount_helpers import Mount

DATA = random.Random(7).randbytes(200_000)  # incompressible: stored raw, so a flipped byte reads as a wrong byte


def test_a_chunk_with_other_bytes_is_eio_at_its_first_read(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(store_path) as store:
        put(store, "dir/f", DATA)
    flip_a_stored_byte(store_path, DATA)
    with caplog.at_level(logging.ERROR), Store.open(store_path) as store:
        with pytest.raises(errors.BadContent) as raised:
            read(store, "dir/f")
        assert raised.value.errno == errno.EIO
    assert f"/{ENV}/dir/f" in caplog.text and "does not hash to its name" in caplog.text


def test_a_pack_cut_short_is_eio_even_when_nothing_is_hashed(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    pack, at, stored = chunk_place(store_path, DATA, len(DATA) - 1)
    os.truncate(pack, at + stored - 1)
    with Store.open(store_path, verify_limit=0) as store:
        with pytest.raises(errors.BadContent, match="damaged chunk"):
            read(store, "f")


def test_a_content_of_another_length_than_its_file_is_eio(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
        _, _, ino = store.locate_for_environment(ENV, "f")
        with store.catalog.write() as tx:
            node = tx.existing_inode(ino)
            node.size -= 1
            tx.save_inode(node)
        with pytest.raises(errors.BadContent, match="holds 200000 bytes, not 199999"):
            read(store, "f")


def test_files_over_the_limit_are_not_hashed_as_they_are_read(store_path: Path) -> None:
    """What fsck --verify is for: a same-length change in a file larger than the limit is not seen by a read."""
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    flip_a_stored_byte(store_path, DATA)
    with Store.open(store_path, verify_limit=len(DATA) - 1) as store:
        assert len(read(store, "f")) == len(DATA)


def test_a_verified_chunk_is_not_hashed_again(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
        assert read(store, "f") == DATA
        flip_a_stored_byte(store_path, DATA, store=store)  # behind the store's back, after its first check
        assert read(store, "f") != DATA, "remembered as verified for the life of the process"


def test_an_in_place_edit_checks_what_it_reads_of_its_base_whatever_the_limit(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    flip_a_stored_byte(store_path, DATA)
    with Store.open(store_path, verify_limit=0) as store:
        _, _, ino = store.locate_for_environment(ENV, "f")
        staged = store.writes.stage(ino, len(DATA))
        with pytest.raises(errors.BadContent):  # at the write, if it reads the damaged chunk to fill its block
            store.writes.write(staged, b"edit", 0)
            store.writes.hash(staged)
        store.writes.abandon(staged, remove_created=False)
        assert store.staging.names() == []


def test_cat_of_a_damaged_file_fails_with_eio_and_the_log_names_it(mount: Mount) -> None:
    env = mount.path / ENV
    env.mkdir()
    (env / "f").write_bytes(DATA)
    mount.umount()
    flip_a_stored_byte(mount.store, DATA)
    mount.mount()
    result = subprocess.run(["cat", str(env / "f")], capture_output=True)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert f"/{ENV}/f" in mount.log_text() and "does not hash to its name" in mount.log_text()
    (env / "f").write_bytes(b"new content")  # overwriting needs no old bytes
    assert (env / "f").read_bytes() == b"new content"
