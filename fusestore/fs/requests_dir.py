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

This module holds the protocol and the per-uid registry; ``fs`` routes the
virtual inodes here and turns ``ControlError`` into errnos.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import errors
from ..client import wire
from ..store import RequestResponse, Store
from ..store.owners import Owner

log = logging.getLogger(__name__)

REQUESTS_DIR = wire.REQUESTS_DIR.encode()
REQUESTS_INO = 1 << 62  # virtual inodes live far above any catalog inode number


class ControlError(Exception):
    """A refused control-file operation, with its errno and a readable reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code


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
        raise ControlError(errno.EINVAL, str(exc)) from None


class Requests:
    """Every control file, by inode and by (uid, name)."""

    def __init__(self, store: Store, *, max_per_user: int, on_linked: Callable[[str, str], None]) -> None:
        self.store = store
        self.clock = store.requests.clock
        self.keep_finished = store.requests.ttl
        self.max_per_user = max_per_user
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
            raise ControlError(errno.ENOENT, f"no request {name!r}")
        return control

    def listing(self, uid: int) -> list[ControlFile]:
        self._purge()
        return sorted((c for (owner, _), c in self.by_name.items() if owner == uid), key=lambda c: c.name)

    def create(self, uid: int, gid: int, name: bytes) -> ControlFile:
        check_name(name)
        self._purge()
        if (uid, name) in self.by_name:
            raise ControlError(errno.EEXIST, f"request {name!r} exists")
        # Files that were never asked, or ended recently, are bounded too (memory is the daemon's).
        if sum(1 for owner, _ in self.by_name if owner == uid) >= 4 * self.max_per_user + 64:
            raise ControlError(errno.EBUSY, f"uid {uid} has too many request files; remove some")
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
        self.by_ino.pop(control.ino, None)
        self.by_name.pop((control.uid, control.name), None)

    def _is_open(self, control: ControlFile) -> bool:
        """Challenged and not expired (an expired request no longer counts against its owner)."""
        return (control.status == "challenged" and control.response is not None
                and self.clock() < control.response.expires)

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
            self._refuse(control, errno.EINVAL, f"line longer than {wire.MAX_LINE} bytes")
        return len(data)

    def _line(self, control: ControlFile, raw: bytes) -> None:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self._refuse(control, errno.EINVAL, "the line is not ASCII text")
        if control.status == "new":
            self._ask(control, line)
        elif wire.is_ask(line):
            raise ControlError(errno.EEXIST, f"request {control.name!r} exists; remove it or use another name")
        elif control.status == "challenged":
            self._answer(control, line)
        else:
            raise ControlError(errno.ETIMEDOUT, f"request {control.name!r} was answered already ({control.status})")

    def _ask(self, control: ControlFile, line: str) -> None:
        try:
            env, path, hash_hex = wire.parse_ask(line)
        except wire.WireError as exc:
            self._refuse(control, errno.EINVAL, str(exc))
        open_requests = sum(1 for c in self.by_ino.values() if c.uid == control.uid and self._is_open(c))
        if open_requests >= self.max_per_user:
            self._refuse(control, errno.EBUSY, f"{open_requests} requests are open already")
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

    def _answer(self, control: ControlFile, line: str) -> None:
        try:
            answer_hex = wire.parse_answer(line)
        except wire.WireError as exc:
            raise ControlError(errno.EINVAL, str(exc)) from None
        assert control.response is not None
        outcome = {errors.ResponseMismatch: "mismatch", errors.RequestExpired: "expired",
                   errors.ResourceDeleted: "deleted"}
        try:
            self.store.proof_of_access_response(control.response.request_id, answer_hex)
        except tuple(outcome) as exc:
            self._finish(control, outcome[type(exc)])
            log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, control.status)
            raise ControlError(exc.errno, str(exc)) from None
        except errors.StoreError as exc:  # the destination became impossible meanwhile
            self._finish(control, "failed", str(exc))
            log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, exc)
            raise ControlError(exc.errno, str(exc)) from None
        self._finish(control, "accepted")
        log.info("request %s (uid %d): accepted", control.name.decode(), control.uid)
        assert control.target is not None
        self.on_linked(*control.target)

    def _finish(self, control: ControlFile, status: str, reason: str = "") -> None:
        control.status = status
        control.reason = reason
        control.finished_at = self.clock()

    def _refuse(self, control: ControlFile, code: int, reason: str) -> None:
        """A failed ask: the file shows why until it is closed, then disappears."""
        if control.status == "new":
            self._finish(control, "failed", reason)
        log.warning("request %s (uid %d): %s", control.name.decode(), control.uid, reason)
        raise ControlError(code, reason)

    def render(self, control: ControlFile) -> bytes:
        return control.render(self.clock())
