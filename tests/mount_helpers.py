"""Mounting real fusestore filesystems from tests, and unmounting them whatever happens."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from fusestore.cli.mounts import mounted_paths, process_alive
from fusestore.store.fsck import run_checks
from fusestore.store.inspect import Inspection

FUSESTORE = [sys.executable, "-m", "fusestore"]
NOBODY = 65534
LIBC = ctypes.CDLL(None, use_errno=True)


def require_fuse() -> None:
    """No /dev/fuse: a skip on a laptop, a failure in CI (CI=true), never a quiet pass."""
    if os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("/dev/fuse is missing in CI: the mount tests cannot run")
    pytest.skip("no usable /dev/fuse on this machine")


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``check`` becomes true within ``timeout``: the kernel sends release after close returns."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


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

    def release(self, *, failed: bool) -> None:
        """Unmount whatever happened to the test, and show the daemon's log when it failed."""
        try:
            if self.is_mounted():
                self.umount()
        finally:
            self.force_unmount()
            if failed:
                print(f"--- daemon log of {self.path} ---\n{self.log_text()}")

    def force_unmount(self) -> None:
        """Last resort in teardown: never leave a mount behind, even a dead one."""
        if self.is_mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"

    def _settle(self) -> None:
        """Blob deletions wait for a checkpoint: an fsync of / runs one, so the pool is then as it will stay."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def blob_count(self) -> int:
        """How many distinct non-empty contents the store holds (read through a live inspection)."""
        self._settle()
        from fusestore.store.inspect import Inspection

        with Inspection.open(self.store, allow_live=True) as ins:
            return len({digest for digest, _ in ins.extents()})

    def pool_bytes(self) -> int:
        """The stored bytes of the chunks the catalog holds (what dedup saves and a deletion gives back)."""
        self._settle()
        from fusestore.store.inspect import Inspection

        with Inspection.open(self.store, allow_live=True) as ins:
            return sum(chunk.stored for chunk in ins.chunks())


def in_child(action: Callable[[], bytes | None], *, fsuid: int | None = None,
             uid: int | None = None) -> tuple[int, bytes]:
    """Run ``action`` in a forked child with other credentials.

    Returns (the errno of the OSError it raised, or 0; the bytes it returned).
    ``fsuid`` changes only the filesystem uid and gid (the kernel's permission
    checks use them); ``uid`` changes every uid and gid. A fork rather than a
    subprocess: execve resets the filesystem ids to the effective ones (and
    the test interpreter may live where other uids cannot run it).
    """
    return Child(action, fsuid=fsuid, uid=uid).wait()


class Child:
    """``in_child`` started in the background: ``wait`` gives what ``in_child`` returns."""

    def __init__(self, action: Callable[[], bytes | None], *, fsuid: int | None = None,
                 uid: int | None = None) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 0
            try:
                os.close(read_end)
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                if fsuid is not None:
                    LIBC.setfsgid(fsuid)
                    LIBC.setfsuid(fsuid)
                    # an invalid id changes nothing and reports the current one
                    if (LIBC.setfsuid(0xFFFFFFFF), LIBC.setfsgid(0xFFFFFFFF)) != (fsuid, fsuid):
                        raise RuntimeError("setfsuid/setfsgid did not take")
                os.write(write_end, action() or b"")
            except OSError as exc:
                status = exc.errno or 255
            except BaseException:
                os.write(write_end, traceback.format_exc().encode())
                status = 255
            finally:
                os._exit(status)
        os.close(write_end)
        self.pid, self.pipe = pid, read_end
        self._status: int | None = None

    def running(self) -> bool:
        if self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = status
        return self._status is None

    def wait(self) -> tuple[int, bytes]:
        with os.fdopen(self.pipe, "rb") as pipe:
            data = pipe.read()
        if self._status is None:
            self._status = os.waitpid(self.pid, 0)[1]
        code = os.waitstatus_to_exitcode(self._status)
        assert code != 255, data.decode(errors="replace")
        return code, data


def offline_problems(store: Path) -> list[str]:
    """What fsck finds in an unmounted store."""
    with Inspection.open(store) as inspection:
        return [str(problem) for problem in run_checks(inspection)]


def kill_daemon_mid_write(mount: Mount, writes: str, path: Path,
                          while_written: Callable[[], None] = lambda: None) -> None:
    """SIGKILL the daemon while a writer holds ``path`` open, once its ``writes`` returned, then mount again.

    ``writes``: Python statements run with ``path`` as ``sys.argv[1]`` (``os`` imported); ``while_written``
    runs between their return and the kill. Whatever recovery made of the writes is then on the mount.
    """
    script = f"import os, sys, time\n{writes}\nprint('written', flush=True)\ntime.sleep(60)\n"
    writer = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        while_written()
        pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
        os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: not process_alive(pid)), "the daemon survived SIGKILL"
    finally:
        writer.kill()
        writer.wait()
    mount.umount()
    mount.mount()
