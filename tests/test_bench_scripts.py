"""scripts/passthrough.py carries real tools correctly, and scripts/bench.py fs measures every workload.

The passthrough is the benchmark's ceiling: it must be right before its
figures mean anything (rm -rf, rsync and tar run through it).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mount_helpers import require_fuse

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture
def passthrough(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing directory, mount point) of a running passthrough; unmounted even when the test fails."""
    require_fuse()
    source, mountpoint = tmp_path / "source", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "passthrough.py"), str(source), str(mountpoint)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert process.poll() is None, "the passthrough exited before mounting"
            assert time.monotonic() < deadline, "the passthrough did not mount"
            time.sleep(0.05)
        yield source, mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=30)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_tree(root: Path) -> None:
    """Regular files (one executable, one empty), a subdirectory, a symlink and a hard link.

    Their mtimes are whole seconds: tar keeps no more.
    """
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "sub" / "run.sh").chmod(0o755)
    (root / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(300_000))
    (root / "link").symlink_to("a.txt")
    os.link(root / "a.txt", root / "sub" / "hard.txt")
    for path in [root / "a.txt", root / "empty", root / "sub" / "run.sh", root / "sub" / "deeper" / "big.bin"]:
        os.utime(path, (1_000_000_000, 1_000_000_000))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What cp -a, rsync -a and tar must keep: type and mode, content or target, and the mtime of files."""
    seen: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                what = (path.read_bytes(), info.st_mtime_ns)
            else:
                what = None
            seen[str(path.relative_to(root))] = (info.st_mode, what)
    return seen


def same_file(one: Path, other: Path) -> bool:
    return one.lstat().st_ino == other.lstat().st_ino


def run(*argv: str | Path) -> None:
    result = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv}: {result.stderr}"


def test_real_tools_through_the_passthrough_land_on_the_backing_directory(
        tmp_path: Path, passthrough: tuple[Path, Path]) -> None:
    source, mnt = passthrough
    tree = tmp_path / "tree"
    make_tree(tree)
    expected = snapshot(tree)

    run("cp", "-a", tree, mnt / "copy")
    assert snapshot(source / "copy") == expected
    assert same_file(source / "copy" / "a.txt", source / "copy" / "sub" / "hard.txt")
    (tree / "a.txt").write_bytes(b"changed\n")
    os.utime(tree / "a.txt", (1_000_000_100, 1_000_000_100))
    run("rsync", "-a", f"{tree}/", f"{mnt}/copy/")
    assert snapshot(source / "copy") == snapshot(tree)
    run("tar", "-cf", tmp_path / "tree.tar", "-C", tree, ".")
    (mnt / "untar").mkdir()
    run("tar", "-xf", tmp_path / "tree.tar", "-C", mnt / "untar")
    assert snapshot(source / "untar") == snapshot(tree)
    assert same_file(source / "untar" / "a.txt", source / "untar" / "sub" / "hard.txt")

    run("mv", mnt / "copy" / "sub", mnt / "moved")  # a directory: what is under it moves too
    assert (source / "moved" / "deeper" / "big.bin").read_bytes() == (tree / "sub" / "deeper" / "big.bin").read_bytes()
    run("ln", mnt / "moved" / "run.sh", mnt / "run-again.sh")
    run("ln", "-s", "moved/run.sh", mnt / "to-run")
    run("chmod", "600", mnt / "run-again.sh")
    run("truncate", "-s", "3", mnt / "to-run")  # through the symlink
    assert (source / "run-again.sh").stat().st_nlink == 2
    assert stat.S_IMODE((source / "moved" / "run.sh").stat().st_mode) == 0o600
    assert os.readlink(source / "to-run") == "moved/run.sh"
    assert (source / "moved" / "run.sh").read_bytes() == b"#!/"
    assert (mnt / "run-again.sh").read_bytes() == b"#!/"  # the kernel's cached size follows too

    run("rm", "-rf", mnt / "copy", mnt / "untar", mnt / "moved")
    assert sorted(os.listdir(source)) == ["run-again.sh", "to-run"]
    assert (mnt / "run-again.sh").stat().st_nlink == 1
    with pytest.raises(OSError) as refused:
        os.setxattr(mnt / "run-again.sh", "system.posix_acl_access", b"\x02\x00\x00\x00")
    assert refused.value.errno == 95  # EOPNOTSUPP: "this filesystem has no ACLs"


def test_bench_fs_measures_every_workload_on_every_target(tmp_path: Path) -> None:
    require_fuse()
    tree = tmp_path / "tree"
    make_tree(tree)
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "fs", "--dir", str(tmp_path), "--size-mib", "4",
         "--files", "50", "--rounds", "1", "--tree", str(tree), "--json", str(figures)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(figures.read_text())
    names = [workload["workload"] for workload in report["workloads"]]
    for expected in ["write 4 MiB fresh, 1 MiB blocks", "write 4 MiB fresh, 128 KiB blocks",
                     "write 4 MiB fresh, 8 KiB blocks", "write 4 MiB fresh, 1 MiB blocks + fsync",
                     "write 4 MiB again, new name (dedup hit)", "read 4 MiB cold", "read 4 MiB warm",
                     "edit 1 MiB in its middle, to close", "create+close 50 files of 4 KiB", "ls -l of the 50",
                     "stat of each, > 1 s after", "unlink the 50", "cp -a of tree", "rsync -a of it again, unchanged",
                     "tar -xf of it", "rm -rf of it"]:
        assert any(name.startswith(expected) for name in names), (expected, names)
    for workload in report["workloads"]:
        assert set(workload["targets"]) == {"plain", "passthrough", "fusestore"}
        for name, target in workload["targets"].items():
            assert target["best"] > 0 and target["median"] > 0, (workload["workload"], name)
            if name != "plain":
                assert target["peak_rss_mib"] > 0 and target["cpu_seconds"] >= 0
        assert all(ratio > 0 for ratio in workload["ratios"].values())
    assert report["dedup_hit"]["stored_bytes_growth"] == [0]
    assert "fs/pt" in result.stdout and "unlink the 50" in result.stdout  # the table a person reads
    assert not list(tmp_path.glob("fusestore-bench-*")), "the bench left its directory behind"


def test_bench_chunking_prices_every_step_of_a_streamed_write(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "chunking", "--dir", str(tmp_path), "--size-mib", "8",
         "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {line[:56].strip(): float(line[56:].split()[0]) for line in result.stdout.splitlines()[1:]}
    assert list(figures) == ["BLAKE3 of the whole content", "FastCDC cut_buf alone (pyfastcdc)",
                             "StreamChunker (the same cut, fed 4 MiB at a time)", "+ BLAKE3 of each chunk",
                             "+ the compression probe of each chunk",
                             "ChunkStream: all its thread does but the whole hash",
                             "the commit at close of what the stream stored"]
    assert all(seconds > 0 for seconds in figures.values()), figures
    assert not list(tmp_path.glob("fusestore-bench-*")), "the bench left its store behind"
