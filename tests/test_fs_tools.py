"""The mount driven by the shell tools people actually use: cp, rsync, tar, dd, mv, redirections.

Every test builds its input outside the mount (in tmp_path), runs the real
tool through subprocess, and compares what the mount holds with what a plain
filesystem holds: bytes, modes, times to the nanosecond, links, xattrs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import ENV, ENV2
from .mount_helpers import Mount

MiB = 1 << 20
PAST = 1_500_000_000  # 2017-07-14, in seconds: older than anything the tools would make


def run(*args: str | os.PathLike[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure shows its command line, exit code and both streams."""
    result = subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return run("bash", "-c", script)


def need_tools(*names: str) -> None:
    """A missing tool is a broken test machine, not a reason to pass quietly."""
    missing = [name for name in names if shutil.which(name) is None]
    assert not missing, f"tools missing on this machine: {missing}"


# -- the source tree ---------------------------------------------------------------------------


def build_tree(root: Path) -> None:
    """A small tree with every kind of thing the tools must carry over.

    Regular files of several sizes (empty to ~3 MB), nested directories,
    relative, absolute-looking and dangling symlinks, a hard-linked pair in
    two directories, user xattrs (text, binary, on a directory), odd modes,
    and times set in the past on everything (directories last).
    """
    root.mkdir()
    (root / "dir" / "sub" / "deeper").mkdir(parents=True)
    (root / "dir" / "private").mkdir()
    (root / "empty-dir").mkdir()

    files = {
        "empty": b"",
        "small.txt": b"hello, fusestore\n",
        "medium.bin": os.urandom(100_000),
        "big.bin": os.urandom(3_000_000),
        "dir/secret": b"only for the owner\n",
        "dir/run.sh": b"#!/bin/sh\necho run\n",
        "dir/sub/deep.txt": b"deep\n" * 1000,
        "dir/sub/deeper/exactly-128k": os.urandom(128 * 1024),
        "dir/private/note": b"note\n",
        "hard_a": os.urandom(70_000),
        "same-as-small.txt": b"hello, fusestore\n",  # duplicate content
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.link(root / "hard_a", root / "dir" / "sub" / "hard_b")

    os.symlink("small.txt", root / "link_to_small")
    os.symlink("../../big.bin", root / "dir" / "sub" / "link_up")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("sub", root / "dir" / "link_to_dir")

    os.chmod(root / "dir" / "secret", 0o600)
    os.chmod(root / "dir" / "run.sh", 0o750)
    os.chmod(root / "dir" / "private", 0o750)
    os.chmod(root / "medium.bin", 0o640)
    os.chmod(root / "empty", 0o444)

    run("setfattr", "-n", "user.comment", "-v", "a small text file", root / "small.txt")
    run("setfattr", "-n", "user.checksum", "-v", "0x00ff10fe7f80", root / "big.bin")  # binary value
    run("setfattr", "-n", "user.empty", root / "medium.bin")  # empty value
    run("setfattr", "-n", "user.dir", "-v", "on a directory", root / "dir" / "sub")
    run("setfattr", "-n", "user.linked", "-v", "both names see me", root / "hard_a")

    # Times in the past, each different (nanoseconds included), children before parents.
    stamp = PAST * 10**9 + 123_456_789
    paths = sorted((p for p in root.rglob("*")), key=lambda p: (-len(p.parts), str(p)))
    for step, path in enumerate([*paths, root]):
        t = stamp + step * 1_000_000_007
        os.utime(path, ns=(t - 5 * 10**9, t), follow_symlinks=False)


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    content: str  # sha256 of a file, target of a symlink, "" for a directory
    xattrs: tuple[tuple[str, bytes], ...]
    nlink: int  # for files only (a directory's count is the filesystem's business)


def user_xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    if path.is_symlink():
        return ()  # user.* xattrs are not allowed on symlinks
    names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
    return tuple((n, os.getxattr(path, n)) for n in names)


def describe(path: Path) -> Entry:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind, content, nlink = "link", os.readlink(path), st.st_nlink
    elif stat.S_ISDIR(st.st_mode):
        kind, content, nlink = "dir", "", 0
    else:
        assert stat.S_ISREG(st.st_mode), f"{path}: unexpected type {st.st_mode:o}"
        kind, content, nlink = "file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_nlink
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                 st.st_size if kind != "dir" else 0, st.st_mtime_ns, content, user_xattrs(path), nlink)


def snapshot(root: Path) -> dict[str, Entry]:
    """Everything the tools must preserve, per relative path ("." is the root itself)."""
    result = {".": describe(root)}
    for path in root.rglob("*"):
        result[str(path.relative_to(root))] = describe(path)
    return result


def inodes(root: Path) -> dict[str, int]:
    return {".": os.lstat(root).st_ino, **{str(p.relative_to(root)): os.lstat(p).st_ino for p in root.rglob("*")}}


def assert_same_tree(source: Path, copy: Path) -> None:
    """diff -r finds no difference, and every path carries the same metadata."""
    diff = run("diff", "-r", "--no-dereference", source, copy, check=False)
    assert diff.returncode == 0, f"diff -r found differences:\n{diff.stdout}{diff.stderr}"
    expected, actual = snapshot(source), snapshot(copy)
    assert sorted(actual) == sorted(expected)
    mismatches = {rel: (expected[rel], actual[rel]) for rel in expected if expected[rel] != actual[rel]}
    assert not mismatches, "metadata differs:\n" + "\n".join(
        f"{rel}:\n  source {want}\n  copy   {got}" for rel, (want, got) in sorted(mismatches.items())
    )
    assert_hard_links(copy)


def assert_hard_links(copy: Path) -> None:
    a, b = os.lstat(copy / "hard_a"), os.lstat(copy / "dir" / "sub" / "hard_b")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    others = {os.lstat(p).st_ino for p in copy.rglob("*") if p.name not in ("hard_a", "hard_b")}
    assert a.st_ino not in others


@pytest.fixture
def source(tmp_path: Path) -> Path:
    need_tools("cp", "rsync", "tar", "dd", "diff", "setfattr", "getfattr")
    root = tmp_path / "src"
    build_tree(root)
    return root


# -- cp -a ------------------------------------------------------------------------------------


def test_cp_a_preserves_content_modes_times_links_and_xattrs(mount: Mount, env_dir: Path, source: Path) -> None:
    copy = env_dir / "tree"
    run("cp", "-a", source, copy)
    assert_same_tree(source, copy)

    # getfattr, the tool, sees the same attributes on both sides (blocks sorted:
    # it walks in directory order, which differs between filesystems).
    def dump(root: Path) -> list[str]:
        out = run("getfattr", "-R", "-P", "-h", "-d", "-m", "^user\\.", "-e", "hex", ".", cwd=root).stdout
        return sorted(block.strip() for block in out.split("\n\n") if block.strip())

    dumped = dump(copy)
    assert dumped == dump(source)
    assert "# file: big.bin\nuser.checksum=0x00ff10fe7f80" in dumped


def test_cp_a_tree_survives_remount_with_same_metadata_and_inode_numbers(
    mount: Mount, env_dir: Path, source: Path
) -> None:
    copy = env_dir / "tree"
    run("cp", "-a", source, copy)
    before, before_inodes = snapshot(copy), inodes(copy)

    mount.remount()

    assert snapshot(copy) == before
    assert inodes(copy) == before_inodes
    assert_same_tree(source, copy)


def test_cp_onto_an_existing_longer_file_replaces_all_of_it(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    long, short = tmp_path / "long.bin", tmp_path / "short.bin"
    long.write_bytes(os.urandom(500_000))
    short.write_bytes(os.urandom(1_000))
    target = env_dir / "target"
    run("cp", long, target)
    ino = os.stat(target).st_ino

    run("cp", short, target)  # opens the existing file with O_TRUNC and writes 1000 bytes
    assert os.stat(target).st_ino == ino
    assert os.stat(target).st_size == 1_000
    assert target.read_bytes() == short.read_bytes()

    mount.remount()
    assert target.read_bytes() == short.read_bytes()


# -- rsync ------------------------------------------------------------------------------------


def rsync(*args: str | os.PathLike[str]) -> list[str]:
    """rsync -aHAX with itemized changes; the lines it printed."""
    result = run("rsync", "-aHAX", "--itemize-changes", *args)
    return result.stdout.splitlines()


def test_rsync_aHAX_copies_tree_then_finds_nothing_to_do(mount: Mount, env_dir: Path, source: Path) -> None:
    copy = env_dir / "tree"
    first = rsync(f"{source}/", f"{copy}/")
    assert any(line.startswith(">f") for line in first), first
    assert_same_tree(source, copy)

    second = rsync("--stats", f"{source}/", f"{copy}/")
    itemized = [line for line in second if line[:2] in (">f", "cf", "cd", "cL", "hf", ".f", ".d", ".L")]
    assert itemized == [], "a second identical rsync changed things:\n" + "\n".join(second)
    assert "Number of regular files transferred: 0" in second, second
    assert_same_tree(source, copy)


def test_rsync_inplace_delta_rewrites_the_middle_of_a_file(mount: Mount, env_dir: Path, source: Path) -> None:
    copy = env_dir / "tree"
    rsync(f"{source}/", f"{copy}/")
    ino = os.stat(copy / "big.bin").st_ino

    # Same size, different bytes in the middle, new mtime: rsync must send it.
    with open(source / "big.bin", "r+b") as f:
        f.seek(1_500_000)
        f.write(os.urandom(10_000))
    os.utime(source / "big.bin", ns=(PAST * 10**9, PAST * 10**9 + 999))

    # --no-whole-file: the delta algorithm, writing changed blocks in place, out of order.
    lines = rsync("--inplace", "--no-whole-file", f"{source}/", f"{copy}/")
    sent = [line.split(" ", 1)[1] for line in lines if line.startswith(">f")]
    assert sent == ["big.bin"], lines

    assert (copy / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert os.stat(copy / "big.bin").st_ino == ino  # in place: the same file
    assert_same_tree(source, copy)

    mount.remount()
    assert (copy / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert os.stat(copy / "big.bin").st_mtime_ns == PAST * 10**9 + 999


# -- tar --------------------------------------------------------------------------------------


def test_tar_extract_into_mount_and_create_from_it_gives_identical_archive(
    mount: Mount, env_dir: Path, source: Path, tmp_path: Path
) -> None:
    options = ["--sort=name", "--format=gnu", "--numeric-owner"]
    original, again = tmp_path / "original.tar", tmp_path / "again.tar"
    run("tar", *options, "-cf", original, "-C", source, ".")

    extracted = env_dir / "tree"
    extracted.mkdir()
    run("tar", "-xf", original, "-C", extracted)
    run("tar", *options, "-cf", again, "-C", extracted, ".")

    assert original.stat().st_size == again.stat().st_size
    if original.read_bytes() != again.read_bytes():
        listing = lambda tar: run("tar", "-tvf", tar, "--full-time").stdout  # noqa: E731
        pytest.fail(f"archives differ\noriginal:\n{listing(original)}\nfrom the mount:\n{listing(again)}")

    # Whole seconds are all the gnu format keeps; the contents must match exactly.
    run("diff", "-r", "--no-dereference", source, extracted)
    assert_hard_links(extracted)


# -- dd ---------------------------------------------------------------------------------------


def test_dd_overwrites_in_place_and_extends_with_a_hole(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    plain, mounted = tmp_path / "plain.bin", env_dir / "dd.bin"
    base, patch, tiny = tmp_path / "base", tmp_path / "patch", tmp_path / "tiny"
    base.write_bytes(os.urandom(MiB))
    patch.write_bytes(os.urandom(64 * 1024))
    tiny.write_bytes(b"0123456789abcdef" * 3)

    edits = [
        # a 1 MiB file written by dd
        ["if={base}", "bs=64K"],
        # overwrite 64 KiB in the middle (offset 256 KiB), keeping the rest
        ["if={patch}", "bs=64K", "seek=4", "conv=notrunc"],
        # an unaligned small overwrite, one byte at a time
        ["if={tiny}", "bs=1", "seek=777777", "conv=notrunc"],
        # past the end: a hole from 1 MiB to 3 MiB, then 64 KiB of data
        ["if={patch}", "bs=1M", "seek=3", "conv=notrunc"],
    ]

    def apply(edit: list[str], target: Path) -> None:
        args = [a.format(base=base, patch=patch, tiny=tiny) for a in edit]
        run("dd", *args, f"of={target}", "status=none")

    for step, edit in enumerate(edits):
        apply(edit, plain)
        apply(edit, mounted)
        assert os.stat(mounted).st_size == os.stat(plain).st_size, f"size after edit {step}: {edit}"
        assert mounted.read_bytes() == plain.read_bytes(), f"content after edit {step}: {edit}"

    data = mounted.read_bytes()
    assert len(data) == 3 * MiB + 64 * 1024
    assert data[MiB:3 * MiB] == bytes(2 * MiB)  # the hole reads as zeros
    assert data[3 * MiB:] == patch.read_bytes()
    assert data[256 * 1024:320 * 1024] == patch.read_bytes()
    assert data[777777:777777 + 48] == tiny.read_bytes()

    # dd without conv=notrunc cuts the file at the seek offset before writing.
    apply(["if={tiny}", "bs=1K", "seek=10"], plain)
    apply(["if={tiny}", "bs=1K", "seek=10"], mounted)
    assert os.stat(mounted).st_size == 10 * 1024 + 48
    assert mounted.read_bytes() == plain.read_bytes()

    mount.remount()
    assert mounted.read_bytes() == plain.read_bytes()


# -- shell redirections ----------------------------------------------------------------------------


def test_shell_redirections_truncate_append_and_shrink(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    content = os.urandom(200_000)
    src.write_bytes(content)
    f = env_dir / "f"

    def check(expected: bytes) -> None:
        assert f.read_bytes() == expected
        assert os.stat(f).st_size == len(expected)

    sh(f"cat '{src}' > '{f}'")
    check(content)

    sh(f"echo x >> '{f}'")  # O_APPEND: at the end, whatever the offset
    check(content + b"x\n")

    sh(f"echo y >> '{f}'; echo z >> '{f}'")
    check(content + b"x\ny\nz\n")

    sh(f": > '{f}'")  # truncate to empty
    check(b"")

    sh(f"printf 'a much longer line than the next one\\n' > '{f}'")
    check(b"a much longer line than the next one\n")

    sh(f"printf 'short' > '{f}'")  # overwriting a longer file must shrink it
    check(b"short")

    sh(f"cat '{src}' > '{f}'; printf 'tiny' > '{f}'")
    check(b"tiny")

    fresh = env_dir / "fresh"
    sh(f"echo first >> '{fresh}'")  # >> creates a missing file
    assert fresh.read_bytes() == b"first\n"

    # An append on a file held open by another descriptor of the same shell.
    sh(f"exec 3>'{f}'; printf 'one' >&3; echo two >> '{f}'; printf 'three' >&3; exec 3>&-")
    expected = bytearray(b"one")
    expected += b"two\n"
    expected[3:8] = b"three"  # fd 3's offset is 3: it overwrites what the append wrote
    check(bytes(expected))

    mount.remount()
    check(bytes(expected))
    assert fresh.read_bytes() == b"first\n"


# -- mv ------------------------------------------------------------------------------------------------


def test_mv_renames_within_an_environment(mount: Mount, env_dir: Path) -> None:
    data = os.urandom(50_000)
    (env_dir / "a").write_bytes(data)
    ino = os.stat(env_dir / "a").st_ino
    run("mv", env_dir / "a", env_dir / "b")
    assert not (env_dir / "a").exists()
    assert (env_dir / "b").read_bytes() == data
    assert os.stat(env_dir / "b").st_ino == ino  # a rename, not a copy

    (env_dir / "d" / "inner").mkdir(parents=True)
    (env_dir / "d" / "inner" / "x").write_bytes(b"x" * 1000)
    run("mv", env_dir / "d", env_dir / "moved")
    assert not (env_dir / "d").exists()
    assert (env_dir / "moved" / "inner" / "x").read_bytes() == b"x" * 1000

    run("mv", env_dir / "b", env_dir / "moved" / "inner")  # into a directory
    assert (env_dir / "moved" / "inner" / "b").read_bytes() == data
    assert sorted(os.listdir(env_dir)) == ["moved"]

    (env_dir / "other").write_bytes(b"replaced")
    run("mv", "-f", env_dir / "other", env_dir / "moved" / "inner" / "b")  # over an existing file
    assert (env_dir / "moved" / "inner" / "b").read_bytes() == b"replaced"
    assert sorted(os.listdir(env_dir)) == ["moved"]


def test_mv_across_environments_copies_and_removes_the_source(mount: Mount, env_dir: Path) -> None:
    other = mount.path / ENV2
    other.mkdir()
    assert env_dir.name == ENV

    data = os.urandom(1_000_000)
    (env_dir / "f").write_bytes(data)
    os.chmod(env_dir / "f", 0o640)
    os.utime(env_dir / "f", ns=(PAST * 10**9, PAST * 10**9 + 42))
    os.setxattr(env_dir / "f", "user.k", b"v")

    with pytest.raises(OSError) as raised:
        os.rename(env_dir / "f", other / "f")
    assert raised.value.errno == errno.EXDEV  # what makes mv fall back to copying

    run("mv", env_dir / "f", other / "f")
    assert not (env_dir / "f").exists()
    assert (other / "f").read_bytes() == data
    st = os.stat(other / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == PAST * 10**9 + 42
    assert os.getxattr(other / "f", "user.k") == b"v"

    (env_dir / "d" / "e").mkdir(parents=True)
    (env_dir / "d" / "e" / "g").write_bytes(data[:1000])
    run("mv", env_dir / "d", other / "d")
    assert not (env_dir / "d").exists()
    assert (other / "d" / "e" / "g").read_bytes() == data[:1000]
    assert os.listdir(env_dir) == []


# -- deduplication ------------------------------------------------------------------------------------


def test_same_file_copied_into_two_environments_is_stored_once(mount: Mount, env_dir: Path, tmp_path: Path) -> None:
    other = mount.path / ENV2
    other.mkdir()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(MiB))

    blobs, pool = mount.blob_count(), mount.pool_bytes()
    run("cp", big, env_dir / "big.bin")
    assert mount.blob_count() == blobs + 1
    assert mount.pool_bytes() == pool + 50 * MiB

    run("cp", big, other / "big.bin")
    assert mount.blob_count() == blobs + 1
    assert mount.pool_bytes() == pool + 50 * MiB

    run("cmp", big, env_dir / "big.bin")
    run("cmp", big, other / "big.bin")
    assert os.stat(env_dir / "big.bin").st_ino != os.stat(other / "big.bin").st_ino
