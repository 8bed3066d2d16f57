"""Mounting and unmounting: the daemon's life from checks to exit.

``serve`` is the daemon itself (``fusestore mount --foreground``): it checks
the mount point and /dev/fuse, opens the store (which recovers what a killed
daemon left), mounts, reports readiness once the mount answers, serves until
unmounted or signalled, then commits what is still open and closes the
store. ``start_background`` runs that same daemon as a child process and
returns only once it answers, or with the child's own one-line error.
``unmount`` asks the kernel to unmount and waits for the daemon to exit.

Every failure a user can hit becomes a ``MountError`` with one line saying
what went wrong and how to fix it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from . import errors
from .fs import PID_XATTR, Operations
from .store import Store

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0


class MountError(Exception):
    """A failure with a message meant for the user, as one line."""


def mounted_paths() -> set[str]:
    """Mount points of this mount namespace (dead FUSE mounts included, unlike os.path.ismount)."""
    with open("/proc/self/mountinfo", "rb") as info:
        lines = info.read().splitlines()
    octal = re.compile(rb"\\([0-7]{3})")  # the kernel writes space, tab, newline, backslash as \ooo
    return {os.fsdecode(octal.sub(lambda m: bytes([int(m.group(1), 8)]), line.split()[4])) for line in lines}


def check_mountpoint(mountpoint: Path) -> None:
    if str(mountpoint) in mounted_paths():
        try:
            os.stat(mountpoint)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                raise MountError(
                    f"{mountpoint} is a dead mount (its daemon was killed): "
                    f"run `fusestore umount {mountpoint}` first"
                ) from None
            raise
        raise MountError(f"{mountpoint} is already a mount point: unmount it first (`fusestore umount {mountpoint}`)")
    if not mountpoint.exists():
        raise MountError(f"mount point {mountpoint} does not exist: create it with `mkdir -p {mountpoint}`")
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")


def check_fuse_device() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except FileNotFoundError:
        raise MountError(
            "no /dev/fuse: load the fuse module (`modprobe fuse`) or give the container /dev/fuse"
        ) from None
    except PermissionError:
        raise MountError("no permission to open /dev/fuse: run as root or add yourself to the fuse group") from None
    os.close(fd)


def serve(
    store_path: Path, mountpoint: Path, *, allow_other: bool = False, request_ttl: float = 60.0,
    max_requests: int = 100, ready_fd: int | None = None,
) -> None:
    """Run the daemon in this process until it is unmounted or signalled."""
    mountpoint = mountpoint.resolve()
    check_mountpoint(mountpoint)
    check_fuse_device()
    try:
        store = Store.open(store_path, request_ttl=request_ttl)
    except (errors.StoreLocked, errors.UnknownFormat) as exc:
        raise MountError(str(exc)) from None
    try:
        operations = Operations(store, max_requests_per_user=max_requests)
        options = set(pyfuse3.default_options) | {"fsname=fusestore", "subtype=fusestore", "default_permissions"}
        if allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(operations, str(mountpoint), options)
        except RuntimeError as exc:
            raise MountError(f"could not mount {mountpoint}: {exc}") from None
        log.info("mounted %s on %s (pid %d)", store_path, mountpoint, os.getpid())
        unmount = True
        try:
            unmount = trio.run(_serve, operations, mountpoint, ready_fd)
        finally:
            pyfuse3.close(unmount=unmount)
            log.info("unmounted %s", mountpoint)
    finally:
        store.close()


async def _serve(operations: Operations, mountpoint: Path, ready_fd: int | None) -> bool:
    """Serve requests; True when a signal ended it (so we still have to unmount)."""
    signalled = False
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            nonlocal signalled
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    signalled = True
                    pyfuse3.terminate()
                    return

        async def checkpoint() -> None:
            """Make committed changes durable every few seconds (as ext4's commit interval)."""
            while True:
                await trio.sleep(CHECKPOINT_SECONDS)
                try:
                    await trio.to_thread.run_sync(operations.store.sync)
                except Exception:  # EIO, a full disk...: the mount must live on; say so and try again
                    log.exception("checkpoint failed, retrying in %d s", CHECKPOINT_SECONDS)

        async def announce_ready() -> None:
            await trio.to_thread.run_sync(os.stat, mountpoint)
            if ready_fd is not None:
                os.write(ready_fd, b"ok\n")
                os.close(ready_fd)

        nursery.start_soon(watch_signals)
        nursery.start_soon(checkpoint)
        nursery.start_soon(announce_ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    await operations.commit_all()
    return signalled


def start_background(argv: list[str], log_path: Path, timeout: float = 60.0) -> int:
    """Start ``fusestore mount --foreground`` as a daemon; its pid once the mount answers."""
    read_end, write_end = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "fusestore", *argv, "--foreground", "--ready-fd", str(write_end)],
            pass_fds=[write_end], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = ready.readline().decode(errors="replace").strip()
    if answer == "ok":
        return child.pid
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        raise MountError(f"the daemon did not answer; see {log_path}") from None
    if answer.startswith("error: "):
        raise MountError(answer[len("error: "):])
    raise MountError(f"the daemon exited with status {child.returncode}; see {log_path}")


def unmount(mountpoint: Path, timeout: float = 120.0) -> None:
    """Unmount (the daemon commits what is open first) and wait until the daemon has exited."""
    mountpoint = mountpoint.resolve()
    if str(mountpoint) not in mounted_paths():
        raise MountError(f"{mountpoint} is not mounted")
    pid = None
    try:
        pid = int(os.getxattr(mountpoint, PID_XATTR))
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:  # ENOTCONN: the daemon is dead, just clean the mount up
            raise MountError(f"{mountpoint} does not look like a fusestore mount: {exc.strerror}") from None
    _kernel_unmount(mountpoint)
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise MountError(f"unmounted, but the daemon (pid {pid}) has not exited after {timeout:.0f}s")
        time.sleep(0.05)


def _kernel_unmount(mountpoint: Path) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", str(mountpoint)] if tool else ["umount", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"{command[0]} failed"
        if "busy" in detail.lower():
            raise MountError(
                f"{mountpoint} is busy: close the files and shells using it (`fuser -vm {mountpoint}` lists them)"
            )
        raise MountError(detail)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: its parent just has not reaped it yet
        with open(f"/proc/{pid}/stat", encoding="ascii") as status:
            return status.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
