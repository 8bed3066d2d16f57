"""The writer of tests/test_crash_mount.py: random operations on a mount with plain os calls, until it dies.

Run as ``python crash_writer.py ENV_DIR CONTENTS_DIR SEED``. It scans the
tree it finds under ENV_DIR (the state a previous round left), prints
``ready``, then performs random operations on a small set of paths forever.
Each operation is one JSON line ``{"ev": "begin", ...}`` printed (and
flushed) before its first system call and one ``{"ev": "done", ...}`` after
its last returned; a write also reports its steps (``wrote``, ``fsynced``,
``utimed``) as they return. The bytes of every write are saved first as
CONTENTS_DIR/<BLAKE3 hex>, so that the test can compute any prefix. When
the mount goes away (ENOTCONN, EIO, ECONNABORTED) the writer exits 0; any
other error is printed and exits 1: it only attempts operations that are
valid in the tree it knows.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
from pathlib import Path

import blake3

FILES = ["f0", "f1", "f2", "f3", "f4", "sub/g0", "sub/g1", "sub2/h0"]
DIRS = ["sub", "sub2"]
MODES = [0o600, 0o640, 0o644, 0o755]
XATTRS = ["user.k0", "user.k1", "user.k2"]
CHUNK = 1 << 20
LARGE = (10 << 20, 20 << 20)
GONE = {errno.ENOTCONN, errno.EIO, errno.ECONNABORTED}


class Writer:
    def __init__(self, env: Path, contents: Path, rng: random.Random) -> None:
        self.env, self.contents, self.rng = env, contents, rng
        self.next_id = 0
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        for name in DIRS:
            if (env / name).is_dir():
                self.dirs.add(name)
        for name in FILES:
            if os.path.lexists(env / name):
                self.files.add(name)

    def say(self, **event: object) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def p(self, rel: str) -> Path:
        return self.env / rel

    def possible(self, rel: str) -> bool:
        """Whether a file may exist at ``rel``: its directory does."""
        return "/" not in rel or rel.split("/")[0] in self.dirs

    def step(self) -> None:
        self.next_id += 1
        op_id = self.next_id
        rng = self.rng
        free = [f for f in FILES if f not in self.files and self.possible(f)]
        existing = sorted(self.files)
        choice = rng.random()
        if choice < 0.35 and (free or existing):
            self.write(op_id, rng.choice(free + existing))
        elif choice < 0.45 and existing:
            src = rng.choice(existing)
            dst = rng.choice([f for f in FILES if self.possible(f)])
            # renaming a name onto another link of its inode does nothing (rename(2))
            same = dst in self.files and os.stat(self.p(src)).st_ino == os.stat(self.p(dst)).st_ino
            self.say(ev="begin", id=op_id, op="rename", src=src, dst=dst)
            os.rename(self.p(src), self.p(dst))
            if not same:
                self.files.discard(src)
            self.files.add(dst)
            self.say(ev="done", id=op_id)
        elif choice < 0.52 and existing and free:
            src, dst = rng.choice(existing), rng.choice(free)
            self.say(ev="begin", id=op_id, op="link", src=src, dst=dst)
            os.link(self.p(src), self.p(dst))
            self.files.add(dst)
            self.say(ev="done", id=op_id)
        elif choice < 0.60 and existing:
            path = rng.choice(existing)
            self.say(ev="begin", id=op_id, op="unlink", path=path)
            os.unlink(self.p(path))
            self.files.discard(path)
            self.say(ev="done", id=op_id)
        elif choice < 0.67:
            name = rng.choice(DIRS)
            if name not in self.dirs:
                self.say(ev="begin", id=op_id, op="mkdir", path=name)
                os.mkdir(self.p(name), 0o755)
                self.dirs.add(name)
                self.say(ev="done", id=op_id)
            elif not any(f.startswith(name + "/") for f in self.files):
                self.say(ev="begin", id=op_id, op="rmdir", path=name)
                os.rmdir(self.p(name))
                self.dirs.discard(name)
                self.say(ev="done", id=op_id)
        elif choice < 0.77 and existing:
            path, mode = rng.choice(existing), rng.choice(MODES)
            self.say(ev="begin", id=op_id, op="chmod", path=path, mode=mode)
            os.chmod(self.p(path), mode)
            self.say(ev="done", id=op_id)
        elif choice < 0.87 and existing:
            path = rng.choice(existing)
            mtime = rng.randrange(10**18, 17 * 10**17 + 10**18)  # some moment of 2001-2055, to the ns
            self.say(ev="begin", id=op_id, op="utime", path=path, mtime=mtime)
            os.utime(self.p(path), ns=(mtime, mtime))
            self.say(ev="done", id=op_id)
        elif existing:
            path, name = rng.choice(existing), rng.choice(XATTRS)
            if rng.random() < 0.25:
                try:
                    os.getxattr(self.p(path), name)
                except OSError as exc:
                    if exc.errno != errno.ENODATA:
                        raise
                    return
                self.say(ev="begin", id=op_id, op="removexattr", path=path, name=name)
                os.removexattr(self.p(path), name)
            else:
                value = os.urandom(rng.randrange(0, 100)).hex()
                self.say(ev="begin", id=op_id, op="setxattr", path=path, name=name, value=value)
                os.setxattr(self.p(path), name, bytes.fromhex(value))
            self.say(ev="done", id=op_id)

    def write(self, op_id: int, path: str) -> None:
        rng = self.rng
        exists = path in self.files
        how = rng.choice(["trunc", "append", "trunc"]) if exists else "create"
        if how == "append" and os.stat(self.p(path)).st_size > (8 << 20):
            how = "trunc"
        size = rng.randrange(*LARGE) if rng.random() < 0.15 else rng.choice([0, 1, rng.randrange(1, 300_000)])
        data = os.urandom(size)
        digest = blake3.blake3(data).hexdigest()
        saved = self.contents / digest
        if not saved.exists():
            saved.write_bytes(data)
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        fsync_after = {i for i in range(len(chunks)) if rng.random() < 0.15}
        utime = rng.randrange(10**18, 17 * 10**17 + 10**18) if rng.random() < 0.2 else None
        self.say(ev="begin", id=op_id, op="write", path=path, how=how, data=digest, size=size)
        flags = {"create": os.O_CREAT | os.O_EXCL, "trunc": os.O_TRUNC, "append": os.O_APPEND}[how]
        fd = os.open(self.p(path), os.O_WRONLY | flags, 0o644)
        self.files.add(path)
        try:
            self.say(ev="opened", id=op_id, mtime=os.fstat(fd).st_mtime_ns)
            written = 0
            for i, chunk in enumerate(chunks):
                while chunk:  # a short write of a FUSE file is possible, if unlikely
                    n = os.write(fd, chunk)
                    written += n
                    chunk = chunk[n:]
                self.say(ev="wrote", id=op_id, written=written, mtime=os.fstat(fd).st_mtime_ns)
                if i in fsync_after:
                    os.fsync(fd)
                    self.say(ev="fsynced", id=op_id, written=written)
            if utime is not None:
                self.say(ev="utime", id=op_id, mtime=utime)
                os.utime(fd, ns=(utime, utime))
                self.say(ev="utimed", id=op_id, mtime=utime)
        finally:
            os.close(fd)
        st = os.stat(self.p(path))
        self.say(ev="done", id=op_id, mtime=st.st_mtime_ns, size=st.st_size)


def main() -> int:
    env, contents, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    writer = Writer(env, contents, random.Random(seed))
    writer.say(ev="ready")
    try:
        while True:
            writer.step()
    except OSError as exc:
        if exc.errno in GONE:
            return 0
        writer.say(ev="error", error=repr(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
