"""Mount points from the outside: checks before a mount, the background daemon, unmounting.

Nothing here imports pyfuse3 or trio: ``fusestore umount`` and the checks
before a mount run without them. Every failure a user can hit becomes a
``MountError`` with one line saying what went wrong and how to fix it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import private
from ..fs.kernel import PID_XATTR


class MountError(Exception):
    """A failure with a message meant for the user, as one line."""


FSTYPE = "fuse.fusestore"


def mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount of this namespace (dead FUSE mounts included)."""
    with open("/proc/self/mountinfo", "rb") as info:
        lines = info.read().splitlines()
    octal = re.compile(rb"\\([0-7]{3})")  # the kernel writes space, tab, newline, backslash as \ooo
    table = []
    for line in lines:
        fields = line.split()
        path = os.fsdecode(octal.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4]))
        table.append((path, os.fsdecode(fields[fields.index(b"-") + 1])))
    return table


def mounted_paths() -> set[str]:
    """Mount points of this mount namespace (dead FUSE mounts included, unlike os.path.ismount)."""
    return {path for path, _ in mount_table()}


def fusestore_mounts() -> dict[str, int | None]:
    """Mount point -> daemon pid (None for a dead mount) of every fusestore mount in this namespace."""
    found: dict[str, int | None] = {}
    for path, fstype in mount_table():
        if fstype != FSTYPE:
            continue
        try:
            found[path] = int(os.getxattr(path, PID_XATTR))
        except (OSError, ValueError):
            found[path] = None
    return found


def human_bytes(size: float) -> str:
    """Bytes in binary units with one decimal (``1.5 MiB``); plain bytes under 1 KiB."""
    if size < 1024:
        return f"{size:.0f} B"
    units = ["KiB", "MiB", "GiB", "TiB"]
    size /= 1024
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{size:.1f} {units[0]}"


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


def open_log(path: Path) -> int:
    """The daemon's log, appended to and readable by its owner only (it names paths and hashes)."""
    try:
        return private.open_log(path)
    except OSError as exc:
        raise MountError(f"cannot open the log {path} (mode 0600, appended to): {exc.strerror}") from None


def start_background(argv: list[str], log_path: Path, timeout: float = 60.0) -> int:
    """Start ``fusestore mount --foreground`` as a daemon; its pid once the mount answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = open_log(log_path)
    read_end, write_end = os.pipe()
    with os.fdopen(log_fd, "ab") as log_file:
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
