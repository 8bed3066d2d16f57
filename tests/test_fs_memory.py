"""Memory stays flat whatever the file size: bytes stream through, never pile up."""

from __future__ import annotations

import os
from pathlib import Path

from .mount_helpers import Mount

MIB = 1 << 20


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_daemon_memory_does_not_grow_with_file_size(mount: Mount, env_dir: Path) -> None:
    pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
    (env_dir / "warm-up").write_bytes(os.urandom(8 * MIB))
    before = peak_rss(pid)
    chunk = os.urandom(MIB)
    with open(env_dir / "big", "wb", buffering=0) as out:
        for _ in range(1024):  # 1 GiB, sequential: hashed while written
            out.write(chunk)
    with open(env_dir / "big", "r+b", buffering=0) as out:  # an edit in the middle: copied and re-hashed
        out.seek(300 * MIB)
        out.write(b"edit")
    with open(env_dir / "big", "rb", buffering=0) as src:
        while src.read(MIB):
            pass
    growth = peak_rss(pid) - before
    assert growth < 48 * MIB, f"daemon peak RSS grew by {growth / MIB:.0f} MiB for a 1 GiB file"
