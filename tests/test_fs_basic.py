"""The mount at its simplest: files written with plain I/O come back, deduplicated."""

from __future__ import annotations

import os
from pathlib import Path

from .mount_helpers import Mount


def test_written_file_reads_back_and_is_one_blob(mount: Mount, env_dir: Path) -> None:
    data = os.urandom(300_000)
    (env_dir / "a.bin").write_bytes(data)
    (env_dir / "b.bin").write_bytes(data)
    assert (env_dir / "a.bin").read_bytes() == data
    assert (env_dir / "b.bin").read_bytes() == data
    assert mount.blob_count() == 1


def test_root_lists_namespaces(mount: Mount, env_dir: Path) -> None:
    assert {".global", ".users", env_dir.name} <= set(os.listdir(mount.path))
    assert os.stat(mount.path).st_mode & 0o7777 == 0o1777
