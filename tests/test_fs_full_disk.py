"""A full disk: the writer gets ENOSPC, nothing committed before is lost, space comes back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ENV
from .mount_helpers import Mount, require_fuse


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Mount]:
    """A mount whose store lives on a 24 MiB tmpfs (needs root, as the mount tests do)."""
    require_fuse()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
    mounted = Mount(disk / "store", tmp_path / "mnt", tmp_path / "daemon.log")
    try:
        mounted.mount()
        try:
            yield mounted
        finally:
            mounted.release(failed=False)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_gives_enospc_and_loses_nothing(small_mount: Mount, tmp_path: Path) -> None:
    env = small_mount.path / ENV
    env.mkdir()
    (env / "keep").write_bytes(b"committed earlier")
    source = tmp_path / "big"
    source.write_bytes(os.urandom(40 << 20))

    result = subprocess.run(["cp", str(source), str(env / "big")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr

    with pytest.raises(OSError) as raised:
        with open(env / "python-big", "wb") as out:
            out.write(os.urandom(40 << 20))
    assert raised.value.errno == 28  # ENOSPC

    assert (env / "keep").read_bytes() == b"committed earlier"
    for name in ("big", "python-big"):
        if (env / name).exists():
            os.unlink(env / name)
    (env / "after").write_bytes(b"space came back")
    assert (env / "after").read_bytes() == b"space came back"
    small_mount.remount()
    assert (env / "keep").read_bytes() == b"committed earlier"
    assert (env / "after").read_bytes() == b"space came back"
