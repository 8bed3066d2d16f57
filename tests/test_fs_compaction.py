"""Compaction through a real mount: the daemon gives deleted files' space back by itself, and reads stay right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .mount_helpers import Mount, eventually

REPO = Path(__file__).resolve().parent.parent


def pack_file_bytes(store: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(store / "packs"))


def test_a_mount_gives_the_space_of_deleted_files_back_by_itself(mount: Mount, env_dir: Path) -> None:
    files = {f"f{number}": os.urandom(200_000) for number in range(40)}
    files["big"] = os.urandom(4 << 20)
    for name, data in files.items():
        (env_dir / name).write_bytes(data)
    mount.remount()  # its close sealed the pack the daemon wrote to
    kept = {name: data for number, (name, data) in enumerate(files.items()) if number % 10 == 0 or name == "big"}
    with open(env_dir / "big", "rb") as held:
        head = held.read(4096)  # open across the compaction: the rest is read from where the chunks went
        for name in set(files) - set(kept):
            (env_dir / name).unlink()
        live = sum(len(data) for data in kept.values())
        assert pack_file_bytes(mount.store) > 2 * live
        assert eventually(lambda: pack_file_bytes(mount.store) == live, timeout=60), pack_file_bytes(mount.store)
        assert head + held.read() == kept["big"]
    for name, data in kept.items():
        assert (env_dir / name).read_bytes() == data, name
    mount.remount()
    for name, data in kept.items():
        assert (env_dir / name).read_bytes() == data, name


def test_the_command_refuses_a_mounted_store(mount: Mount) -> None:
    result = subprocess.run([sys.executable, "-m", "fusestore", "compact", str(mount.store)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"fusestore: store {mount.store} is in use by process"), result.stderr
    assert "a mount compacts its store itself" in result.stderr
