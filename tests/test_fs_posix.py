"""POSIX behaviour of a real mount, driven with plain os calls.

Each test names the behaviour it checks; errors are checked by their exact
errno. Calls the os module does not offer (renameat2, utimensat with
UTIME_OMIT, setfsuid) go through ctypes. Checks that need other credentials
run in a forked child: with ``setfsuid`` the child still passes FUSE's
same-user check (the mount is not allow_other) and meets the kernel's
``default_permissions`` checks; with ``setuid`` it is refused the whole mount.
"""

from __future__ import annotations

import calendar
import ctypes
import errno
import os
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from .helpers import ENV, ENV2
from .mount_helpers import LIBC, NOBODY, Mount, eventually, in_child

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MiB = 1 << 20


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


LIBC.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
LIBC.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]
LIBC.setfsuid.argtypes = [ctypes.c_uint]
LIBC.setfsgid.argtypes = [ctypes.c_uint]


def _raise_errno(path: Path) -> NoReturn:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), str(path))


def renameat2(old: Path, new: Path, flags: int) -> None:
    if LIBC.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        _raise_errno(old)


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], flags: int = 0) -> None:
    """utimensat(2) with (seconds, nanoseconds) pairs; nanoseconds may be UTIME_OMIT or UTIME_NOW."""
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if LIBC.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        _raise_errno(path)


def times_ns(path: Path, follow: bool = True) -> tuple[int, int]:
    st = os.stat(path, follow_symlinks=follow)
    return st.st_atime_ns, st.st_mtime_ns


def raises_errno(code: int, call: Callable[..., object], *args: object, **kwargs: object) -> None:
    with pytest.raises(OSError) as exc:
        call(*args, **kwargs)
    assert exc.value.errno == code, f"expected {errno.errorcode[code]}, got {exc.value!r}"


def reader(dir_fd: int, name: str) -> Callable[[], bytes]:
    """An action for ``in_child``: read ``name`` relative to ``dir_fd``."""
    def action() -> bytes:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
        try:
            return os.read(fd, 100)
        finally:
            os.close(fd)
    return action


def create_file(path: Path | str, data: bytes = b"") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- the namespace: /, environments, /.users, /.global ---------------------------------


def test_root_layout_is_fixed(mount: Mount, env_dir: Path) -> None:
    root = os.stat(mount.path)
    assert root.st_mode == stat.S_IFDIR | 0o1777
    assert set(os.listdir(mount.path)) == {".global", ".users", ".requests", ".stats", ENV}
    glob = os.stat(mount.path / ".global")
    assert glob.st_mode == stat.S_IFDIR | 0o755
    assert (glob.st_uid, glob.st_gid) == (0, 0)
    users = os.stat(mount.path / ".users")
    assert users.st_mode == stat.S_IFDIR | 0o1777
    assert stat.S_ISDIR(os.stat(env_dir).st_mode)
    raises_errno(errno.EPERM, os.rmdir, mount.path / ".global")
    raises_errno(errno.EPERM, os.rmdir, mount.path / ".users")
    raises_errno(errno.EPERM, os.rmdir, mount.path / ".requests")
    assert set(os.listdir(mount.path)) == {".global", ".users", ".requests", ".stats", ENV}


def test_only_directories_can_be_created_in_root_and_in_users(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "f", b"x")
    users = mount.path / ".users"
    # a valid environment name: what is refused is the kind of inode
    for target in (mount.path / str(uuid.uuid4()), users / "alice"):
        raises_errno(errno.EPERM, os.open, target, os.O_WRONLY | os.O_CREAT, 0o644)
        raises_errno(errno.EPERM, os.symlink, "anything", target)
        raises_errno(errno.EPERM, os.mkfifo, target)
        raises_errno(errno.EPERM, os.mknod, target, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        raises_errno(errno.EPERM, os.mknod, target, stat.S_IFREG | 0o600)
        raises_errno(errno.EPERM, os.link, env_dir / "f", target)
    assert set(os.listdir(mount.path)) == {".global", ".users", ".requests", ".stats", ENV}
    assert os.listdir(users) == []


BAD_ENVIRONMENT_NAMES = [
    "not-a-uuid",
    ENV.upper(),
    ENV[:-1] + "E",  # one uppercase letter is enough
    ENV.replace("-", ""),
    "{" + ENV + "}",
    "urn:uuid:" + ENV,
    ENV + "0",
    ENV[:-1],
]


def test_mkdir_in_root_accepts_only_canonical_lowercase_uuids(mount: Mount) -> None:
    for bad in BAD_ENVIRONMENT_NAMES:
        with pytest.raises(OSError) as exc:
            os.mkdir(mount.path / bad)
        assert exc.value.errno == errno.EINVAL, (bad, exc.value)
    assert set(os.listdir(mount.path)) == {".global", ".users", ".requests", ".stats"}
    os.mkdir(mount.path / ENV2, 0o755)
    st = os.stat(mount.path / ENV2)
    assert st.st_mode == stat.S_IFDIR | 0o755
    assert set(os.listdir(mount.path)) == {".global", ".users", ".requests", ".stats", ENV2}
    raises_errno(errno.EEXIST, os.mkdir, mount.path / ENV2)


def test_empty_environment_can_be_removed_but_not_a_non_empty_one(mount: Mount, env_dir: Path) -> None:
    os.mkdir(mount.path / ENV2)
    os.rmdir(mount.path / ENV2)
    assert ENV2 not in os.listdir(mount.path)
    raises_errno(errno.ENOENT, os.stat, mount.path / ENV2)

    create_file(env_dir / "f", b"data")
    raises_errno(errno.ENOTEMPTY, os.rmdir, env_dir)
    os.unlink(env_dir / "f")
    os.mkdir(env_dir / "sub")
    raises_errno(errno.ENOTEMPTY, os.rmdir, env_dir)
    os.rmdir(env_dir / "sub")
    os.rmdir(env_dir)
    assert ENV not in os.listdir(mount.path)


def test_user_directory_is_owned_by_its_creator(mount: Mount) -> None:
    users = mount.path / ".users"
    users_fd = os.open(users, os.O_RDONLY | os.O_DIRECTORY)
    try:
        code, _ = in_child(lambda: os.mkdir("alice", 0o755, dir_fd=users_fd), fsuid=1234)
    finally:
        os.close(users_fd)
    assert code == 0, errno.errorcode.get(code, code)
    st = os.stat(users / "alice")
    assert st.st_mode == stat.S_IFDIR | 0o755
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    os.mkdir(users / "bob")
    assert os.stat(users / "bob").st_uid == 0
    assert sorted(os.listdir(users)) == ["alice", "bob"]


def test_user_and_global_directories_hold_any_tree(mount: Mount, env_dir: Path) -> None:
    os.mkdir(mount.path / ".users" / "alice")
    create_file(env_dir / "g", b"g")
    for home in (".users/alice", ".global"):
        check_tree_in(mount.path / home, env_dir)
    create_file(mount.path / ".global" / "g")
    raises_errno(errno.EXDEV, os.rename, mount.path / ".global" / "g", mount.path / ".users" / "alice" / "g")


def check_tree_in(base: Path, env_dir: Path) -> None:
    os.makedirs(base / "a" / "b")
    data = os.urandom(50_000)
    (base / "a" / "b" / "f").write_bytes(data)
    assert (base / "a" / "b" / "f").read_bytes() == data
    os.symlink("b/f", base / "a" / "s")
    assert (base / "a" / "s").read_bytes() == data
    os.link(base / "a" / "b" / "f", base / "h")
    assert os.stat(base / "h").st_nlink == 2
    os.rename(base / "h", base / "a" / "h2")
    assert os.stat(base / "a" / "h2").st_ino == os.stat(base / "a" / "b" / "f").st_ino
    os.mkfifo(base / "p")
    assert stat.S_ISFIFO(os.stat(base / "p").st_mode)
    os.setxattr(base / "a" / "h2", "user.k", b"v")
    assert os.getxattr(base / "a" / "b" / "f", "user.k") == b"v"
    assert sorted(os.listdir(base)) == ["a", "p"]
    # a different space from the environment: no links or renames across
    raises_errno(errno.EXDEV, os.rename, base / "a" / "b" / "f", env_dir / "f")
    raises_errno(errno.EXDEV, os.link, base / "a" / "b" / "f", env_dir / "f")
    raises_errno(errno.EXDEV, os.rename, env_dir / "g", base / "g")
    for name in ("a/b/f", "a/h2", "a/s", "p"):
        os.unlink(base / name)
    os.rmdir(base / "a" / "b")
    os.rmdir(base / "a")
    assert os.listdir(base) == []


# -- files, directories, links, special files ---------------------------------------------


def test_written_file_reads_back_with_its_size_after_close(mount: Mount, env_dir: Path) -> None:
    data = os.urandom(200_000)
    fd = os.open(env_dir / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    for start in range(0, len(data), 65536):
        os.write(fd, data[start:start + 65536])
    os.close(fd)
    st = os.stat(env_dir / "f")
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o7777 == 0o640
    assert st.st_size == len(data)
    assert st.st_nlink == 1
    assert read_all(env_dir / "f") == data
    assert os.listdir(env_dir) == ["f"]


def test_directories_count_their_subdirectories_in_nlink(mount: Mount, env_dir: Path) -> None:
    os.mkdir(env_dir / "d", 0o750)
    st = os.stat(env_dir / "d")
    assert st.st_mode == stat.S_IFDIR | 0o750
    assert st.st_nlink == 2
    os.mkdir(env_dir / "d" / "x")
    os.mkdir(env_dir / "d" / "y")
    create_file(env_dir / "d" / "file")
    assert os.stat(env_dir / "d").st_nlink == 4
    os.rmdir(env_dir / "d" / "x")
    assert os.stat(env_dir / "d").st_nlink == 3
    assert sorted(os.listdir(env_dir / "d")) == ["file", "y"]


def test_symlink_stores_its_target_for_readlink(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "target", b"through the link")
    os.symlink("target", env_dir / "link")
    os.symlink("../nowhere/at/all", env_dir / "dangling")
    assert os.readlink(env_dir / "link") == "target"
    assert os.readlink(env_dir / "dangling") == "../nowhere/at/all"
    st = os.lstat(env_dir / "dangling")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len("../nowhere/at/all")
    assert os.stat(env_dir / "link").st_ino == os.stat(env_dir / "target").st_ino
    assert read_all(env_dir / "link") == b"through the link"
    raises_errno(errno.ENOENT, os.stat, env_dir / "dangling")
    raises_errno(errno.EINVAL, os.readlink, env_dir / "target")
    raises_errno(errno.EEXIST, os.symlink, "other", env_dir / "link")


def test_hard_links_are_one_inode_under_two_names(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "a", b"shared")
    os.mkdir(env_dir / "sub")
    os.link(env_dir / "a", env_dir / "sub" / "b")
    a, b = os.stat(env_dir / "a"), os.stat(env_dir / "sub" / "b")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    assert read_all(env_dir / "sub" / "b") == b"shared"

    os.chmod(env_dir / "sub" / "b", 0o600)
    assert os.stat(env_dir / "a").st_mode & 0o7777 == 0o600
    with open(env_dir / "sub" / "b", "ab") as f:
        f.write(b" and more")
    assert read_all(env_dir / "a") == b"shared and more"
    assert os.stat(env_dir / "a").st_size == len(b"shared and more")
    raises_errno(errno.EEXIST, os.link, env_dir / "a", env_dir / "sub" / "b")

    os.unlink(env_dir / "a")
    b = os.stat(env_dir / "sub" / "b")
    assert b.st_nlink == 1
    assert read_all(env_dir / "sub" / "b") == b"shared and more"


def test_special_files_keep_their_type_mode_and_rdev(mount: Mount, env_dir: Path) -> None:
    os.mkfifo(env_dir / "p", 0o640)
    st = os.stat(env_dir / "p")
    assert stat.S_ISFIFO(st.st_mode)
    assert st.st_mode & 0o7777 == 0o640
    fd = os.open(env_dir / "p", os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"ping")
        assert os.read(fd, 100) == b"ping"
    finally:
        os.close(fd)
    raises_errno(errno.EEXIST, os.mkfifo, env_dir / "p")

    os.mknod(env_dir / "chr", stat.S_IFCHR | 0o640, os.makedev(4, 64))
    os.mknod(env_dir / "blk", stat.S_IFBLK | 0o604, os.makedev(7, 3))
    os.mknod(env_dir / "sock", stat.S_IFSOCK | 0o755)
    os.mknod(env_dir / "reg", stat.S_IFREG | 0o604)
    chr_, blk, sock, reg = (os.lstat(env_dir / n) for n in ("chr", "blk", "sock", "reg"))
    assert chr_.st_mode == stat.S_IFCHR | 0o640 and chr_.st_rdev == os.makedev(4, 64)
    assert blk.st_mode == stat.S_IFBLK | 0o604 and blk.st_rdev == os.makedev(7, 3)
    assert (os.major(blk.st_rdev), os.minor(blk.st_rdev)) == (7, 3)
    assert sock.st_mode == stat.S_IFSOCK | 0o755
    assert reg.st_mode == stat.S_IFREG | 0o604 and reg.st_size == 0
    assert read_all(env_dir / "reg") == b""
    assert sorted(os.listdir(env_dir)) == ["blk", "chr", "p", "reg", "sock"]


# -- extended attributes ---------------------------------------------------------------------


def test_user_xattrs_can_be_set_read_listed_and_removed(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    create_file(f, b"content")
    os.mkdir(env_dir / "d")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.binary", b"\x00\x01\xff\x00")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(env_dir / "d", "user.on-a-dir", b"yes")
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.binary") == b"\x00\x01\xff\x00"
    assert os.getxattr(f, "user.empty") == b""
    assert os.getxattr(env_dir / "d", "user.on-a-dir") == b"yes"
    assert sorted(os.listxattr(f)) == ["user.binary", "user.color", "user.empty"]

    os.setxattr(f, "user.color", b"a much longer value than before" * 10)
    assert os.getxattr(f, "user.color") == b"a much longer value than before" * 10

    os.removexattr(f, "user.color")
    assert sorted(os.listxattr(f)) == ["user.binary", "user.empty"]
    raises_errno(errno.ENODATA, os.getxattr, f, "user.color")
    assert read_all(f) == b"content"


def test_missing_xattr_is_enodata_and_acl_xattrs_are_not_supported(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "f")
    raises_errno(errno.ENODATA, os.getxattr, env_dir / "f", "user.never-set")
    raises_errno(errno.ENODATA, os.removexattr, env_dir / "f", "user.never-set")
    assert os.listxattr(env_dir / "f") == []
    undefined = 0xFFFFFFFF
    # a well-formed ACL (version 2: user::rw- group::r-- other::r--), so the VFS passes it on
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, undefined) for tag, perm in ((0x01, 6), (0x04, 4), (0x20, 4))
    )
    raises_errno(errno.EOPNOTSUPP, os.setxattr, env_dir / "f", "system.posix_acl_access", acl)
    assert os.stat(env_dir / "f").st_mode & 0o777 == 0o644


# -- attributes: mode, owner, times -------------------------------------------------------


def test_chmod_sets_mode_bits_and_root_can_chown(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "f")
    os.mkdir(env_dir / "d")
    os.chmod(env_dir / "f", 0o4751)
    assert os.stat(env_dir / "f").st_mode == stat.S_IFREG | 0o4751
    os.chmod(env_dir / "f", 0o000)
    assert os.stat(env_dir / "f").st_mode == stat.S_IFREG
    os.chmod(env_dir / "d", 0o3770)
    assert os.stat(env_dir / "d").st_mode == stat.S_IFDIR | 0o3770
    os.symlink("f", env_dir / "s")
    os.chown(env_dir / "f", 1234, 5678)
    st = os.stat(env_dir / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(env_dir / "f", -1, 42)
    st = os.stat(env_dir / "f")
    assert (st.st_uid, st.st_gid) == (1234, 42)
    os.lchown(env_dir / "s", 77, 88)
    link = os.lstat(env_dir / "s")
    assert (link.st_uid, link.st_gid) == (77, 88)
    assert (os.stat(env_dir / "f").st_uid, os.stat(env_dir / "f").st_gid) == (1234, 42)


def test_utime_keeps_nanoseconds_and_follows_symlinks_unless_told_not_to(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "f", b"x")
    os.mkdir(env_dir / "d")
    atime, mtime = 1_600_000_000_123_456_789, 1_500_000_000_987_654_321
    for path in (env_dir / "f", env_dir / "d"):
        os.utime(path, ns=(atime, mtime))
        assert times_ns(path) == (atime, mtime)
    os.utime(env_dir / "f", ns=(1, 999_999_999))
    assert times_ns(env_dir / "f") == (1, 999_999_999)

    os.symlink("f", env_dir / "s")
    link_times = times_ns(env_dir / "s", follow=False)
    os.utime(env_dir / "s", ns=(1_111_111_111_000_000_001, 1_222_222_222_000_000_002))
    assert times_ns(env_dir / "f") == (1_111_111_111_000_000_001, 1_222_222_222_000_000_002)
    assert times_ns(env_dir / "s", follow=False) == link_times

    os.utime(env_dir / "s", ns=(1_333_333_333_000_000_003, 1_444_444_444_000_000_004), follow_symlinks=False)
    assert times_ns(env_dir / "s", follow=False) == (1_333_333_333_000_000_003, 1_444_444_444_000_000_004)
    assert times_ns(env_dir / "f") == (1_111_111_111_000_000_001, 1_222_222_222_000_000_002)


def test_utime_omit_and_touch_a_or_m_leave_the_other_time_alone(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    create_file(f, b"x")
    os.utime(f, ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_002))
    utimensat(f, (0, UTIME_OMIT), (1_500_000_000, 5))
    assert times_ns(f) == (1_000_000_000_000_000_001, 1_500_000_000_000_000_005)
    utimensat(f, (1_600_000_000, 7), (0, UTIME_OMIT))
    assert times_ns(f) == (1_600_000_000_000_000_007, 1_500_000_000_000_000_005)

    before = time.time_ns()
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_NOW))
    after = time.time_ns()
    atime, mtime = times_ns(f)
    assert atime == 1_600_000_000_000_000_007
    # the kernel stamps "now" with its coarse clock, which may lag time.time_ns() by a tick
    assert before - 10**9 <= mtime <= after

    os.symlink("f", env_dir / "s")
    link_atime = times_ns(env_dir / "s", follow=False)[0]
    utimensat(env_dir / "s", (0, UTIME_OMIT), (1_700_000_000, 9), AT_SYMLINK_NOFOLLOW)
    assert times_ns(env_dir / "s", follow=False) == (link_atime, 1_700_000_000_000_000_009)
    assert times_ns(f) == (atime, mtime)

    # touch -a and touch -m pass UTIME_OMIT for the other time
    os.utime(f, ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_002))
    env = {**os.environ, "TZ": "UTC"}
    subprocess.run(["touch", "-a", "-d", "2001-02-03 04:05:06.123456789", str(f)], check=True, env=env)
    new_atime = calendar.timegm((2001, 2, 3, 4, 5, 6)) * 10**9 + 123_456_789
    assert times_ns(f) == (new_atime, 1_000_000_000_000_000_002)
    subprocess.run(["touch", "-m", "-d", "2002-03-04 05:06:07.987654321", str(f)], check=True, env=env)
    new_mtime = calendar.timegm((2002, 3, 4, 5, 6, 7)) * 10**9 + 987_654_321
    assert times_ns(f) == (new_atime, new_mtime)


def test_mtime_set_just_before_close_survives_the_close(mount: Mount, env_dir: Path) -> None:
    t = 1_234_567_890_123_456_789
    data = os.urandom(5000)
    fd = os.open(env_dir / "by-path", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.utime(env_dir / "by-path", ns=(t, t))
    os.close(fd)
    fd = os.open(env_dir / "by-fd", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.utime(fd, ns=(t, t + 1))
    os.close(fd)
    # a write after the utime is the last change: its time is the mtime, not t
    fd = os.open(env_dir / "written-after", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"first")
    os.utime(env_dir / "written-after", ns=(t, t))
    before = time.time_ns()
    os.write(fd, b" second")
    os.close(fd)
    assert os.stat(env_dir / "written-after").st_mtime_ns >= before - 10**9  # give or take a clock tick
    for name, expected in (("by-path", (t, t)), ("by-fd", (t, t + 1))):
        st = os.stat(env_dir / name)
        assert st.st_size == 5000
        assert (st.st_atime_ns, st.st_mtime_ns) == expected, name
    mount.remount()
    assert os.stat(env_dir / "written-after").st_mtime_ns >= before - 10**9
    assert read_all(env_dir / "written-after") == b"first second"
    for name, expected in (("by-path", (t, t)), ("by-fd", (t, t + 1))):
        st = os.stat(env_dir / name)
        assert st.st_size == 5000
        assert (st.st_atime_ns, st.st_mtime_ns) == expected, name
        assert read_all(env_dir / name) == data


# -- content: truncate, append, random writes, sharing, holes ------------------------------


def test_truncate_by_path_shrinks_and_grows_with_zeros(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    create_file(f, b"abcdefgh")
    os.truncate(f, 3)
    assert os.stat(f).st_size == 3
    assert read_all(f) == b"abc"
    os.truncate(f, 10)
    assert os.stat(f).st_size == 10
    assert read_all(f) == b"abc" + bytes(7)
    os.truncate(f, 0)
    assert os.stat(f).st_size == 0
    assert read_all(f) == b""
    os.truncate(f, 2 * MiB)
    assert read_all(f) == bytes(2 * MiB)
    os.mkdir(env_dir / "d")
    raises_errno(errno.EISDIR, os.truncate, env_dir / "d", 0)


def test_ftruncate_shrinks_and_grows_an_open_file(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"0123456789")
        os.ftruncate(fd, 4)
        assert os.fstat(fd).st_size == 4
        assert os.pread(fd, 100, 0) == b"0123"
        os.ftruncate(fd, 8)
        assert os.fstat(fd).st_size == 8
        assert os.pread(fd, 100, 0) == b"0123" + bytes(4)
        os.pwrite(fd, b"X", 8)
    finally:
        os.close(fd)
    assert read_all(f) == b"0123" + bytes(4) + b"X"
    assert os.stat(f).st_size == 9

    fd = os.open(f, os.O_RDWR)  # a committed file, truncated without any write
    try:
        os.ftruncate(fd, 2)
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 2
    assert read_all(f) == b"01"
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 5)
    finally:
        os.close(fd)
    assert read_all(f) == b"01" + bytes(3)

    # truncate by path while a descriptor with unsaved writes is open: both see one file
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"abcdef", 0)
        os.truncate(f, 3)
        assert os.fstat(fd).st_size == 3
        assert os.pread(fd, 100, 0) == b"abc"
        os.pwrite(fd, b"Z", 4)
    finally:
        os.close(fd)
    assert read_all(f) == b"abc\0Z"


def test_open_with_o_trunc_discards_the_old_content(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    create_file(f, b"a long first version of the file")
    with open(f, "wb") as out:  # O_WRONLY | O_CREAT | O_TRUNC
        out.write(b"short")
    assert read_all(f) == b"short"
    assert os.stat(f).st_size == 5
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(f).st_size == 0
    assert read_all(f) == b""


def test_o_append_writes_always_go_to_the_end(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    create_file(f, b"start")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"-one")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"-two")
    finally:
        os.close(fd)
    assert read_all(f) == b"start-one-two"
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"-three")
    finally:
        os.close(fd)
    assert read_all(f) == b"start-one-two-three"
    assert os.stat(f).st_size == len(b"start-one-two-three")


def test_pwrite_overwrites_in_the_middle(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    data = bytearray(os.urandom(300_000))
    f.write_bytes(data)
    assert eventually(lambda: mount.blob_count() == 1)
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"XYZ", 1000)
        os.pwrite(fd, b"middle" * 100, 150_000)
        assert os.pread(fd, 3, 1000) == b"XYZ"
        os.pwrite(fd, b"Q", 1001)  # overwrite what this same handle wrote
        assert os.pread(fd, 5, 999) == bytes(data[999:1000]) + b"XQZ" + bytes(data[1003:1004])
    finally:
        os.close(fd)
    data[1000:1003] = b"XQZ"
    data[150_000:150_600] = b"middle" * 100
    assert os.stat(f).st_size == 300_000
    assert read_all(f) == bytes(data)
    assert eventually(lambda: mount.blob_count() == 1), "the old content's blob was not freed"


def test_two_descriptors_see_each_others_writes_before_close(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    first = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    second = os.open(f, os.O_RDWR)
    try:
        os.write(first, b"written by the first")
        assert os.pread(second, 100, 0) == b"written by the first"
        assert os.fstat(second).st_size == 20
        os.pwrite(second, b"SECOND", 15)  # over "first", one byte further
        assert os.pread(first, 100, 0) == b"written by the SECOND"
        os.close(first)
        first = -1
        assert os.pread(second, 100, 0) == b"written by the SECOND"
    finally:
        if first >= 0:
            os.close(first)
        os.close(second)
    assert read_all(f) == b"written by the SECOND"


@pytest.mark.parametrize("committed_first", [False, True])
def test_a_reader_sees_what_a_write_only_descriptor_writes_over_pages_it_read(
    mount: Mount, env_dir: Path, committed_first: bool
) -> None:
    """Write-only descriptors bypass the page cache: pages a reader holds must not go stale.

    ``tail -f`` reads a partly filled last page, then the file grows; an
    editor rewrites the middle of a file someone is reading.
    """
    f = env_dir / "f"
    f.write_bytes(b"a" * 5000 if committed_first else b"")
    writer = os.open(f, os.O_WRONLY | os.O_APPEND if committed_first else os.O_WRONLY)
    reader = os.open(f, os.O_RDONLY)
    try:
        if not committed_first:
            os.write(writer, b"a" * 5000)
        assert os.pread(reader, 10000, 0) == b"a" * 5000  # the reader now holds both pages
        os.write(writer, b"b" * 3000)  # the second page grows
        assert os.pread(reader, 10000, 0) == b"a" * 5000 + b"b" * 3000
        edit = os.open(f, os.O_WRONLY)
        try:
            os.pwrite(edit, b"C" * 10, 4090)  # across the page boundary, over cached bytes
        finally:
            os.close(edit)
        expected = bytearray(b"a" * 5000 + b"b" * 3000)
        expected[4090:4100] = b"C" * 10
        assert os.pread(reader, 10000, 0) == bytes(expected)
    finally:
        os.close(writer)
        os.close(reader)
    assert f.read_bytes() == bytes(expected)


def test_sparse_file_reads_zeros_before_a_far_write(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"tail", 10 * MiB)
        assert os.fstat(fd).st_size == 10 * MiB + 4
        assert os.pread(fd, 8, 10 * MiB - 4) == bytes(4) + b"tail"
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 10 * MiB + 4
    data = read_all(f)
    assert len(data) == 10 * MiB + 4
    assert data[:10 * MiB] == bytes(10 * MiB)
    assert data[10 * MiB:] == b"tail"


def test_unlinked_open_file_keeps_working_and_is_freed_at_close(mount: Mount, env_dir: Path) -> None:
    f = env_dir / "f"
    before = mount.blob_count()
    data = os.urandom(100_000)
    f.write_bytes(data)
    assert eventually(lambda: mount.blob_count() == before + 1)
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        assert "f" not in os.listdir(env_dir)
        raises_errno(errno.ENOENT, os.stat, f)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"more", len(data))
        assert os.pread(fd, 4, len(data)) == b"more"
        assert os.fstat(fd).st_size == len(data) + 4
        create_file(f, b"a new file under the old name")
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    assert read_all(f) == b"a new file under the old name"
    os.unlink(f)
    assert eventually(lambda: mount.blob_count() == before), f"{mount.blob_count()} blobs, not {before}"

    # a file written and unlinked before it was ever committed leaves nothing behind either
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(50_000))
        os.unlink(f)
        assert os.fstat(fd).st_nlink == 0
        os.write(fd, b"end")
        assert os.pread(fd, 3, 50_000) == b"end"
    finally:
        os.close(fd)
    assert os.listdir(env_dir) == []
    assert eventually(lambda: os.listdir(mount.store / "staging") == []), "a staging file was left behind"
    assert mount.blob_count() == before


# -- renames and links -------------------------------------------------------------------


def test_rename_noreplace_refuses_an_existing_target(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "a", b"A")
    create_file(env_dir / "b", b"B")
    raises_errno(errno.EEXIST, renameat2, env_dir / "a", env_dir / "b", RENAME_NOREPLACE)
    assert read_all(env_dir / "a") == b"A"
    assert read_all(env_dir / "b") == b"B"
    renameat2(env_dir / "a", env_dir / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(env_dir)) == ["b", "c"]
    assert read_all(env_dir / "c") == b"A"


def test_rename_exchange_swaps_two_names(mount: Mount, env_dir: Path) -> None:
    create_file(env_dir / "a", b"content of a")
    create_file(env_dir / "b", b"content of b")
    ino_a, ino_b = os.stat(env_dir / "a").st_ino, os.stat(env_dir / "b").st_ino
    renameat2(env_dir / "a", env_dir / "b", RENAME_EXCHANGE)
    assert read_all(env_dir / "a") == b"content of b"
    assert read_all(env_dir / "b") == b"content of a"
    assert (os.stat(env_dir / "a").st_ino, os.stat(env_dir / "b").st_ino) == (ino_b, ino_a)
    raises_errno(errno.ENOENT, renameat2, env_dir / "a", env_dir / "missing", RENAME_EXCHANGE)

    # a file and a directory in different parents: the directory counts move too
    os.makedirs(env_dir / "d1")
    os.makedirs(env_dir / "d2" / "dir")
    create_file(env_dir / "d2" / "dir" / "inside", b"i")
    create_file(env_dir / "d1" / "file", b"f")
    renameat2(env_dir / "d1" / "file", env_dir / "d2" / "dir", RENAME_EXCHANGE)
    assert os.listdir(env_dir / "d1" / "file") == ["inside"]
    assert read_all(env_dir / "d2" / "dir") == b"f"
    assert os.stat(env_dir / "d1").st_nlink == 3
    assert os.stat(env_dir / "d2").st_nlink == 2
    raises_errno(errno.ENOTEMPTY, os.rmdir, env_dir / "d1")


def test_rename_over_an_existing_file_replaces_it(mount: Mount, env_dir: Path) -> None:
    (env_dir / "new").write_bytes(b"new content " * 1000)
    (env_dir / "old").write_bytes(b"old content " * 1000)
    assert eventually(lambda: mount.blob_count() == 2)
    ino_new = os.stat(env_dir / "new").st_ino
    os.rename(env_dir / "new", env_dir / "old")
    assert os.listdir(env_dir) == ["old"]
    assert os.stat(env_dir / "old").st_ino == ino_new
    assert read_all(env_dir / "old") == b"new content " * 1000
    assert eventually(lambda: mount.blob_count() == 1), "the replaced file's blob was not freed"

    # a replaced file that is open lives on until its last close
    (env_dir / "next").write_bytes(b"next content " * 1000)
    assert eventually(lambda: mount.blob_count() == 2)
    fd = os.open(env_dir / "old", os.O_RDONLY)
    try:
        os.rename(env_dir / "next", env_dir / "old")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 20_000, 0) == b"new content " * 1000
        assert read_all(env_dir / "old") == b"next content " * 1000
        assert mount.blob_count() == 2
    finally:
        os.close(fd)
    assert eventually(lambda: mount.blob_count() == 1), "the replaced open file's blob was not freed"

    # a replaced file with another name lives on under it
    create_file(env_dir / "src", b"src")
    create_file(env_dir / "dst", b"dst")
    os.link(env_dir / "dst", env_dir / "other")
    os.rename(env_dir / "src", env_dir / "dst")
    assert read_all(env_dir / "dst") == b"src"
    assert read_all(env_dir / "other") == b"dst"
    assert os.stat(env_dir / "other").st_nlink == 1
    assert sorted(os.listdir(env_dir)) == ["dst", "old", "other"]
    assert read_all(env_dir / "old") == b"next content " * 1000


def test_rename_directory_over_a_non_empty_directory_is_enotempty(mount: Mount, env_dir: Path) -> None:
    os.makedirs(env_dir / "src" / "child")
    os.makedirs(env_dir / "full")
    create_file(env_dir / "full" / "f")
    os.makedirs(env_dir / "empty")
    raises_errno(errno.ENOTEMPTY, os.rename, env_dir / "src", env_dir / "full")
    assert os.listdir(env_dir / "full") == ["f"]
    os.rename(env_dir / "src", env_dir / "empty")
    assert os.listdir(env_dir / "empty") == ["child"]
    assert sorted(os.listdir(env_dir)) == ["empty", "full"]
    create_file(env_dir / "file")
    raises_errno(errno.ENOTDIR, os.rename, env_dir / "empty", env_dir / "file")
    raises_errno(errno.EISDIR, os.rename, env_dir / "file", env_dir / "full")


def test_rename_directory_into_its_own_subdirectory_is_einval(mount: Mount, env_dir: Path) -> None:
    os.makedirs(env_dir / "d" / "sub" / "deeper")
    raises_errno(errno.EINVAL, os.rename, env_dir / "d", env_dir / "d" / "sub" / "x")
    raises_errno(errno.EINVAL, os.rename, env_dir / "d", env_dir / "d" / "sub" / "deeper" / "x")
    assert os.listdir(env_dir / "d" / "sub") == ["deeper"]
    os.rename(env_dir / "d" / "sub", env_dir / "moved")  # moving up is fine
    assert os.listdir(env_dir / "moved") == ["deeper"]
    assert os.stat(env_dir / "d").st_nlink == 2


def test_rename_and_link_across_environments_are_exdev(mount: Mount, env_dir: Path) -> None:
    other = mount.path / ENV2
    os.mkdir(other)
    create_file(env_dir / "f", b"stays")
    os.mkdir(env_dir / "d")
    raises_errno(errno.EXDEV, os.rename, env_dir / "f", other / "f")
    raises_errno(errno.EXDEV, os.link, env_dir / "f", other / "f")
    raises_errno(errno.EXDEV, os.rename, env_dir / "d", other / "d")
    raises_errno(errno.EXDEV, renameat2, env_dir / "f", other / "f", RENAME_NOREPLACE)
    create_file(other / "g", b"there")
    raises_errno(errno.EXDEV, renameat2, env_dir / "f", other / "g", RENAME_EXCHANGE)
    raises_errno(errno.EXDEV, os.rename, other / "g", env_dir / "f")
    assert sorted(os.listdir(env_dir)) == ["d", "f"]
    assert os.listdir(other) == ["g"]
    assert read_all(env_dir / "f") == b"stays"
    assert os.stat(env_dir / "f").st_nlink == 1


# -- names and paths ---------------------------------------------------------------------


def test_names_of_256_bytes_are_enametoolong(mount: Mount, env_dir: Path) -> None:
    long = "n" * 256
    raises_errno(errno.ENAMETOOLONG, os.open, env_dir / long, os.O_WRONLY | os.O_CREAT, 0o644)
    raises_errno(errno.ENAMETOOLONG, os.mkdir, env_dir / long)
    raises_errno(errno.ENAMETOOLONG, os.stat, env_dir / long)
    create_file(env_dir / "f")
    raises_errno(errno.ENAMETOOLONG, os.symlink, "f", env_dir / long)
    raises_errno(errno.ENAMETOOLONG, os.link, env_dir / "f", env_dir / long)
    raises_errno(errno.ENAMETOOLONG, os.rename, env_dir / "f", env_dir / long)
    assert os.listdir(env_dir) == ["f"]

    longest = "m" * 255
    create_file(env_dir / longest, b"ok")
    os.mkdir(env_dir / ("d" * 255))
    assert read_all(env_dir / longest) == b"ok"
    assert sorted(os.listdir(env_dir)) == ["d" * 255, "f", longest]


def test_path_of_many_200_byte_components_works(mount: Mount, env_dir: Path) -> None:
    parts = [f"{i:03d}" + "x" * 197 for i in range(40)]
    # as far as a single path can reach (PATH_MAX is 4096)...
    reachable = (4000 - len(str(env_dir))) // 201
    assert reachable >= 10
    deep = env_dir.joinpath(*parts[:reachable])
    os.makedirs(deep)
    create_file(deep / "f", b"deep")
    assert read_all(deep / "f") == b"deep"
    assert os.listdir(deep) == ["f"]
    # ...and further, relative to directory descriptors
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[reachable:]:
            os.mkdir(part, dir_fd=fd)
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open("f", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"deeper")
        os.close(file_fd)
        file_fd = os.open("f", os.O_RDONLY, dir_fd=fd)
        assert os.read(file_fd, 100) == b"deeper"
        os.close(file_fd)
    finally:
        os.close(fd)


# -- errors of the wrong kind of inode, or of existence ------------------------------------


def test_unlink_of_a_dir_is_eisdir_rmdir_of_a_file_enotdir_link_to_a_dir_eperm(mount: Mount, env_dir: Path) -> None:
    os.mkdir(env_dir / "d")
    create_file(env_dir / "f", b"x")
    raises_errno(errno.EISDIR, os.unlink, env_dir / "d")
    raises_errno(errno.ENOTDIR, os.rmdir, env_dir / "f")
    raises_errno(errno.ENOTDIR, os.stat, env_dir / "f" / "below")
    raises_errno(errno.ENOTDIR, os.open, env_dir / "f" / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    raises_errno(errno.EISDIR, os.open, env_dir / "d", os.O_WRONLY)
    raises_errno(errno.EPERM, os.link, env_dir / "d", env_dir / "d2")
    assert sorted(os.listdir(env_dir)) == ["d", "f"]


def test_missing_names_are_enoent_and_exclusive_create_of_existing_eexist(mount: Mount, env_dir: Path) -> None:
    raises_errno(errno.ENOENT, os.open, env_dir / "missing", os.O_RDONLY)
    raises_errno(errno.ENOENT, os.stat, env_dir / "missing")
    raises_errno(errno.ENOENT, os.unlink, env_dir / "missing")
    raises_errno(errno.ENOENT, os.rmdir, env_dir / "missing")
    raises_errno(errno.ENOENT, os.rename, env_dir / "missing", env_dir / "other")
    raises_errno(errno.ENOENT, os.open, env_dir / "no-dir" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    assert os.listdir(env_dir) == []

    create_file(env_dir / "f", b"first")
    raises_errno(errno.EEXIST, os.open, env_dir / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.mkdir(env_dir / "d")
    raises_errno(errno.EEXIST, os.mkdir, env_dir / "d")
    raises_errno(errno.EEXIST, os.mkdir, env_dir / "f")
    raises_errno(errno.EEXIST, os.open, env_dir / "d", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert read_all(env_dir / "f") == b"first"


# -- the filesystem as a whole -----------------------------------------------------------


def test_statvfs_reports_the_store_disk(mount: Mount, env_dir: Path) -> None:
    disk = os.statvfs(mount.store)
    for path in (mount.path, env_dir):
        fs = os.statvfs(path)
        assert fs.f_blocks == disk.f_blocks
        assert fs.f_bsize == disk.f_bsize
        assert fs.f_frsize == disk.f_frsize
        assert fs.f_files == disk.f_files
        assert fs.f_namemax == 255


def test_inode_numbers_and_metadata_survive_a_remount(mount: Mount, env_dir: Path) -> None:
    os.mkdir(env_dir / "d")
    data = os.urandom(70_000)
    (env_dir / "d" / "f").write_bytes(data)
    os.chmod(env_dir / "d" / "f", 0o640)
    os.chown(env_dir / "d" / "f", 321, 654)
    os.utime(env_dir / "d" / "f", ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    os.setxattr(env_dir / "d" / "f", "user.kept", b"across remounts")
    os.link(env_dir / "d" / "f", env_dir / "hard")
    os.symlink("d/f", env_dir / "sym")
    os.mkfifo(env_dir / "fifo")
    os.mknod(env_dir / "dev", stat.S_IFCHR | 0o600, os.makedev(10, 200))
    names = ["d", "d/f", "hard", "sym", "fifo", "dev"]
    fields = ("st_ino", "st_mode", "st_uid", "st_gid", "st_nlink", "st_size", "st_rdev", "st_mtime_ns", "st_atime_ns")

    def snapshot() -> dict[str, tuple[int, ...]]:
        result = {}
        for name in [".", *names]:
            st = os.lstat(env_dir / name)
            result[name] = tuple(getattr(st, field) for field in fields)
        return result

    before = snapshot()
    mount.remount()
    assert snapshot() == before
    assert read_all(env_dir / "hard") == data
    assert os.readlink(env_dir / "sym") == "d/f"
    assert os.getxattr(env_dir / "d" / "f", "user.kept") == b"across remounts"
    create_file(env_dir / "new")
    assert os.stat(env_dir / "new").st_ino not in {values[0] for values in before.values()}


def test_kernel_enforces_permission_bits(mount: Mount, env_dir: Path) -> None:
    """default_permissions: an fsuid other than the owner meets the mode bits."""
    (env_dir / "secret").write_bytes(b"root only")
    os.chmod(env_dir / "secret", 0o600)
    (env_dir / "public").write_bytes(b"for everyone")
    os.chmod(env_dir / "public", 0o644)
    os.mkdir(env_dir / "shared", 0o777)
    os.chmod(env_dir / "shared", 0o777)
    env_fd = os.open(env_dir, os.O_RDONLY | os.O_DIRECTORY)  # the tmp dirs above are 0700

    def create_in_shared() -> None:
        fd = os.open("shared/mine", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=env_fd)
        os.close(fd)

    try:
        assert in_child(reader(env_fd, "secret"), fsuid=NOBODY) == (errno.EACCES, b"")
        assert in_child(reader(env_fd, "public"), fsuid=NOBODY) == (0, b"for everyone")
        assert in_child(lambda: os.close(os.open("public", os.O_WRONLY, dir_fd=env_fd)),
                        fsuid=NOBODY)[0] == errno.EACCES
        assert in_child(lambda: os.close(os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=env_fd)),
                        fsuid=NOBODY)[0] == errno.EACCES
        assert in_child(lambda: os.chmod("public", 0o666, dir_fd=env_fd), fsuid=NOBODY)[0] == errno.EPERM
        assert in_child(lambda: os.chown("public", NOBODY, NOBODY, dir_fd=env_fd), fsuid=NOBODY)[0] == errno.EPERM
        assert in_child(create_in_shared, fsuid=NOBODY)[0] == 0
    finally:
        os.close(env_fd)
    mine = os.stat(env_dir / "shared" / "mine")
    assert (mine.st_uid, mine.st_gid) == (NOBODY, NOBODY)
    public = os.stat(env_dir / "public")
    assert (public.st_mode & 0o777, public.st_uid, public.st_gid) == (0o644, 0, 0)
    assert "new" not in os.listdir(env_dir)


def test_other_users_are_refused_the_whole_mount_without_allow_other(mount: Mount, env_dir: Path) -> None:
    (env_dir / "secret").write_bytes(b"root only")
    os.chmod(env_dir / "secret", 0o600)
    (env_dir / "public").write_bytes(b"for everyone")
    os.chmod(env_dir / "public", 0o644)
    env_fd = os.open(env_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert in_child(reader(env_fd, "secret"), uid=NOBODY) == (errno.EACCES, b"")
        assert in_child(reader(env_fd, "public"), uid=NOBODY) == (errno.EACCES, b"")
        assert in_child(lambda: os.close(os.open(".", os.O_RDONLY, dir_fd=env_fd)), uid=NOBODY)[0] == errno.EACCES
        assert in_child(lambda: b"\n".join(map(os.fsencode, os.listdir(env_fd))), uid=NOBODY)[0] == errno.EACCES
        assert in_child(lambda: b"\n".join(map(os.fsencode, sorted(os.listdir(env_fd))))) == (0, b"public\nsecret")
        assert in_child(reader(env_fd, "public")) == (0, b"for everyone")  # the same child as root can
    finally:
        os.close(env_fd)


def test_selinux_labels_are_refused_but_capabilities_kept(env_dir: Path) -> None:
    create_file(env_dir / "f", b"x")
    raises_errno(errno.EOPNOTSUPP, os.setxattr, env_dir / "f", "security.selinux", b"system_u:object_r:x:s0")
    raises_errno(errno.EOPNOTSUPP, os.getxattr, env_dir / "f", "security.selinux")
    capability = bytes.fromhex("0000000200200000000000000000000000000000")
    os.setxattr(env_dir / "f", "security.capability", capability)
    assert os.getxattr(env_dir / "f", "security.capability") == capability
