"""Mounting real fusestore filesystems from tests, and unmounting them whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusestore.mounting import mounted_paths

FUSESTORE = [sys.executable, "-m", "fusestore"]


def require_fuse() -> None:
    """No /dev/fuse: a skip on a laptop, a failure in CI (CI=true), never a quiet pass."""
    if os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("/dev/fuse is missing in CI: the mount tests cannot run")
    pytest.skip("no usable /dev/fuse on this machine")


class Mount:
    """A running ``fusestore mount`` of ``store`` on ``path``, with its log."""

    def __init__(self, store: Path, path: Path, log: Path, extra: list[str] | None = None) -> None:
        self.store, self.path, self.log, self.extra = store, path, log, extra or []

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [*FUSESTORE, "mount", str(self.store), str(self.path), "--log", str(self.log), *self.extra],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"mount failed: {result.stderr}\n{self.log_text()}"

    def umount(self) -> None:
        result = subprocess.run([*FUSESTORE, "umount", str(self.path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"umount failed: {result.stderr}\n{self.log_text()}"

    def remount(self) -> None:
        self.umount()
        self.mount()

    def is_mounted(self) -> bool:
        return str(self.path.resolve()) in mounted_paths()

    def force_unmount(self) -> None:
        """Last resort in teardown: never leave a mount behind, even a dead one."""
        if self.is_mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"

    def blob_count(self) -> int:
        return sum(1 for p in (self.store / "pool").rglob("*") if p.is_file())

    def pool_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.store / "pool").rglob("*") if p.is_file())
