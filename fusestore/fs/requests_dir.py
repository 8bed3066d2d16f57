"""The ``/.requests`` control files: proof of access with plain file I/O.

A client links content it already holds into an environment without
uploading it, using nothing but ``printf``, ``cat`` and a BLAKE3 tool::

    printf 'put %s %s %s\\n' ENV PATH HASH > /.requests/NAME   # ask
    cat /.requests/NAME                                        # read the challenge
    printf '%s\\n' ANSWER > /.requests/NAME                    # answer

Each control file is a small state machine owned by the uid that created
it: ``new`` (nothing asked yet), ``challenged`` (ranges handed out),
then one of ``accepted``, ``mismatch``, ``expired``, ``deleted``, or
``failed`` for an ask that was refused. Lines are parsed when their newline
arrives, so a line may come in several writes; the write that completes a
line gets the line's errno, and the status line tells the same story to a
later ``cat``. A failed ask leaves nothing behind once its file is closed.

Why this shape: every step is one ordinary syscall whose errno is the
answer, so shell scripts need no parsing to detect failure; the state lives
in the daemon's memory (requests are short-lived; a restart forgets them,
never stored data); each uid sees only its own names, so request names
leak nothing between tenants.

The caps on asks, and what an ask may reveal, are the store's
(``store.tenancy``): the first line written to a control file is its ask,
malformed or not, and counts against its uid's caps like any other; past
them the write is EBUSY. With ``requests = "off"`` the adapter mounts no
``/.requests`` at all.

``Requests`` holds the protocol and the per-uid registry; ``RequestsDir``
is the directory as the adapter sees it, a ``virtual.VirtualTree``.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import pyfuse3

from .. import errors
from ..client import wire
from ..store import RequestResponse, Store
from ..store.attributes import Attributes
from ..store.owners import Owner
from .virtual import AttributeChange, VirtualError, VirtualTree, inode_range

log = logging.getLogger(__name__)

REQUESTS_DIR = wire.REQUESTS_DIR.encode()
REQUESTS_INODES = inode_range(0)
REQUESTS_INO = REQUESTS_INODES.start  # the directory; its control files get the numbers after it


@dataclass
class ControlFile:
    ino: int
    uid: int
    gid: int
    name: bytes
    created_ns: int
    created_at: float  # on the store's clock
    status: str = "new"
    reason: str = ""
    response: RequestResponse | None = None
    target: tuple[str, str] | None = None  # (env, path) asked for
    finished_at: float | None = None  # on the store's clock, for cleanup
    handles: int = 0
    pending: bytearray = field(default_factory=bytearray)

    def render(self, now: float) -> bytes:
        """What ``cat`` shows: one item a line."""
        state = self.status
        if state == "challenged" and self.response is not None and now >= self.response.expires:
            state = "expired"
        if state == "challenged" and self.response is not None:
            return wire.render_status(wire.Status(state, self.response.ranges, int(self.response.expires)))
        return wire.render_status(wire.Status(state, error=self.reason))


def check_name(name: bytes) -> None:
    try:
        wire.check_name(name)
    except wire.WireError as exc:
        raise VirtualError(errno.EINVAL, str(exc)) from None


class Requests:
    """Every control file, by inode and by (uid, name)."""

    def __init__(self, store: Store, *, on_linked: Callable[[str, str], None]) -> None:
        self.store = store
        self.clock = store.requests.clock
        self.keep_finished = store.requests.ttl
        self.max_files_per_uid = 4 * store.tenancy.max_requests_per_uid + 64
        self.on_linked = on_linked
        self.by_ino: dict[int, ControlFile] = {}
        self.by_name: dict[tuple[int, bytes], ControlFile] = {}
        self._next_ino = REQUESTS_INO + 1

    # -- the directory -----------------------------------------------------------

    def lookup(self, uid: int, name: bytes) -> ControlFile:
        check_name(name)
        self._purge()
        control = self.by_name.get((uid, name))
        if control is None:
            raise VirtualError(errno.ENOENT, f"no request {name!r}")
        return control

    def listing(self, uid: int) -> list[ControlFile]:
        self._purge()
        return sorted((c for (owner, _), c in self.by_name.items() if owner == uid), key=lambda c: c.name)

    def create(self, uid: int, gid: int, name: bytes) -> ControlFile:
        check_name(name)
        self._purge()
        if (uid, name) in self.by_name:
            raise VirtualError(errno.EEXIST, f"request {name!r} exists")
        # Files that were never asked, or ended recently, are bounded too (memory is the daemon's).
        if sum(1 for owner, _ in self.by_name if owner == uid) >= self.max_files_per_uid:
            raise VirtualError(errno.EBUSY, f"uid {uid} has too many request files; remove some")
        if self._next_ino not in REQUESTS_INODES:
            raise VirtualError(errno.ENOSPC, "no control-file inode numbers left; remount")
        control = ControlFile(self._next_ino, uid, gid, name, time.time_ns(), self.clock())
        self._next_ino += 1
        self.by_ino[control.ino] = control
        self.by_name[(uid, name)] = control
        return control

    def remove(self, uid: int, name: bytes) -> None:
        control = self.lookup(uid, name)
        self._forget(control)

    def closed(self, control: ControlFile) -> None:
        """Last close of a failed ask: its name goes (the client sees ENOENT after)."""
        control.handles -= 1
        if control.handles <= 0 and control.status in ("new", "failed"):
            control.pending.clear()
            if control.status == "failed":
                self._forget(control)

    def _forget(self, control: ControlFile) -> None:
        """The file goes, and with it a request still open: it no longer counts against its owner."""
        if control.status == "challenged" and control.response is not None:
            self.store.requests.drop(control.response.request_id)
        self.by_ino.pop(control.ino, None)
        self.by_name.pop((control.uid, control.name), None)

    def _purge(self) -> None:
        """Answered, expired and never-asked requests disappear a request lifetime after they ended.

        A control file that never received its ask ends when it was created:
        ``touch`` in a loop must not grow the daemon's memory.
        """
        now = self.clock()
        for control in list(self.by_ino.values()):
            ended = control.finished_at
            if control.status == "challenged" and control.response is not None:
                ended = control.response.expires
            elif control.status == "new":
                ended = control.created_at
            if ended is not None and now >= ended + self.keep_finished and control.handles == 0:
                self._forget(control)

    # -- the file ---------------------------------------------------------------------

    def write(self, control: ControlFile, data: bytes) -> int:
        """Buffer ``data``; each complete line is acted on, and its failure is this write's errno."""
        control.pending += data
        while b"\n" in control.pending:
            line, _, rest = bytes(control.pending).partition(b"\n")
            control.pending = bytearray(rest)
            self._line(control, line)
        if len(control.pending) > wire.MAX_LINE:
            control.pending.clear()
            self._malformed(control, f"line longer than {wire.MAX_LINE} bytes")
        return len(data)

    def _line(self, control: ControlFile, raw: bytes) -> None:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self._malformed(control, "the line is not ASCII text")
        if control.status == "new":
            self._ask(control, line)
        elif wire.is_ask(line):
            self._count_ask(control)  # every put line is an ask, even one this file cannot take
            raise VirtualError(errno.EEXIST, f"request {control.name!r} exists; remove it or use another name")
        elif control.status == "challenged":
            self._answer(control, line)
        else:
            raise VirtualError(errno.ETIMEDOUT, f"request {control.name!r} was answered already ({control.status})")

    def _ask(self, control: ControlFile, line: str) -> None:
        """The store checks the caps first, then everything else (a refused ask reveals nothing)."""
        try:
            env, path, hash_hex = wire.parse_ask(line)
        except wire.WireError as exc:
            self._malformed(control, str(exc))
        try:
            control.response = self.store.put_for_environment_request(
                env, path, hash_hex, owner=Owner(control.uid, control.gid)
            )
        except errors.InvalidName as exc:  # ENAMETOOLONG included: the protocol says EINVAL
            self._refuse(control, errno.EINVAL, str(exc))
        except errors.StoreError as exc:
            self._refuse(control, exc.errno, str(exc))
        control.status = "challenged"
        control.target = (env, path)
        log.info("request %s (uid %d): challenged, %s/%s", control.name.decode(), control.uid, env, path)

    def _malformed(self, control: ControlFile, reason: str) -> NoReturn:
        """EINVAL; the first line of a file is its ask even when malformed, and counts as one (EBUSY past the caps)."""
        if control.status == "new":
            self._count_ask(control)
        self._refuse(control, errno.EINVAL, reason)

    def _count_ask(self, control: ControlFile) -> None:
        """An ask the store is not asked about counts against the caps all the same: EBUSY past them."""
        try:
            self.store.requests.count_ask(control.uid)
        except errors.TooManyRequests as exc:
            self._refuse(control, exc.errno, str(exc))

    def _answer(self, control: ControlFile, line: str) -> None:
        try:
            answer_hex = wire.parse_answer(line)
        except wire.WireError as exc:
            raise VirtualError(errno.EINVAL, str(exc)) from None
        assert control.response is not None
        outcome = {errors.ResponseMismatch: "mismatch", errors.RequestExpired: "expired",
                   errors.ResourceDeleted: "deleted"}
        try:
            self.store.proof_of_access_response(control.response.request_id, answer_hex)
        except tuple(outcome) as exc:
            self._finish(control, outcome[type(exc)])
            log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, control.status)
            raise VirtualError(exc.errno, str(exc)) from None
        except errors.StoreError as exc:  # the destination became impossible meanwhile
            self._finish(control, "failed", str(exc))
            log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, exc)
            raise VirtualError(exc.errno, str(exc)) from None
        self._finish(control, "accepted")
        log.info("request %s (uid %d): accepted", control.name.decode(), control.uid)
        assert control.target is not None
        self.on_linked(*control.target)

    def _finish(self, control: ControlFile, status: str, reason: str = "") -> None:
        control.status = status
        control.reason = reason
        control.finished_at = self.clock()

    def _refuse(self, control: ControlFile, code: int, reason: str) -> NoReturn:
        """A failed ask: the file shows why until it is closed, then disappears."""
        if control.status == "new":
            self._finish(control, "failed", reason)
        log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, reason)
        raise VirtualError(code, reason)

    def render(self, control: ControlFile) -> bytes:
        return control.render(self.clock())


class ControlHandle:
    """An open control file: reads show its status, writes feed its lines."""

    def __init__(self, requests: Requests, control: ControlFile) -> None:
        self.requests = requests
        self.control = control
        control.handles += 1

    def read(self, offset: int, size: int) -> bytes:
        return self.requests.render(self.control)[offset:offset + size]

    def write(self, offset: int, data: bytes) -> int:
        return self.requests.write(self.control, data)  # lines are appended, wherever the caller seeks

    def flush(self) -> None:
        pass

    def release(self) -> None:
        self.requests.closed(self.control)


class RequestsDir(VirtualTree):
    """``/.requests`` (mode 1777, root's) and its control files, each seen by its own uid only."""

    names = (REQUESTS_DIR,)
    inodes = REQUESTS_INODES

    def __init__(self, requests: Requests) -> None:
        self.requests = requests
        now = time.time_ns()
        self.directory = Attributes(REQUESTS_INO, stat.S_IFDIR | 0o1777, 0, 0, nlink=2, size=0,
                                    atime_ns=now, mtime_ns=now, ctime_ns=now)

    def attributes(self, control: ControlFile) -> Attributes:
        return Attributes(control.ino, stat.S_IFREG | 0o600, control.uid, control.gid, nlink=1,
                          size=len(self.requests.render(control)), atime_ns=control.created_ns,
                          mtime_ns=control.created_ns, ctime_ns=control.created_ns)

    def _control(self, ino: int) -> ControlFile:
        control = self.requests.by_ino.get(ino)
        if control is None:
            raise VirtualError(errno.ENOENT, f"no control file with inode {ino}")
        return control

    def lookup(self, parent: int, name: bytes, caller: Owner) -> Attributes:
        if parent == REQUESTS_INO:
            return self.attributes(self.requests.lookup(caller.uid, name))
        if parent == pyfuse3.ROOT_INODE and name == REQUESTS_DIR:
            return self.directory
        raise VirtualError(errno.ENOTDIR if parent in self.requests.by_ino else errno.ENOENT)

    def getattr(self, ino: int, caller: Owner) -> Attributes:
        if ino == REQUESTS_INO:
            return self.directory
        return self.attributes(self._control(ino))

    def listing(self, ino: int, caller: Owner) -> list[tuple[bytes, Attributes]]:
        if ino != REQUESTS_INO:
            self._control(ino)
            raise VirtualError(errno.ENOTDIR)
        return [(control.name, self.attributes(control)) for control in self.requests.listing(caller.uid)]

    def open(self, ino: int, flags: int, caller: Owner) -> ControlHandle:
        if ino == REQUESTS_INO:
            raise VirtualError(errno.EPERM)
        control = self._control(ino)
        if control.uid != caller.uid:  # ENOENT, not EACCES: another uid's request names must not show as existing
            raise VirtualError(errno.ENOENT, "another uid's request")
        return ControlHandle(self.requests, control)

    def create(self, parent: int, name: bytes, caller: Owner) -> tuple[ControlHandle, Attributes]:
        if parent != REQUESTS_INO:
            raise VirtualError(errno.EPERM)
        control = self.requests.create(caller.uid, caller.gid, name)
        return ControlHandle(self.requests, control), self.attributes(control)

    def unlink(self, parent: int, name: bytes, caller: Owner) -> None:
        if parent != REQUESTS_INO:
            raise VirtualError(errno.EPERM)
        self.requests.remove(caller.uid, name)

    def setattr(self, ino: int, change: AttributeChange, caller: Owner) -> Attributes:
        """Truncation is how shells open a control file, and times are let be; the rest is fixed."""
        if ino == REQUESTS_INO or change.mode is not None or change.uid is not None or change.gid is not None:
            raise VirtualError(errno.EPERM)
        return self.attributes(self._control(ino))
