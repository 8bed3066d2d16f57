"""The daemon survives faults nobody expected: EIO to that call, a traceback in the log, and it serves on.

The faults are real exceptions from the pack store under a real mount
(``tests/failing_daemon.py``: a ``FailingPackStore`` that raises while a
cue file exists), not mocks. After each, the mount still answers and, once
unmounted, fsck finds the catalog consistent: every change of catalog state
is one transaction, aborted when anything inside it raises.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusestore import Store

from .chunk_accounting import accounting_problems
from .helpers import ENV, stored_contents
from .mount_helpers import offline_problems, require_fuse

ROOT = Path(__file__).resolve().parent.parent


class FailingMount:
    def __init__(self, base: Path) -> None:
        self.store, self.path, self.log, self.cues = base / "store", base / "mnt", base / "daemon.log", base / "cues"
        self.path.mkdir()
        self.cues.mkdir()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "tests.failing_daemon", str(self.store), str(self.path), str(self.log),
             str(self.cues)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.daemon.stdout is not None
        ready = self.daemon.stdout.readline()
        assert ready == b"ok\n", f"the daemon did not start: {ready!r}\n{self.log_text()}"

    def fail(self, op: str, errno_name: str = "") -> None:
        """Fail every call of ``op``: with an unexpected RuntimeError, or the OSError of ``errno_name``."""
        (self.cues / op).write_text(errno_name)

    def heal(self, op: str) -> None:
        (self.cues / op).unlink()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"

    def unmount(self) -> None:
        if self.daemon.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=30)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)

    def answers(self) -> bool:
        """The daemon is alive and serves: a file written, read back and removed."""
        probe = self.path / ENV / "probe"
        probe.write_bytes(b"still here")
        data = probe.read_bytes()
        probe.unlink()
        return self.daemon.poll() is None and data == b"still here"


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[FailingMount]:
    require_fuse()
    mounted = FailingMount(tmp_path)
    try:
        yield mounted
    finally:
        mounted.unmount()


def tracebacks(mount: FailingMount, op: str) -> int:
    return mount.log_text().count(f"RuntimeError: injected fault in the pack store's {op}")


def expect_eio(action: object) -> None:
    assert callable(action)
    with pytest.raises(OSError) as raised:
        action()
    assert raised.value.errno == errno.EIO, raised.value


def test_unexpected_faults_give_eio_a_logged_traceback_and_a_consistent_catalog(failing: FailingMount) -> None:
    env = failing.path / ENV
    env.mkdir()
    (env / "kept").write_bytes(b"committed before any fault")
    (env / "doomed").write_bytes(b"the only copy of these bytes")

    # A commit whose chunks cannot be appended: close() fails, the new file stays, empty, as on any close() that fails.
    failing.fail("append")
    expect_eio(lambda: (env / "new").write_bytes(b"never stored"))
    expect_eio(lambda: (env / "kept").write_bytes(b"nor this"))
    failing.heal("append")
    assert tracebacks(failing, "append") >= 2 and "Traceback (most recent call last)" in failing.log_text()
    assert (env / "new").read_bytes() == b""
    assert (env / "kept").read_bytes() == b"committed before any fault"
    assert failing.answers()

    # A pack that cannot be read: read() fails, nothing changes.
    (env / "fresh").write_bytes(b"read for the first time under the fault")
    failing.fail("read")
    expect_eio(lambda: (env / "fresh").read_bytes())
    failing.heal("read")
    assert tracebacks(failing, "read") >= 1
    assert (env / "fresh").read_bytes() == b"read for the first time under the fault"

    # A freed pack that cannot be deleted: the unlink is done (its transaction committed), the pack is left for
    # later (each chunk has a sealed pack of its own here, so the unlink frees the pack of doomed's).
    failing.fail("delete")
    os.unlink(env / "doomed")
    assert not (env / "doomed").exists()
    sync_fd = os.open(env, os.O_RDONLY)
    try:
        os.fsync(sync_fd)  # a checkpoint: the deletion waits for one, and fails
    finally:
        os.close(sync_fd)
    deadline = time.monotonic() + 10  # the deletion runs on another thread once the checkpoint is durable
    while tracebacks(failing, "delete") == 0:
        assert time.monotonic() < deadline, failing.log_text()
        time.sleep(0.01)
    assert failing.answers()
    failing.heal("delete")

    # A checkpoint whose barrier fails: fsync fails, the checkpoint is retried.
    failing.fail("barrier")
    fd = os.open(env / "kept", os.O_RDONLY)
    try:
        expect_eio(lambda: os.fsync(fd))
    finally:
        os.close(fd)
    failing.heal("barrier")
    assert failing.answers()

    failing.unmount()
    assert failing.daemon.returncode == 0, failing.log_text()
    with Store.open(failing.store) as store:
        assert accounting_problems(store) == [], failing.log_text()
    assert offline_problems(failing.store) == [], failing.log_text()


def test_a_full_disk_at_an_append_fails_the_close_with_enospc_and_loses_nothing_else(failing: FailingMount) -> None:
    env = failing.path / ENV
    env.mkdir()
    (env / "kept").write_bytes(b"committed before the disk filled")
    big = os.urandom(3 << 20)
    (env / "big").write_bytes(big)
    failing.fail("append", "ENOSPC")
    for name, data in [("kept", b"an edit that finds the disk full"), ("new", os.urandom(1 << 20))]:
        with pytest.raises(OSError) as raised:
            (env / name).write_bytes(data)
        assert raised.value.errno == errno.ENOSPC, raised.value
    failing.heal("append")
    assert (env / "kept").read_bytes() == b"committed before the disk filled"
    assert (env / "big").read_bytes() == big
    assert (env / "new").read_bytes() == b""
    (env / "new").write_bytes(b"room again")
    assert (env / "new").read_bytes() == b"room again"

    failing.unmount()
    assert failing.daemon.returncode == 0, failing.log_text()
    with Store.open(failing.store) as store:
        assert accounting_problems(store) == [], failing.log_text()
        assert len(stored_contents(store)) == 3, "kept, big, new: nothing of the failed writes"
    assert offline_problems(failing.store) == [], failing.log_text()
