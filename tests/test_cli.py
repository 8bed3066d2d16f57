"""The fusestore command: mount/umount life cycle, and one clear line for every failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusestore.catalog import Catalog
from fusestore.cli.mounts import process_alive

from .helpers import ENV
from .mount_helpers import FUSESTORE, Mount, require_fuse


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSESTORE, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], ["mount"], ["umount"]])
def test_help_describes_every_command_and_option(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    expected = {(): ["mount", "umount"], ("mount",): ["--foreground", "--debug", "--allow-other", "--request-ttl"],
                ("umount",): ["MOUNTPOINT", "--timeout"]}[tuple(command)]
    for word in expected:
        assert word in result.stdout


def test_bad_usage_exits_2() -> None:
    assert run("mount").returncode == 2
    assert run("frobnicate").returncode == 2


def test_mount_returns_once_the_mount_answers(tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "mnt").mkdir()
    result = subprocess.run(
        f"{sys.executable} -m fusestore mount {tmp_path}/store {tmp_path}/mnt --log {tmp_path}/log "
        f"&& mkdir {tmp_path}/mnt/{ENV} && ls {tmp_path}/mnt",
        shell=True, capture_output=True, text=True, timeout=60,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert ENV in result.stdout
    finally:
        Mount(tmp_path / "store", tmp_path / "mnt", tmp_path / "log").force_unmount()


def test_missing_mount_point_is_one_clear_line(tmp_path: Path) -> None:
    require_fuse()
    one_line_error(run("mount", str(tmp_path / "store"), str(tmp_path / "nowhere")), "does not exist", "mkdir")


def test_busy_mount_point_is_one_clear_line(mount: Mount, tmp_path: Path) -> None:
    one_line_error(run("mount", str(tmp_path / "other"), str(mount.path)), "already a mount point")


def test_store_locked_by_another_daemon_is_one_clear_line(mount: Mount, tmp_path: Path) -> None:
    (tmp_path / "mnt2").mkdir()
    pid = os.getxattr(mount.path, "user.fusestore.pid").decode()
    one_line_error(run("mount", str(mount.store), str(tmp_path / "mnt2")), "in use by process", pid)


def test_store_of_unknown_version_is_one_clear_line(tmp_path: Path) -> None:
    require_fuse()
    catalog = Catalog(tmp_path / "store" / "catalog")
    with catalog.write() as tx:
        tx.meta_put(b"format", b"42")
    catalog.close()
    (tmp_path / "mnt").mkdir()
    one_line_error(run("mount", str(tmp_path / "store"), str(tmp_path / "mnt")), "format '42'")


def test_umount_of_something_not_mounted_is_one_clear_line(tmp_path: Path) -> None:
    one_line_error(run("umount", str(tmp_path)), "not mounted")


def test_umount_waits_for_the_daemon_to_exit(mount: Mount) -> None:
    pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
    mount.umount()
    assert not mount.is_mounted()
    assert not process_alive(pid)


def test_killed_daemon_can_be_unmounted_and_remounted_without_loss(mount: Mount) -> None:
    env = mount.path / ENV
    env.mkdir()
    (env / "closed").write_bytes(b"committed before the kill")
    fd = os.open(env / "open", os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"written and fsynced, never closed")
    os.fsync(fd)
    pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.05)
    with pytest.raises(OSError):
        os.write(fd, b"more")
    with pytest.raises(OSError):  # the flush cannot reach the daemon; the descriptor is closed anyway
        os.close(fd)
    mount.umount()  # cleans the dead mount up
    assert not mount.is_mounted()
    mount.mount()
    assert (env / "closed").read_bytes() == b"committed before the kill"
    assert (env / "open").read_bytes() == b"written and fsynced, never closed"


def test_sigterm_in_foreground_unmounts_cleanly(tmp_path: Path) -> None:
    require_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    daemon = subprocess.Popen([*FUSESTORE, "mount", "--foreground", str(tmp_path / "store"), str(mountpoint)],
                              stderr=subprocess.PIPE, text=True)
    helper = Mount(tmp_path / "store", mountpoint, tmp_path / "unused")
    try:
        deadline = time.monotonic() + 30
        while not helper.is_mounted():
            assert time.monotonic() < deadline and daemon.poll() is None, "the daemon did not mount"
            time.sleep(0.05)
        (mountpoint / ENV).mkdir()
        (mountpoint / ENV / "f").write_bytes(b"kept")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert not helper.is_mounted()
        assert "unmounted" in daemon.stderr.read()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        helper.force_unmount()
    helper.mount()
    try:
        assert (mountpoint / ENV / "f").read_bytes() == b"kept"
    finally:
        helper.umount()
