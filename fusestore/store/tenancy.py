"""The rules between tenants of one store: what a user may ask, and what it may learn of the others.

One mount may serve several users, and deduplication is a side channel:
whoever can tell whether some content is already stored learns that
somebody has it. Proof of access (``access``) makes knowing a hash useless
for getting the bytes, but the ask itself still tells: the store answers
an unknown hash with ENOENT and a known one with a challenge. Everything a
mount lets one user learn about the others is decided here, so that the
filesystem adapter and the library apply the same rules and tests check
them without a mount:

- ``Tenancy.requests``: ``on`` (any content can be asked for), ``same-owner``
  (an ask finds only content that a committed file of the caller's own
  environments holds, so the answer says nothing about anyone else) or
  ``off`` (no proof of access at all).
- Caps per uid, root included: at most ``max_requests_per_uid`` requests
  open at once, and at most ``request_rate`` asks in any ``RATE_WINDOW``
  seconds (``AskWindow``; an exact sliding window rather than a token
  bucket, so the promise is the one the flag states). They bound how fast
  one user can probe the store, or guess answers, without slowing the
  others: each uid has its own budget. The store-wide bound on open
  requests (``RequestTable.max_open``) still protects the daemon's memory.
- ``/.stats``: the store-wide totals are everyone's unless requests are
  restricted, since they reveal dedup hits too (a file written that does
  not raise ``stored_bytes`` was already stored); then only root sees them.
  Each environment's figure is shown to the owner of its directory (and root) only.

What stays observable (statfs free space, how long a commit takes) is
listed in the README; those signals are coarser and not decided here.
"""

from __future__ import annotations

import stat
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import names

if TYPE_CHECKING:  # the catalog loads LMDB, which reading back /.stats (stats.Stats) must not need
    from ..catalog import Inode, Txn

RequestMode = Literal["on", "same-owner", "off"]
REQUEST_MODES: tuple[RequestMode, ...] = ("on", "same-owner", "off")
RATE_WINDOW = 60.0  # seconds: request_rate is per window
ROOT_UID = 0


@dataclass(frozen=True)
class Tenancy:
    """The mount's rules between users (``fusestore mount`` flags; the defaults are the flags' defaults)."""

    max_requests_per_uid: int = 64
    request_rate: int = 600
    requests: RequestMode = "on"

    def __post_init__(self) -> None:
        if self.max_requests_per_uid < 1 or self.request_rate < 1:
            raise ValueError("max_requests_per_uid and request_rate must be at least 1")
        if self.requests not in REQUEST_MODES:
            raise ValueError(f"requests must be one of {REQUEST_MODES}, not {self.requests!r}")

    def shows_totals(self, uid: int) -> bool:
        """Whether ``uid`` sees the store-wide totals of ``/.stats``."""
        return self.requests == "on" or uid == ROOT_UID


DEFAULT_TENANCY = Tenancy()


def sees_environment(env_dir: Inode, uid: int) -> bool:
    """Whether ``uid`` sees an environment's own figures: the owner of its directory, and root."""
    return uid == ROOT_UID or env_dir.uid == uid


def owned_environments(tx: Txn, uid: int) -> set[int]:
    """The inode numbers (their spaces) of the environments whose directory ``uid`` owns."""
    from ..catalog import ROOT_INO

    owned = set()
    for name, ino in tx.entries(ROOT_INO):
        if names.is_environment(name):
            node = tx.inode(ino)
            if node is not None and stat.S_ISDIR(node.mode) and node.uid == uid:
                owned.add(ino)
    return owned


def holds_own_copy(tx: Txn, digest: bytes, uid: int) -> bool:
    """Whether a committed file named in an environment ``uid`` owns has the content ``digest``.

    The test of ``requests = "same-owner"``: it scans every inode whatever
    the answer, so that a refusal takes as long whether or not anyone else
    holds the content.
    """
    owned = owned_environments(tx, uid)
    found = False
    for node in tx.inodes_with_content(digest):
        found = found or (node.space in owned and node.nlink > 0)
    return found


class AskWindow:
    """The asks of each uid in the last ``RATE_WINDOW`` seconds, on the caller's clock (not thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._asks: dict[int, deque[float]] = {}

    def allows(self, uid: int, now: float) -> bool:
        """Whether ``uid`` may ask once more now (nothing is counted)."""
        recent = self._asks.get(uid)
        if recent is None:
            return True
        while recent and now - recent[0] >= RATE_WINDOW:
            recent.popleft()
        return len(recent) < self.limit

    def count(self, uid: int, now: float) -> None:
        """One ask by ``uid`` now. Uids with no recent ask are forgotten, so idle ones cost no memory."""
        if len(self._asks) > 64 and uid not in self._asks:
            for idle in [u for u, recent in self._asks.items() if not recent or now - recent[-1] >= RATE_WINDOW]:
                del self._asks[idle]
        self._asks.setdefault(uid, deque()).append(now)
