"""SIGKILL of a real mount's daemon at random moments, and what README's "What a crash may cost" promises after it.

A writer (``crash_writer.py``, a process of its own using plain os calls)
changes a small tree inside one environment directory and logs each
operation before it starts and after it returned. The daemon is killed
after a random delay; the dead mount is cleaned up, remounted (recovery),
and the tree is compared with a model: every operation that returned is
there, the one in flight either happened or did not, and a file open for
writing at the kill holds its previous content or what its writes produced
(at least up to its last fsync, and, a process crash losing no page cache,
up to its last write that returned). Then it is unmounted cleanly and
checked offline (fsck), and the next round starts from the verified tree.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pytest

from fusestore import Store
from fusestore.cli.mounts import process_alive
from fusestore.store.fsck import find_problems
from fusestore.store.inspect import Inspection
from fusestore.store.owners import Owner

from .chunk_accounting import accounting_problems
from .helpers import ENV, live_chunk_bytes, read, stored_contents
from .mount_helpers import Mount, eventually, offline_problems

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parent.parent
EMPTY = blake3.blake3(b"").hexdigest()
KILLS = 30


# -- the model -------------------------------------------------------------------------------------


@dataclass
class Node:
    """One regular file's inode as the model knows it (hard links share the object)."""

    content: str  # BLAKE3 hex
    size: int
    mode: int
    mtime: int
    xattrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Model:
    files: dict[str, Node] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


@dataclass
class Op:
    """One operation of the writer's log: its begin line and every later line of the same id."""

    begin: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None

    def last(self, ev: str) -> dict[str, Any] | None:
        found = [e for e in self.events if e["ev"] == ev]
        return found[-1] if found else None


def parse_log(lines: list[str]) -> list[Op]:
    ops: dict[int, Op] = {}
    for line in lines:
        event = json.loads(line)
        if event["ev"] == "ready":
            continue
        assert event["ev"] != "error", f"the writer failed: {event['error']}"
        if event["ev"] == "begin":
            ops[event["id"]] = Op(event)
        elif event["ev"] == "done":
            ops[event["id"]].done = event
        else:
            ops[event["id"]].events.append(event)
    order = sorted(ops)
    assert all(ops[i].done is not None for i in order[:-1]), "only the last operation can be unfinished"
    return [ops[i] for i in order]


class Contents:
    """The bytes of every content the model or a write names, by BLAKE3 hex (in a directory outside the mount)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()

    def read(self, digest: str) -> bytes:
        return b"" if digest == EMPTY else (self.path / digest).read_bytes()

    def keep(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        if not (self.path / digest).exists():
            (self.path / digest).write_bytes(data)
        return digest

    def prune(self, model: Model) -> None:
        wanted = {node.content for node in model.files.values()}
        for saved in self.path.iterdir():
            if saved.name not in wanted:
                saved.unlink()


def write_target(model: Model, op: Op, contents: Contents) -> tuple[bytes, int]:
    """The content a write op produces when it completes, and where its own bytes begin in it."""
    data = contents.read(op.begin["data"])
    if op.begin["how"] == "append":
        old = contents.read(model.files[op.begin["path"]].content)
        return old + data, len(old)
    return data, 0


def apply(model: Model, op: Op, contents: Contents) -> None:
    """The complete effect of a finished operation on the model."""
    b = op.begin
    kind = b["op"]
    if kind == "write":
        assert op.done is not None
        target, _ = write_target(model, op, contents)
        digest = contents.keep(target)
        node = model.files.get(b["path"])
        if node is None:
            node = model.files[b["path"]] = Node(EMPTY, 0, 0o644, 0)
        node.content, node.size, node.mtime = digest, len(target), op.done["mtime"]
    elif kind == "rename":
        if b["src"] != b["dst"] and model.files[b["src"]] is not model.files.get(b["dst"]):
            model.files[b["dst"]] = model.files.pop(b["src"])
    elif kind == "link":
        model.files[b["dst"]] = model.files[b["src"]]
    elif kind == "unlink":
        del model.files[b["path"]]
    elif kind == "mkdir":
        model.dirs.add(b["path"])
    elif kind == "rmdir":
        model.dirs.discard(b["path"])
    elif kind == "chmod":
        model.files[b["path"]].mode = b["mode"]
    elif kind == "utime":
        model.files[b["path"]].mtime = b["mtime"]
    elif kind == "setxattr":
        model.files[b["path"]].xattrs[b["name"]] = b["value"]
    elif kind == "removexattr":
        del model.files[b["path"]].xattrs[b["name"]]
    else:
        raise AssertionError(f"unknown operation {kind}")


# -- the tree as it is --------------------------------------------------------------------------------


@dataclass
class Seen:
    ino: int
    nlink: int
    mode: int
    size: int
    mtime: int
    content: str
    xattrs: dict[str, str]


def scan(env: Path) -> tuple[dict[str, Seen], set[str]]:
    files: dict[str, Seen] = {}
    dirs: set[str] = set()
    for top, subdirs, names in os.walk(env):
        rel = os.path.relpath(top, env)
        for name in subdirs:
            dirs.add(name if rel == "." else f"{rel}/{name}")
        for name in names:
            path = Path(top) / name
            st = os.lstat(path)
            assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
            xattrs = {key: os.getxattr(path, key).hex() for key in os.listxattr(path) if key.startswith("user.")}
            files[name if rel == "." else f"{rel}/{name}"] = Seen(
                st.st_ino, st.st_nlink, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                blake3.blake3(path.read_bytes()).hexdigest(), xattrs)
    return files, dirs


@dataclass
class Flex:
    """What the file a write was writing at the kill may hold instead of a fixed content and mtime."""

    path: str
    target: bytes
    base: int  # the write's own bytes start here (append)
    at_least: int  # bytes its writes had produced when the last write() returned
    mtimes: dict[int, int]  # length after a write() that returned -> the mtime fstat reported then
    utime: int | None  # set by utime after the writes (returned, or in flight: then also not)
    utime_sure: bool


def differences(model: Model, files: dict[str, Seen], dirs: set[str], flex: Flex | None,
                contents: Contents) -> list[str]:
    problems: list[str] = []
    if dirs != model.dirs:
        problems.append(f"directories {sorted(dirs)}, expected {sorted(model.dirs)}")
    if set(files) != set(model.files):
        problems.append(f"files {sorted(files)}, expected {sorted(model.files)}")
        return problems
    groups: dict[int, list[str]] = {}
    for path, node in model.files.items():
        groups.setdefault(id(node), []).append(path)
    inodes = [{files[p].ino for p in paths} for paths in groups.values()]
    if any(len(s) != 1 for s in inodes) or len(set().union(*inodes) if inodes else set()) != len(inodes):
        problems.append(f"hard links: inodes {[(p, files[p].ino) for p in sorted(files)]}, "
                        f"expected the groups {sorted(groups.values())}")
    for paths in groups.values():
        node, seen = model.files[paths[0]], files[paths[0]]
        if seen.nlink != len(paths):
            problems.append(f"{paths[0]}: nlink {seen.nlink}, expected {len(paths)} ({paths})")
        if seen.mode != node.mode:
            problems.append(f"{paths[0]}: mode {seen.mode:o}, expected {node.mode:o}")
        if seen.xattrs != node.xattrs:
            problems.append(f"{paths[0]}: xattrs {seen.xattrs}, expected {node.xattrs}")
        if flex is not None and flex.path in paths:
            problems += flex_differences(flex, seen, contents)
            continue
        if seen.content != node.content or seen.size != node.size:
            problems.append(f"{paths[0]}: content {seen.content[:16]} ({seen.size} bytes), "
                            f"expected {node.content[:16]} ({node.size} bytes)")
        if seen.mtime != node.mtime:
            problems.append(f"{paths[0]}: mtime {seen.mtime}, expected {node.mtime} "
                            f"({(seen.mtime - node.mtime) / 1e6:+.3f} ms)")
    return problems


def flex_differences(flex: Flex, seen: Seen, contents: Contents) -> list[str]:
    length = seen.size
    if not flex.base <= length <= len(flex.target) or seen.content != blake3.blake3(flex.target[:length]).hexdigest():
        return [f"{flex.path}: {length} bytes (BLAKE3 {seen.content[:16]}) that are not a prefix of what was being "
                f"written ({len(flex.target)} bytes from offset {flex.base})"]
    if length < flex.at_least:
        return [f"{flex.path}: {length} bytes, but {flex.at_least} were written by write() calls that returned"]
    if flex.utime is not None and length == len(flex.target):
        allowed = {flex.utime} | (set() if flex.utime_sure else {flex.mtimes.get(length, seen.mtime)})
    elif length in flex.mtimes:
        allowed = {flex.mtimes[length]}
    else:  # part of the write in flight reached the file: its mtime was never reported
        return []
    if seen.mtime not in allowed:
        return [f"{flex.path}: mtime {seen.mtime} after recovery of {length} written bytes, expected one of "
                f"{sorted(allowed)} ({(seen.mtime - min(allowed)) / 1e6:+.3f} ms)"]
    return []


def candidates(model: Model, last: Op | None, contents: Contents) -> Iterator[tuple[str, Model, Flex | None]]:
    """The trees the kill may have left, given the verified model and the unfinished last operation."""
    if last is None or last.done is not None:
        yield "as logged", model, None
        return
    b = last.begin
    if b["op"] != "write":
        yield f"{b['op']} in flight, not done", model, None
        after = copy.deepcopy(model)
        apply(after, last, contents)
        yield f"{b['op']} in flight, done", after, None
        return
    fsynced = last.last("fsynced")
    if fsynced is None and not (b["how"] == "create" and last.last("opened") is not None):
        yield "write in flight, nothing of it kept", model, None
    target, base = write_target(model, last, contents)
    wrote = [e for e in last.events if e["ev"] == "wrote"]
    opened = last.last("opened")
    mtimes = {e["written"] + base: e["mtime"] for e in wrote}
    if opened is not None and b["how"] != "append":
        mtimes.setdefault(0, opened["mtime"])
    utime = last.last("utime")
    after = copy.deepcopy(model)
    if b["path"] not in after.files:
        after.files[b["path"]] = Node(EMPTY, 0, 0o644, 0)
    at_least = base + (wrote[-1]["written"] if wrote else 0)
    yield "write in flight, its writes kept", after, Flex(
        b["path"], target, base, at_least, mtimes, utime["mtime"] if utime else None,
        last.last("utimed") is not None)


def verify(model: Model, last: Op | None, env: Path, contents: Contents) -> tuple[Model, list[str]]:
    """The model the tree matches (the resolved one, for the next round), or the differences from each candidate."""
    files, dirs = scan(env)
    report: list[str] = []
    for name, candidate, flex in candidates(model, last, contents):
        problems = differences(candidate, files, dirs, flex, contents)
        if not problems:
            if flex is not None:
                node = candidate.files[flex.path]
                seen = files[flex.path]
                node.content, node.size, node.mtime = seen.content, seen.size, seen.mtime
                contents.keep(flex.target[:seen.size])
            return candidate, []
        report.append(f"[{name}] " + "; ".join(problems))
    return model, report


# -- the test ------------------------------------------------------------------------------------------


def kill_and_clean_up(mount: Mount, writer: subprocess.Popen[str]) -> list[str]:
    pid = int(os.getxattr(mount.path, "user.fusestore.pid"))
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not process_alive(pid)), "the daemon survived SIGKILL"
    try:
        writer.wait(10)  # it sees ENOTCONN or EIO and stops
    except subprocess.TimeoutExpired:
        writer.kill()
        writer.wait()
    assert writer.stdout is not None
    out = writer.stdout.read()
    assert writer.returncode in (0, -signal.SIGKILL), f"the writer failed: {out[-2000:]}"
    mount.umount()  # cleans up the dead mount
    assert not mount.is_mounted()
    return out.split("\n")[:-1]  # a line the kill cut has no newline


@pytest.mark.timeout(300)
def test_sigkill_of_the_daemon_at_random_moments_keeps_every_promise(mount: Mount, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    env = mount.path / ENV
    env.mkdir()
    contents = Contents(tmp_path / "contents")
    model = Model()
    violations: list[str] = []
    unrecovered: list[str] = []
    ops = kills = 0
    started = time.monotonic()
    while kills < KILLS:
        seed = str(rng.randrange(1 << 30))
        writer = subprocess.Popen([sys.executable, str(WRITER), str(env), str(contents.path), seed],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == '{"ev": "ready"}\n'
            time.sleep(rng.uniform(0.05, 1.5))
            lines = kill_and_clean_up(mount, writer)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        kills += 1
        log = parse_log(lines)
        ops += len(log)
        unrecovered += offline_problems(mount.store)  # before recovery: what the crash left, for the record
        mount.mount()  # recovery
        for op in log[:-1]:
            apply(model, op, contents)
        if log and log[-1].done is not None:
            apply(model, log[-1], contents)
        model, report = verify(model, log[-1] if log else None, env, contents)
        if report:
            last = json.dumps(log[-1].begin) if log else "nothing"
            violations.append(f"kill {kills} (last operation {last}, events {log[-1].events if log else []}):\n  "
                              + "\n  ".join(report))
            model = resolve_from_tree(env, contents)
        mount.umount()
        assert offline_problems(mount.store) == [], f"fsck after the recovery of kill {kills}"
        mount.mount()
        contents.prune(model)
    elapsed = time.monotonic() - started
    print(f"{kills} kills, {ops} operations in {elapsed:.1f} s; before recovery fsck saw: "
          f"{sorted({p.split(':')[0] for p in unrecovered})}")
    assert not violations, "\n".join(violations)


def resolve_from_tree(env: Path, contents: Contents) -> Model:
    """After a violation (reported at the end): the tree as it is becomes the model, so later rounds still check."""
    files, dirs = scan(env)
    model = Model(dirs=dirs)
    by_ino: dict[int, Node] = {}
    for path, seen in files.items():
        if seen.ino not in by_ino:
            data = (env / path).read_bytes()
            contents.keep(data)
            by_ino[seen.ino] = Node(seen.content, seen.size, seen.mode, seen.mtime, dict(seen.xattrs))
        model.files[path] = by_ino[seen.ino]
    return model


# -- a kill between a batch's transaction and the commit of a large file ---------------------------------------------

BIG = 20 << 20

CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from fusestore import Store
    import blake3
    from fusestore.pool import FailingPackStore, LocalPackStore
    from fusestore.store import gathering
    from fusestore.store.owners import Owner
    gathering.BATCH_BYTES = 4 << 20  # a 20 MiB file in five batches
    store_path, how, path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    packs = FailingPackStore(LocalPackStore(store_path + "/packs"))
    store = Store.open(store_path, packs=packs)
    data = os.urandom(BIG)
    digest = blake3.blake3(data).digest()
    with open(store_path + "/../new-content", "wb") as saved:
        saved.write(data)
    def cue():
        with store.catalog.read() as tx:
            if next(tx.extents(digest), None) is None:
                return  # the first batch: not recorded yet
        if how == "exit":
            os._exit(0)
        open(store_path + "/../recorded", "w").close()
        time.sleep(60)  # the parent kills it here
    packs.on("append", cue, always=True)
    env = store.namespace.lookup(1, ENV.encode())
    try:
        ino = store.namespace.lookup(env.ino, path.encode()).ino
    except Exception:
        node, staged = store.namespace.create(env.ino, path.encode(), 0o644, Owner(0, 0))  # open(O_CREAT)
    else:
        staged = store.writes.stage(ino, 0)  # open(O_TRUNC), then the first write
    staged.write(data, 0)
    digest, size = staged.hash()
    store.writes.commit(staged, digest, size)  # close(): a batch is recorded, then the cue
    os._exit(3)
""").replace("BIG", str(BIG)).replace("ENV", repr(ENV))


@pytest.mark.parametrize("how", ["exit", "sigkill"])
@pytest.mark.parametrize("existing", [False, True], ids=["new file", "existing file"])
def test_a_kill_between_a_batch_and_the_commit_of_a_large_file(
    tmp_path: Path, how: str, existing: bool
) -> None:
    """The commit path of a file written through the mount (create or stage, write, commit), 20 MiB.

    The kill comes once a batch's transaction recorded extents (and chunk
    references) of the still pending content. The file was open for
    writing: it may hold its previous content or what was written; either
    way recovery releases the partial extents, so no chunk nor pack stays
    live for what nothing references, and fsck finds nothing.
    """
    store_path = tmp_path / "store"
    old = os.urandom(3 << 20)
    with Store.open(store_path) as store:
        store.namespace.mkdir(1, ENV.encode(), 0o755, Owner(0, 0))
        if existing:
            store.put_for_environment(ENV, "big", io.BytesIO(old), len(old))
    child = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(store_path), how, "big", "0"], cwd=ROOT)
    try:
        if how == "sigkill":
            assert eventually(lambda: (tmp_path / "recorded").exists() or child.poll() is not None, timeout=60)
            child.kill()
        assert child.wait(60) in (0, -signal.SIGKILL), "the child did not stop at the cue"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    new = (tmp_path / "new-content").read_bytes()
    with Inspection.open(store_path) as inspection:
        partial = inspection.extents_of(blake3.blake3(new).digest())
        assert partial and partial[-1].end < len(new), "the kill came between a batch and the commit"
    with Store.open(store_path) as store:
        content = read(store, "big")
        assert content in ({old, new} if existing else {b"", new}), \
            f"{len(content)} bytes that are neither the previous content nor what was written"
        assert find_problems(store) == []
        kept = sorted({blake3.blake3(content).digest()} - {blake3.blake3(b"").digest()})
        assert stored_contents(store) == kept, "extents of a content nothing references"
        assert accounting_problems(store, settled=False) == []
        with store.catalog.read() as tx:
            assert sum(pack.live for pack in tx.packs()) == live_chunk_bytes(store)
    with Store.open(store_path) as store:
        assert accounting_problems(store) == []
    assert offline_problems(store_path) == []
