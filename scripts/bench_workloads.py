"""What ``bench.py fs``'s workloads do to a directory, and what a daemon spent on them (from /proc)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from fusestore.digests import IO_BUFFER

ENV = str(uuid.UUID(int=1))  # the environment every workload runs in
MIB = 1 << 20
SMALL_FILE = 4096
PAGES, DENTRIES, NOTHING = "3\n", "2\n", ""  # what drop_caches writes to /proc/sys/vm/drop_caches


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work`` takes, started on a quiet disk (writeback of earlier phases would skew it)."""
    os.sync()
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@dataclass
class Run:
    """One timed run on one target: the daemon's CPU time and memory over it (None without a daemon)."""

    seconds: float
    cpu_seconds: float | None = None
    peak_rss_kib: int | None = None
    rss_anon_kib: int | None = None


def timed_run(pid: int | None, work: Callable[[], object]) -> Run:
    """``work``'s time, and what the daemon spent on it: CPU time and peak RSS, its high-water mark reset first."""
    if pid is None:
        return Run(timed(work))
    reset_peak_rss(pid)
    cpu = cpu_seconds(pid)
    seconds = timed(work)
    return Run(seconds, cpu_seconds(pid) - cpu, status_kib(pid, "VmHWM"), status_kib(pid, "RssAnon"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, *, step: float = 0.1, quiet: float = 0.01, limit: float = 120.0) -> None:
    """Wait until the daemon's CPU time stops growing (under ``quiet`` seconds in a ``step``).

    What an earlier run left it to do in the background (a compaction of
    the packs a deletion emptied, an anchor) would otherwise land in the
    next run's time and CPU, and take a core from it.
    """
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(step)
        now = cpu_seconds(pid)
        if now - before < quiet:
            return
        before = now


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """VmHWM restarts from the current RSS, so that each run reports its own peak (root, or the same user)."""
    with open(f"/proc/{pid}/clear_refs", "w") as control:
        control.write("5\n")


def drop_caches(what: str = PAGES) -> bool:
    """Cold reads need an empty page cache, the passthrough a kernel that forgets inodes: possible as root only.

    The passthrough holds a descriptor per inode the kernel knows, and its
    limit (RLIMIT_NOFILE) may be 20,000: forgetting between runs keeps the
    trees and the small files of earlier rounds from counting.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write(what)
    except OSError:
        return False
    return True


def fresh_blocks(seed: bytes, size: int) -> Iterator[bytes]:
    """``size`` bytes of content nobody wrote before, 1 MiB at a time, never all in memory.

    BLAKE3's output stream of ``seed`` and the MiB's number: about 9 GB/s
    here, so it costs every target the same little. A repeated pattern would
    be no fresh content: content-defined chunks find a repeated block again.
    """
    for number in range(-(-size // MIB)):
        yield blake3.blake3(seed + number.to_bytes(8, "big")).digest(length=min(MIB, size - number * MIB))


def write_file(path: Path, size: int, seed: bytes, block: int, *, fsync: bool = False) -> None:
    """Write ``size`` bytes of fresh content in writes of ``block`` bytes (a divisor of 1 MiB), and close."""
    with open(path, "wb", buffering=0) as out:
        for data in fresh_blocks(seed, size):
            view = memoryview(data)
            for start in range(0, len(view), block):
                out.write(view[start:start + block])
        if fsync:
            os.fsync(out.fileno())


def edit_middle(path: Path, size: int, seed: bytes) -> None:
    """Write 1 MiB of fresh bytes in the middle of a file of ``size`` bytes, opened without O_TRUNC, and close."""
    with open(path, "r+b", buffering=0) as out:
        out.seek(max(size // 2 - MIB // 2, 0))
        out.write(next(fresh_blocks(seed, MIB)))


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as src:
        while src.read(IO_BUFFER):
            pass


def small_files(directory: Path, count: int, seed: bytes) -> None:
    """``count`` files of 4 KiB, each of its own content (no dedup hit: every one is new)."""
    directory.mkdir()
    for i in range(count):
        with open(f"{directory}/f{i:05d}", "wb", buffering=0) as out:
            out.write(blake3.blake3(seed + i.to_bytes(8, "big")).digest(length=SMALL_FILE))


def stat_each(directory: Path, count: int) -> None:
    for i in range(count):
        os.lstat(f"{directory}/f{i:05d}")


def unlink_each(directory: Path, count: int) -> None:
    for i in range(count):
        os.unlink(f"{directory}/f{i:05d}")
    os.rmdir(directory)


def ls_long(directory: Path) -> None:
    run_tool("ls", "-l", str(directory))


def run_tool(*argv: str | Path) -> None:
    """A real tool, its output dropped; a failure stops the benchmark with what the tool said."""
    result = subprocess.run([str(arg) for arg in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr[-2000:]}")


def stored_bytes(mountpoint: Path) -> int:
    """fusestore's stored bytes (its live chunks, compressed), once a checkpoint (an fsync of its root) settled them."""
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return int(json.loads((mountpoint / ".stats").read_text())["stored_bytes"])


def prepare_tree(base: Path, source: Path) -> tuple[Path, Path, int]:
    """A copy of ``source`` (its site-packages left out) on the same disk, a tar of it, and its number of entries.

    Made untimed, outside the targets; the tar also leaves the tree in the page cache, as it stays after.
    """
    tree, tarball = base / "tree", base / "tree.tar"
    shutil.copytree(source, tree, symlinks=True,
                    ignore=lambda directory, names: ["site-packages"] if Path(directory) == source else [])
    run_tool("tar", "-cf", tarball, "-C", tree, ".")
    return tree, tarball, sum(len(dirs) + len(files) for _, dirs, files in os.walk(tree))


def du_megabytes(tree: Path) -> float:
    return sum(os.lstat(os.path.join(top, name)).st_size
               for top, _, files in os.walk(tree) for name in files) / 1e6
