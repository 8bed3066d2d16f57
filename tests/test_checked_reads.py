"""Wrong bytes are never served: opens check a blob's length always, and its BLAKE3 once, up to a limit."""

from __future__ import annotations

import errno
import logging
import subprocess
from pathlib import Path

import blake3
import pytest

from fusestore import Store, errors

from .helpers import ENV, put, read
from .mount_helpers import Mount

DATA = bytes(range(256)) * 400


def blob_of(store_path: Path, data: bytes) -> Path:
    h = blake3.blake3(data).hexdigest()
    return store_path / "pool" / h[:2] / h[2:4] / h


def flip_a_byte(path: Path) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[1000] ^= 0xFF
    path.write_bytes(bytes(damaged))


def test_a_blob_with_other_bytes_is_eio_at_its_first_open(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(store_path) as store:
        put(store, "dir/f", DATA)
    flip_a_byte(blob_of(store_path, DATA))
    with caplog.at_level(logging.ERROR), Store.open(store_path) as store:
        with pytest.raises(errors.BadContent) as raised:
            read(store, "dir/f")
        assert raised.value.errno == errno.EIO
    assert f"/{ENV}/dir/f" in caplog.text and "does not hash to its name" in caplog.text


def test_a_blob_of_another_length_is_eio_even_when_nothing_is_hashed(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    blob = blob_of(store_path, DATA)
    blob.write_bytes(blob.read_bytes()[:-1])
    with Store.open(store_path, verify_limit=0) as store:
        with pytest.raises(errors.BadContent, match="holds 102399 bytes, not 102400"):
            read(store, "f")


def test_blobs_over_the_limit_are_only_length_checked_at_open(store_path: Path) -> None:
    """What fsck --verify is for: a same-length change of a blob larger than the limit is not seen at open."""
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    flip_a_byte(blob_of(store_path, DATA))
    with Store.open(store_path, verify_limit=len(DATA) - 1) as store:
        assert len(read(store, "f")) == len(DATA)


def test_a_verified_blob_is_not_hashed_again(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
        assert read(store, "f") == DATA
        flip_a_byte(blob_of(store_path, DATA))  # behind the store's back, after its first check
        assert read(store, "f") != DATA, "remembered as verified for the life of the process"


def test_an_in_place_edit_checks_what_it_copies_whatever_the_limit(store_path: Path) -> None:
    with Store.open(store_path) as store:
        put(store, "f", DATA)
    flip_a_byte(blob_of(store_path, DATA))
    with Store.open(store_path, verify_limit=0) as store:
        _, _, ino = store.locate_for_environment(ENV, "f")
        with pytest.raises(errors.BadContent):
            store.writes.stage(ino, len(DATA))
        assert store.staging.names() == []


def test_cat_of_a_damaged_file_fails_with_eio_and_the_log_names_it(mount: Mount) -> None:
    env = mount.path / ENV
    env.mkdir()
    (env / "f").write_bytes(DATA)
    mount.umount()
    flip_a_byte(blob_of(mount.store, DATA))
    mount.mount()
    result = subprocess.run(["cat", str(env / "f")], capture_output=True)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert f"/{ENV}/f" in mount.log_text() and "does not hash to its name" in mount.log_text()
    (env / "f").write_bytes(b"new content")  # overwriting needs no old bytes
    assert (env / "f").read_bytes() == b"new content"
