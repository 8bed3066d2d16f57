"""Link content you already have into a mounted store, without uploading it.

A client that holds a file whose content the store already has (someone
else uploaded the same bytes) need not send those bytes again. It proves it
holds them through the mount's ``/.requests`` control files, with plain file
I/O and no other channel (the lines are ``fusestore.client.wire``'s):

1. **ask**: write ``put ENV PATH HASH`` to ``MOUNT/.requests/NAME``, where
   HASH is the BLAKE3 of the whole local file and PATH is percent-encoded.
   The write's errno is the answer: ENOENT when the store lacks the content
   (an upload is needed), EACCES when the caller may not write PATH, ...
2. **challenge**: read the same file: ``status challenged``, then
   ``range OFFSET LENGTH`` lines (random ranges of the stored content) and
   ``expires UNIX_SECONDS``.
3. **answer**: write the BLAKE3 of those ranges of the local file,
   concatenated in order. A right answer links the content at PATH (no
   byte is written to the pool); a wrong one fails with EACCES, a late one
   with ETIMEDOUT. Each request takes one answer.

Finally the request file is removed. Knowing the hash alone is not enough:
the ranges are random and short-lived, so only a holder of the bytes
answers. The local file is hashed streaming and read through one open
descriptor, so it may be of any size and a concurrent rename of it cannot
mix two contents into one proof.

``link`` returns an ``Outcome`` rather than raising, and each outcome has
the exit status the ``fusestore link`` command and ``scripts/link.sh`` use:
0 linked (or copied), 3 the store does not hold the content, 4 refused,
1 any other error (2, bad usage, is argparse's).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import digests
from . import wire

Kind = Literal["linked", "copied", "missing", "refused", "failed"]
EXIT_CODES: dict[str, int] = {"linked": 0, "copied": 0, "missing": 3, "refused": 4, "failed": 1}

EXIT_CODES_HELP = """\
exit status:
  0  linked (or copied, with --upload-if-missing)
  1  any other error (not a fusestore mount, requests off on the mount, unreadable file, too many
     requests, ...)
  2  bad usage
  3  the store does not hold that content: upload it (or use --upload-if-missing)
  4  refused: wrong answer, request expired, or you may not write PATH
"""


@dataclass(frozen=True)
class Outcome:
    """What ``link`` did: ``kind``, a one-line ``message``, and the errno behind a failure."""

    kind: Kind
    message: str
    errno: int | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _Failure(Exception):
    def __init__(self, kind: Kind, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.outcome = Outcome(kind, message, code)


def hash_fd(fd: int) -> str:
    """The BLAKE3 (hex) of everything readable from ``fd``."""
    return digests.hash_fd(fd)[0].hex()


def answer_for(fd: int, ranges: list[digests.Range]) -> str:
    """The BLAKE3 (hex) of the listed ranges of ``fd``, concatenated in order."""
    try:
        return digests.hash_ranges(digests.fd_reader(fd), ranges).hex()
    except EOFError as exc:
        raise _Failure("refused", f"the local file is shorter than the challenge: {exc}") from None


def _send(fd: int, line: str) -> None:
    """One line to the request file; its errno (OSError) is the daemon's answer."""
    data = (line + "\n").encode("ascii")
    if os.write(fd, data) != len(data):
        raise OSError(errno.EIO, "short write to the request file")


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.pread(fd, 65536, len(data)):
        data += chunk
    return data.decode("ascii", "replace")


def _ask_error(exc: OSError, target: str, hash_hex: str) -> _Failure:
    if exc.errno == errno.ENOENT:
        return _Failure("missing", f"the store does not hold the content of {target} "
                                   f"(blake3 {hash_hex}): upload it, or use --upload-if-missing", exc.errno)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _Failure("refused", f"refused: you may not write {target}", exc.errno)
    reasons = {errno.EAGAIN: "that content is still being uploaded; try again shortly",
               errno.EBUSY: "too many open requests; try again shortly",
               errno.EINVAL: "the store rejected the request (is ENV a lowercase UUID and PATH relative?)"}
    code = exc.errno or errno.EIO
    return _Failure("failed", f"{target}: {reasons.get(code, os.strerror(code))}", exc.errno)


def _answer_error(exc: OSError, target: str) -> _Failure:
    if exc.errno == errno.EACCES:
        return _Failure("refused", f"refused: wrong answer for {target} (the local file differs from the "
                                   "store's content)", exc.errno)
    if exc.errno == errno.ETIMEDOUT:
        return _Failure("refused", f"refused: the request for {target} expired before the answer", exc.errno)
    if exc.errno == errno.ESTALE:
        return _Failure("missing", f"the content was deleted from the store during the exchange for {target}: "
                                   "upload it, or use --upload-if-missing", exc.errno)
    return _Failure("failed", f"{target}: {os.strerror(exc.errno or errno.EIO)}", exc.errno)


def _exchange(requests: Path, env: str, path: str, fd: int, hash_hex: str) -> None:
    """Ask, read the challenge, answer: returns when linked, raises _Failure otherwise."""
    target = f"{env}/{path}"
    while True:
        request = requests / f"link-{secrets.token_hex(8)}"  # always a valid request name
        try:
            control = os.open(request, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue  # another run picked the same name: pick again
    try:
        try:
            _send(control, wire.ask_line(env, path, hash_hex))  # 1. ask
        except OSError as exc:
            raise _ask_error(exc, target, hash_hex) from None
        status = wire.parse_status(_read_all(control))  # 2. the challenge
        if status.state == "expired":
            raise _Failure("refused", f"refused: the request for {target} expired before the answer", errno.ETIMEDOUT)
        if status.state != "challenged":
            raise _Failure("failed", f"{target}: unexpected request status {status.state!r}")
        try:
            _send(control, answer_for(fd, status.ranges))  # 3. answer
        except OSError as exc:
            raise _answer_error(exc, target) from None
    finally:
        os.close(control)
        try:
            os.unlink(request)  # a failed ask is gone already once closed
        except FileNotFoundError:
            pass


def _copy(mountpoint: Path, env: str, path: str, fd: int) -> int:
    """Upload: stream the file to MOUNT/ENV/PATH, creating parent directories. Returns its size."""
    destination = mountpoint / env / path
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(fd, "rb", closefd=False) as source, open(destination, "wb") as target:
        source.seek(0)
        shutil.copyfileobj(source, target, digests.IO_BUFFER)
        return target.tell()


def link(
    mountpoint: str | os.PathLike[str], env: str, path: str, localfile: str | os.PathLike[str],
    *, upload_if_missing: bool = False,
) -> Outcome:
    """Link the content of ``localfile`` at ``ENV/PATH`` in the mount, proving it is held.

    With ``upload_if_missing``, content the store does not hold is copied in
    instead (outcome ``copied``). Never raises for an I/O error: the outcome says.
    """
    mountpoint = Path(mountpoint)
    target = f"{env}/{path}"
    requests = mountpoint / wire.REQUESTS_DIR
    requests_off = not requests.is_dir()
    if requests_off and not (mountpoint / wire.STATS_FILE).is_file():
        return Outcome("failed", f"{mountpoint} is not a fusestore mount (neither .requests nor .stats)", errno.ENOENT)
    try:
        fd = os.open(localfile, os.O_RDONLY)
    except OSError as exc:
        return Outcome("failed", f"cannot read {localfile}: {exc.strerror}", exc.errno)
    try:
        hash_hex = hash_fd(fd)
        try:
            if requests_off:
                raise _Failure("failed", f"requests are off on {mountpoint} (mounted with --requests-off): "
                                         "nothing can be linked without uploading it", errno.ENOENT)
            _exchange(requests, env, path, fd, hash_hex)
        except _Failure as failure:
            if not upload_if_missing or not (requests_off or failure.outcome.kind == "missing"):
                return failure.outcome
            size = _copy(mountpoint, env, path, fd)
            why = "requests are off" if requests_off else "the store did not hold them"
            return Outcome("copied", f"copied {localfile} to {target} ({size} bytes; {why})")
        return Outcome("linked", f"linked {localfile} as {target} (blake3 {hash_hex}, no upload)")
    except OSError as exc:
        return Outcome("failed", f"{target}: {exc.strerror or exc}", exc.errno)
    finally:
        os.close(fd)
