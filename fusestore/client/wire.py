"""The ``/.requests`` wire format, written once for the daemon and its clients.

A request file speaks in ASCII lines:

- the ask, written by the client: ``put ENV PATH HASH``, single spaces,
  PATH percent-encoded outside ``A-Z a-z 0-9 . _ ~ / -`` (so any byte of a
  POSIX name can be asked for), HASH 64 hex digits;
- the status, read back: ``status STATE``, then for a challenge one
  ``range OFFSET LENGTH`` line per range and ``expires UNIX_SECONDS``, or for
  a failure ``error REASON``;
- the answer, written by the client: the BLAKE3 (64 hex digits) of the
  challenged ranges of its own copy, concatenated in order.

Request names are 1 to 64 of ``A-Z a-z 0-9 . _ -``; a line longer than
``MAX_LINE`` bytes is refused.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from ..digests import Range

REQUESTS_DIR = ".requests"
STATS_FILE = ".stats"  # every mount has it: a mount without REQUESTS_DIR has requests off
MAX_LINE = 8192
NAME_PATTERN = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_ENCODED_PATH = re.compile(r"(?:[A-Za-z0-9._~/-]|%[0-9A-Fa-f]{2})+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

State = Literal["new", "challenged", "accepted", "mismatch", "expired", "deleted", "failed"]


class WireError(ValueError):
    """A line or name that does not follow the wire format (the daemon answers EINVAL)."""


@dataclass(frozen=True)
class Status:
    """What a request file shows."""

    state: str
    ranges: list[Range] = field(default_factory=list)
    expires: int | None = None
    error: str = ""


def check_name(name: bytes) -> None:
    if not NAME_PATTERN.fullmatch(name) or name in (b".", b".."):
        raise WireError(f"request name {name!r}: use 1 to 64 of A-Z a-z 0-9 . _ -")


def quote_path(path: str) -> str:
    """PATH as the ask wants it: every byte outside A-Za-z0-9._~/- as %XX."""
    return urllib.parse.quote(os.fsencode(path), safe="/~")  # quote() always keeps A-Za-z0-9 and _.-~


def ask_line(env: str, path: str, hash_hex: str) -> str:
    return f"put {env} {quote_path(path)} {hash_hex}"


def parse_ask(line: str) -> tuple[str, str, str]:
    """(env, path, lowercase hash) of an ask line."""
    fields = line.split(" ")
    if len(fields) != 4 or fields[0] != "put":
        raise WireError("expected: put ENV PATH HASH")
    _, env, quoted, hash_hex = fields
    if not _HEX64.fullmatch(hash_hex):
        raise WireError("HASH must be 64 hex digits")
    if not _ENCODED_PATH.fullmatch(quoted):
        raise WireError("PATH must be percent-encoded outside A-Z a-z 0-9 . _ ~ / -")
    path = urllib.parse.unquote_to_bytes(quoted).decode("utf-8", "surrogateescape")
    return env, path, hash_hex.lower()


def is_ask(line: str) -> bool:
    return line.startswith("put ")


def parse_answer(line: str) -> str:
    """The lowercase hex digest of an answer line."""
    if not _HEX64.fullmatch(line):
        raise WireError("the answer must be 64 hex digits")
    return line.lower()


def render_status(status: Status) -> bytes:
    lines = [f"status {status.state}"]
    lines += [f"range {offset} {length}" for offset, length in status.ranges]
    if status.expires is not None:
        lines.append(f"expires {status.expires}")
    if status.error:
        lines.append(f"error {_printable(status.error)}")
    return ("\n".join(lines) + "\n").encode()


def _printable(text: str) -> str:
    """``text`` as one line of printable ASCII: a reason may quote a name, whose bytes can be anything."""
    return "".join(char if " " <= char <= "~" else char.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for char in text)


def parse_status(text: str) -> Status:
    state, ranges, expires, error = "", [], None, ""
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "status":
            state = rest
        elif key == "range":
            offset, length = rest.split()
            ranges.append((int(offset), int(length)))
        elif key == "expires":
            expires = int(rest)
        elif key == "error":
            error = rest
    return Status(state, ranges, expires, error)
