#!/usr/bin/env python3
"""fusestore benchmarks: figures as ratios, measured in the same run.

    scripts/bench.py store [--dir DIR] [--size-mib N] [--files N]
    scripts/bench.py chunking [--dir DIR] [--size-mib N] [--rounds N]
    scripts/bench.py fs    [--dir DIR] [--size-mib N] [--files N] [--rounds N] [--scale N] [--json [FILE]]

``store`` measures the store layer alone against plain files; ``chunking``
what each step of storing fresh content costs (``bench_chunking``). ``fs`` mounts
a fresh store and measures three targets on the same disk, interleaved
round by round: a plain directory, the bare pyfuse3 passthrough
(``scripts/passthrough.py``, the ceiling of any Python FUSE filesystem
here) and fusestore. These machines are noisy: a ratio within one run
means more than an absolute figure.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_chunking import bench_chunking  # noqa: E402
from bench_workloads import (  # noqa: E402
    DENTRIES,
    ENV,
    MIB,
    NOTHING,
    PAGES,
    SMALL_FILE,
    Run,
    cpu_seconds,
    drop_caches,
    du_megabytes,
    edit_middle,
    ls_long,
    prepare_tree,
    read_file,
    reset_peak_rss,
    run_tool,
    small_files,
    stat_each,
    status_kib,
    stored_bytes,
    timed,
    timed_run,
    unlink_each,
    wait_until_idle,
    write_file,
)

from fusestore import Store  # noqa: E402
from fusestore.digests import IO_BUFFER  # noqa: E402

FUSESTORE = [sys.executable, "-m", "fusestore"]


def make_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(IO_BUFFER, left)
            out.write(os.urandom(n))
            left -= n


def plain_copy(src: Path, dst: Path) -> None:
    """The baseline: stream the bytes into a plain file and make them durable, as a put does."""
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, IO_BUFFER)
        writer.flush()
        os.fsync(writer.fileno())


def durable_put(store: Store, path: str, reader: io.BufferedReader, size: int) -> None:
    """A put and a checkpoint: the same promise as ``plain_copy``'s fsync."""
    store.put_for_environment(ENV, path, reader, size)
    store.sync()


def bench_store(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusestore-bench-", dir=args.dir))
    try:
        plain = base / "plain"
        plain.mkdir()
        with Store.open(base / "store") as store:
            n = args.files
            blobs = [os.urandom(4096) for _ in range(n)]

            # Both sides end durable, with one sync at the end (the store's is its checkpoint).
            def unique_puts() -> None:
                for i, data in enumerate(blobs):
                    store.put_for_environment(ENV, f"small/{i}", _reader(data), len(data))
                store.sync()

            def duplicate_puts() -> None:
                for i in range(n):
                    store.put_for_environment(ENV, f"dup/{i}", _reader(blobs[0]), 4096)
                store.sync()

            def plain_small() -> None:
                for i, data in enumerate(blobs):
                    with open(plain / f"s{i}", "wb") as f:
                        f.write(data)
                os.sync()

            t_unique = timed(unique_puts)
            t_dup = timed(duplicate_puts)
            t_plain_small = timed(plain_small)
            print(f"small unique puts (4 KiB): {n / t_unique:9.0f} puts/s   "
                  f"plain files, then sync: {n / t_plain_small:9.0f}/s   ratio {t_plain_small / t_unique:.2f}x")
            print(f"small duplicate puts:      {n / t_dup:9.0f} puts/s   ratio {t_plain_small / t_dup:.2f}x")

            size = args.size_mib << 20
            src = base / "source.bin"
            make_random_file(src, size)
            # Interleaved rounds, best of each: the disk's writeback makes single runs noisy.
            t_plain = t_put = t_dup_big = float("inf")
            for _ in range(2):
                t_plain = min(t_plain, timed(lambda: plain_copy(src, plain / "copy.bin")))
                (plain / "copy.bin").unlink()
                with open(src, "rb") as reader:
                    t_put = min(t_put, timed(lambda: durable_put(store, "big.bin", reader, size)))
                with open(src, "rb") as reader:
                    t_dup_big = min(t_dup_big, timed(lambda: durable_put(store, "again.bin", reader, size)))
                store.remove_for_environment(ENV, "big.bin")
                store.remove_for_environment(ENV, "again.bin")
            mib = size / (1 << 20)
            print(f"{args.size_mib} MiB unique put:       {mib / t_put:9.0f} MB/s    "
                  f"plain copy with fsync: {mib / t_plain:9.0f} MB/s   ratio {t_plain / t_put:.2f}x")
            print(f"{args.size_mib} MiB duplicate put:    {mib / t_dup_big:9.0f} MB/s    "
                  f"ratio {t_plain / t_dup_big:.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- bench.py fs: plain directory, bare passthrough and fusestore, interleaved --------------------------

WRITE_BLOCKS = (MIB, 128 << 10, 8 << 10)  # cp and dd; st_blksize; head, Python's default buffering
STAT_WAIT = 1.1  # seconds between the creates and the stats: "after more than 1 s"
SCALE_DIRECTORY = 1000  # files per directory in the scale run
SCALE_WINDOW = 10000  # the first and the last this many creates of the scale run are timed


@dataclass
class Target:
    """Where a workload runs, and the daemon serving it (none for the plain directory)."""

    name: str
    directory: Path
    pid: int | None = None


@dataclass
class Result:
    """A workload's runs on every target. ``unit`` "s" is a time (lower is better), any other a rate of ``amount``."""

    workload: str
    unit: str
    amount: float
    runs: dict[str, list[Run]]

    def best_seconds(self, target: str) -> float:
        return min(run.seconds for run in self.runs[target])

    def figure(self, seconds: float) -> float:
        return seconds if self.unit == "s" else self.amount / seconds

    def best(self, target: str) -> float:
        return self.figure(self.best_seconds(target))

    def median(self, target: str) -> float:
        return self.figure(statistics.median(run.seconds for run in self.runs[target]))

    def speed_ratio(self, faster: str, than: str) -> float:
        """How many times faster ``faster`` is than ``than``, best round against best round."""
        return self.best_seconds(than) / self.best_seconds(faster)

    def daemon(self, target: str) -> dict[str, float | None]:
        """The daemon's peak RSS and RssAnon (MiB, the largest of the rounds) and median CPU seconds."""
        runs = self.runs[target]
        cpu = [run.cpu_seconds for run in runs if run.cpu_seconds is not None]
        peaks = [run.peak_rss_kib for run in runs if run.peak_rss_kib is not None]
        anon = [run.rss_anon_kib for run in runs if run.rss_anon_kib is not None]
        return {"cpu_seconds": statistics.median(cpu) if cpu else None,
                "peak_rss_mib": max(peaks) / 1024 if peaks else None,
                "rss_anon_mib": max(anon) / 1024 if anon else None}

    def as_json(self) -> dict[str, object]:
        names = list(self.runs)
        return {
            "workload": self.workload, "unit": self.unit, "amount": self.amount,
            "targets": {name: {"best": self.best(name), "median": self.median(name),
                               "runs": [asdict(run) for run in self.runs[name]], **self.daemon(name)}
                        for name in names},
            "ratios": {"fusestore/plain": self.speed_ratio("fusestore", "plain"),
                       "passthrough/plain": self.speed_ratio("passthrough", "plain"),
                       "fusestore/passthrough": self.speed_ratio("fusestore", "passthrough")},
        }


@dataclass
class Bench:
    """One run of ``bench.py fs``: its targets, its settings, and what it has measured so far."""

    base: Path
    mountpoint: Path
    targets: list[Target]
    rounds: int
    size: int
    files: int
    cold: bool
    tree: Path
    run_id: bytes = field(default_factory=lambda: os.urandom(16))
    results: list[Result] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def fusestore(self) -> Target:
        return self.targets[-1]

    def seed(self, *parts: object) -> bytes:
        """A seed no other timed write of this run or any other uses: fresh content for a dedup store."""
        return self.run_id + "/".join(map(str, parts)).encode()

    def measure(self, workload: str, unit: str, amount: float, work: Callable[[Target, int], object], *,
                drop: str = DENTRIES, before: Callable[[Target, int], object] | None = None,
                after: Callable[[Target, int], object] | None = None) -> Result:
        """Run ``work`` on every target, ``rounds`` times, the order rotating each round.

        ``before`` and ``after`` (untimed) get the same target and round number.
        Before each run, ``drop`` says what the kernel forgets: PAGES (a cold
        run), DENTRIES (by default: the inodes and dentries only) or NOTHING
        (a warm read: an inode forgotten takes its cached pages along). Then
        the daemon, if any, is let finish what earlier runs left it to do.
        """
        runs: dict[str, list[Run]] = {target.name: [] for target in self.targets}
        for round_number in range(self.rounds):
            turn = round_number % len(self.targets)
            for target in self.targets[turn:] + self.targets[:turn]:
                if before is not None:
                    before(target, round_number)
                if drop != NOTHING:
                    drop_caches(drop)
                if target.pid is not None:
                    wait_until_idle(target.pid)
                runs[target.name].append(timed_run(target.pid, functools.partial(work, target, round_number)))
                if after is not None:
                    after(target, round_number)
        result = Result(workload, unit, amount, runs)
        self.results.append(result)
        print(f"  {workload}: " + ", ".join(f"{name} {format_figure(result.best(name))}" for name in runs)
              + f" {unit}", file=sys.stderr, flush=True)
        return result


# -- the workloads ---------------------------------------------------------------------------------------


def sequential_writes(bench: Bench) -> Result:
    """Fresh content in 1 MiB, 128 KiB and 8 KiB writes, then 1 MiB with fsync; returns the 1 MiB one.

    Round 0's 1 MiB file stays, as ``big``, for the dedup hit and the reads.
    """
    megabytes = bench.size / MIB
    fresh: list[Result] = []
    for block in WRITE_BLOCKS:
        def write(target: Target, r: int, block: int = block) -> None:
            write_file(target.directory / f"fresh-{block}-{r}", bench.size,
                       bench.seed("fresh", block, target.name, r), block)

        def keep_big(target: Target, r: int, block: int = block) -> None:
            if (block, r) != (MIB, 0):
                (target.directory / f"fresh-{block}-{r}").unlink()

        fresh.append(bench.measure(f"write {size_label(bench.size)} fresh, {size_label(block)} blocks", "MB/s",
                                   megabytes, write, drop=PAGES, after=keep_big))
    bench.measure(
        f"write {size_label(bench.size)} fresh, 1 MiB blocks + fsync", "MB/s", megabytes,
        lambda target, r: write_file(target.directory / f"fsync-{r}", bench.size,
                                     bench.seed("fsync", target.name, r), MIB, fsync=True),
        drop=PAGES, after=lambda target, r: (target.directory / f"fsync-{r}").unlink())
    return fresh[0]


def big(target: Target) -> Path:
    return target.directory / f"fresh-{MIB}-0"


def dedup_hit(bench: Bench, fresh: Result) -> None:
    """``big``'s content again under other names: fusestore's stored bytes must not grow."""
    before: list[int] = []
    grown: list[int] = []

    def settle(target: Target, r: int) -> None:
        if target is bench.fusestore:
            before.append(stored_bytes(bench.mountpoint))

    def count_and_remove(target: Target, r: int) -> None:
        if target is bench.fusestore:
            grown.append(stored_bytes(bench.mountpoint) - before.pop())
        if r > 0:  # again-0 holds the original chunks while ``reads_and_edit`` edits ``big``
            (target.directory / f"again-{r}").unlink()

    again = bench.measure(
        f"write {size_label(bench.size)} again, new name (dedup hit)", "MB/s", bench.size / MIB,
        lambda target, r: write_file(target.directory / f"again-{r}", bench.size,
                                     bench.seed("fresh", MIB, target.name, 0), MIB),
        drop=PAGES, before=settle, after=count_and_remove)
    speed = fresh.best_seconds("fusestore") / again.best_seconds("fusestore")
    bench.notes["dedup_hit"] = {"stored_bytes_growth": grown, "speed_against_fresh": speed}


def reads_and_edit(bench: Bench) -> None:
    """Read ``big`` cold and warm, then edit 1 MiB in its middle; what the first edit adds to fusestore's chunks.

    again-0 still holds the original chunks, so what the edit replaced stays and the growth is what it stored anew.
    """
    megabytes = bench.size / MIB
    bench.measure(f"read {size_label(bench.size)} " + ("cold" if bench.cold else "(cold impossible: not root)"),
                  "MB/s", megabytes, lambda target, r: read_file(big(target)), drop=PAGES)
    bench.measure(f"read {size_label(bench.size)} warm", "MB/s", megabytes, lambda target, r: read_file(big(target)),
                  drop=NOTHING, before=lambda target, r: read_file(big(target)))
    stored: list[int] = []

    def first_edit(target: Target, r: int) -> None:
        if target is bench.fusestore and r == 0:
            stored.append(stored_bytes(bench.mountpoint))

    bench.measure("edit 1 MiB in its middle, to close", "s", 0,
                  lambda target, r: edit_middle(big(target), bench.size, bench.seed("edit", target.name, r)),
                  drop=PAGES, before=first_edit, after=first_edit)
    bench.notes["edit_stored_mib"] = (stored[1] - stored[0]) / MIB
    for target in bench.targets:
        big(target).unlink()
        (target.directory / "again-0").unlink()


def small_file_workloads(bench: Bench) -> None:
    """Create, list, stat and unlink ``files`` files of 4 KiB; round r works in small{r} throughout."""
    n = bench.files

    def small(target: Target, r: int) -> Path:
        return target.directory / f"small{r}"

    bench.measure(f"create+close {n} files of 4 KiB", "files/s", n,
                  lambda target, r: small_files(small(target, r), n, bench.seed("small", target.name, r)), drop=PAGES)
    bench.measure(f"ls -l of the {n}", "s", 0, lambda target, r: ls_long(small(target, r)))
    bench.measure("stat of each, > 1 s after", "files/s", n, lambda target, r: stat_each(small(target, r), n),
                  before=lambda target, r: time.sleep(STAT_WAIT))
    bench.measure(f"unlink the {n}", "files/s", n, lambda target, r: unlink_each(small(target, r), n))


def tool_workloads(bench: Bench) -> None:
    """cp -a, rsync -a of the unchanged tree again, tar -xf and rm -rf of a real tree (the standard library)."""
    tree, tarball, entries = prepare_tree(bench.base, bench.tree)
    label = f"{entries} entries, {du_megabytes(tree):.0f} MB"
    bench.notes["tree"] = label
    bench.measure(f"cp -a of {bench.tree.name} ({label})", "s", 0,
                  lambda target, r: run_tool("cp", "-a", tree, target.directory / f"cp{r}"))
    bench.measure("rsync -a of it again, unchanged", "s", 0,
                  lambda target, r: run_tool("rsync", "-a", f"{tree}/", f"{target.directory}/cp{r}/"))
    bench.measure("tar -xf of it", "s", 0,
                  lambda target, r: run_tool("tar", "-xf", tarball, "-C", target.directory / f"tar{r}"),
                  before=lambda target, r: (target.directory / f"tar{r}").mkdir(),
                  after=lambda target, r: run_tool("rm", "-rf", target.directory / f"tar{r}"))
    bench.measure("rm -rf of it", "s", 0, lambda target, r: run_tool("rm", "-rf", target.directory / f"cp{r}"))


def scale_run(bench: Bench, count: int, mount: Callable[[], float]) -> None:
    """``count`` files of 4 KiB in one environment, over directories, on fusestore alone.

    Are the last ``SCALE_WINDOW`` creates as fast as the first, and how long does mounting the store take then?
    """
    window = min(SCALE_WINDOW, count // 2)
    root = bench.fusestore.directory / "scale"
    root.mkdir()

    def create(first: int, last: int) -> None:
        for i in range(first, last):
            directory, name = divmod(i, SCALE_DIRECTORY)
            if name == 0:
                os.mkdir(f"{root}/d{directory:04d}")
            with open(f"{root}/d{directory:04d}/f{name:03d}", "wb", buffering=0) as out:
                out.write(blake3.blake3(bench.seed("scale", i)).digest(length=SMALL_FILE))

    pid = bench.fusestore.pid
    assert pid is not None
    reset_peak_rss(pid)
    cpu = cpu_seconds(pid)
    first = timed(lambda: create(0, window))
    create(window, count - window)
    last = timed(lambda: create(count - window, count))
    peak, cpu = status_kib(pid, "VmHWM") / 1024, cpu_seconds(pid) - cpu
    bench.notes["scale"] = {"files": count, "window": window, "first_rate": window / first,
                            "last_rate": window / last, "last_against_first": first / last,
                            "mount_seconds": mount(), "peak_rss_mib": peak, "cpu_seconds": cpu}


# -- the report ------------------------------------------------------------------------------------------


def size_label(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def format_figure(value: float | None) -> str:
    """Three significant digits or so: the rounds differ by more."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def print_table(bench: Bench) -> None:
    """One row per workload: best/median per target, the speed ratios, and the daemons' memory and CPU."""
    names = [target.name for target in bench.targets]
    print(f"{bench.rounds} rounds per target, interleaved in one run (who goes first rotates); "
          f"{'page cache dropped before cold runs' if bench.cold else 'not root: no cold runs'}.")
    print("best = the best round, med = the median round, in the row's unit (s: lower is better). "
          "Ratios are speeds, best round against best round")
    print("(fs/pt > 1: fusestore is faster than the passthrough; fs = fusestore, pt = passthrough).")
    print("RSS: the daemon's peak (VmHWM) / RssAnon after the run, MiB, largest of the rounds; "
          "CPU: its utime+stime over a run, s, median of the rounds.")
    head = (f"{'workload':44s} {'unit':>7s} " + " ".join(f"{name + ' best/med':>21s}" for name in names)
            + f" {'fs/plain':>8s} {'pt/plain':>8s} {'fs/pt':>6s} {'fs RSS':>9s} {'pt RSS':>9s}"
            f" {'fs CPU':>6s} {'pt CPU':>6s}")
    print(head)
    print("-" * len(head))
    for result in bench.results:
        figures = " ".join(f"{format_figure(result.best(name)) + ' / ' + format_figure(result.median(name)):>21s}"
                           for name in names)
        ours, theirs = result.daemon("fusestore"), result.daemon("passthrough")
        print(f"{result.workload:44s} {result.unit:>7s} {figures}"
              f" {result.speed_ratio('fusestore', 'plain'):8.2f} {result.speed_ratio('passthrough', 'plain'):8.2f}"
              f" {result.speed_ratio('fusestore', 'passthrough'):6.2f}"
              f" {memory(ours):>9s} {memory(theirs):>9s}"
              f" {format_figure(ours['cpu_seconds']):>6s} {format_figure(theirs['cpu_seconds']):>6s}")
    print_notes(bench)


def memory(daemon: dict[str, float | None]) -> str:
    return f"{format_figure(daemon['peak_rss_mib'])}/{format_figure(daemon['rss_anon_mib'])}"


def print_notes(bench: Bench) -> None:
    """What the table cannot say: dedup, the edit's stored bytes, mount times, the scale run."""
    dedup = bench.notes["dedup_hit"]
    assert isinstance(dedup, dict)
    print(f"dedup hit: fusestore's stored bytes grew by {dedup['stored_bytes_growth']} bytes over the rounds; "
          f"it wrote the same content again at {dedup['speed_against_fresh']:.2f}x its speed on fresh content")
    print(f"edit 1 MiB in the middle: fusestore stored {bench.notes['edit_stored_mib']:.2f} MiB anew for the first")
    print(f"mounting the fresh store took {bench.notes['mount_seconds']:.2f} s (fusestore mount, until it answers)")
    scale = bench.notes.get("scale")
    if isinstance(scale, dict):
        print(f"scale, fusestore, {scale['files']} files of 4 KiB: the first {scale['window']} at "
              f"{scale['first_rate']:.0f} files/s, the last at {scale['last_rate']:.0f} files/s "
              f"({scale['last_against_first']:.2f}x); mounting the store then took {scale['mount_seconds']:.2f} s; "
              f"peak RSS {scale['peak_rss_mib']:.0f} MiB, CPU {scale['cpu_seconds']:.1f} s")


def report_json(bench: Bench, destination: str) -> None:
    """The figures for machines: on stdout (its last line) for "-", else in that file."""
    text = json.dumps({"rounds": bench.rounds, "size_bytes": bench.size, "files": bench.files, "cold": bench.cold,
                       "workloads": [result.as_json() for result in bench.results], **bench.notes})
    if destination == "-":
        print(text)
    else:
        Path(destination).write_text(text + "\n")


# -- the three targets -------------------------------------------------------------------------------------


class Passthrough:
    """scripts/passthrough.py mounted over a directory: pyfuse3's own ceiling, measured in the same run."""

    def __init__(self, base: Path) -> None:
        self.source, self.mountpoint = base / "passthrough-source", base / "passthrough"
        self.source.mkdir()
        self.mountpoint.mkdir()
        self.process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "passthrough.py"),
                                         str(self.source), str(self.mountpoint)])
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("the passthrough did not mount")
            time.sleep(0.05)

    def close(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Fusestore:
    """``fusestore mount`` of a fresh store; ``mount`` says how long it took to answer."""

    def __init__(self, base: Path) -> None:
        self.store, self.mountpoint, self.log = base / "store", base / "mnt", base / "fusestore.log"
        self.mountpoint.mkdir()

    def mount(self) -> float:
        start = time.perf_counter()
        subprocess.run([*FUSESTORE, "mount", str(self.store), str(self.mountpoint), "--log", str(self.log)],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    @property
    def pid(self) -> int:
        return int(os.getxattr(self.mountpoint, "user.fusestore.pid"))

    def umount(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run([*FUSESTORE, "umount", str(self.mountpoint)], check=False)


def bench_fs(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusestore-bench-", dir=args.dir))
    fusestore = Fusestore(base)
    passthrough: Passthrough | None = None
    try:
        mount_seconds = fusestore.mount()
        (fusestore.mountpoint / ENV).mkdir()
        passthrough = Passthrough(base)
        (base / "plain").mkdir()
        bench = Bench(base, fusestore.mountpoint, [
            Target("plain", base / "plain"),
            Target("passthrough", passthrough.mountpoint, passthrough.process.pid),
            Target("fusestore", fusestore.mountpoint / ENV, fusestore.pid),
        ], args.rounds, args.size_mib * MIB, args.files, cold=drop_caches(), tree=Path(args.tree).resolve())
        bench.notes["mount_seconds"] = mount_seconds
        dedup_hit(bench, sequential_writes(bench))
        reads_and_edit(bench)
        small_file_workloads(bench)
        tool_workloads(bench)
        if args.scale:
            passthrough.close()
            passthrough = None

            def remount() -> float:
                fusestore.umount()
                return fusestore.mount()

            scale_run(bench, args.scale, remount)
        print_table(bench)
        if args.json is not None:
            report_json(bench, args.json)
    finally:
        if passthrough is not None:
            passthrough.close()
        fusestore.umount()
        shutil.rmtree(base, ignore_errors=True)


def _reader(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    store = sub.add_parser("store", help="the store layer alone, no FUSE")
    store.add_argument("--dir", default=str(REPO / ".fusestore"), help="where to work (same disk as the store)")
    store.add_argument("--size-mib", type=int, default=1024, help="size of the large put (default 1024)")
    store.add_argument("--files", type=int, default=2000, help="number of small files (default 2000)")
    chunking = sub.add_parser("chunking", help="what storing fresh content costs per GiB, step by step, no FUSE")
    chunking.add_argument("--dir", default=str(REPO / ".fusestore"), help="where the store goes")
    chunking.add_argument("--size-mib", type=int, default=256, help="content held in memory (default 256)")
    chunking.add_argument("--rounds", type=int, default=3, help="runs of each step; the best counts (default 3)")
    fs = sub.add_parser("fs", help="fusestore against a plain directory and the bare passthrough")
    fs.add_argument("--dir", default=str(REPO / ".fusestore"), help="where to work (same disk as the store)")
    fs.add_argument("--size-mib", type=int, default=1024, help="size of the large file (default 1024)")
    fs.add_argument("--files", type=int, default=10000, help="number of small files (default 10000)")
    fs.add_argument("--rounds", type=int, default=3, help="runs per target and workload (default 3)")
    fs.add_argument("--tree", default=sysconfig.get_paths()["stdlib"],
                    help="the tree for cp, rsync, tar and rm (default: this Python's standard library)")
    fs.add_argument("--scale", type=int, default=0, metavar="N",
                    help="also create N files on fusestore alone, then remount it (slow; 200000 is the issue's)")
    fs.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="the figures as JSON too: in FILE, or as the last line of the output")
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    {"store": bench_store, "chunking": bench_chunking, "fs": bench_fs}[args.what](args)


if __name__ == "__main__":
    main()
