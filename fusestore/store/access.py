"""Proof of access: link content one already holds without uploading it.

A client that claims to hold the content with hash H asks to place it at a
path. The store answers with ``challenge_ranges`` random byte ranges of the
stored blob and remembers the BLAKE3 of those bytes, concatenated in order.
The client must send back the same digest, computed from its own copy,
before the request expires. Answers are compared in constant time and each
request takes one answer only, right or wrong, so guessing costs a new
request every time.

Why many ranges: with the seed's single range a client holding a fraction f
of the content passes with probability about f; with 32 independent ranges
it is about f**32. Each range is between min(512, ceil(n/2)) and
min(2048, n) bytes, so the whole challenge reads at most 64 KiB of the blob.
Empty content has no ranges; its answer is the BLAKE3 of no bytes.

Requests live in memory only: they are short-lived, a restart forgets them,
and nothing stored depends on them. Their number is bounded, store-wide so
that clients cannot grow the daemon's memory without limit, and per uid
with a rate of asks (``tenancy``), so that one user can neither crowd the
others out nor probe the store or guess answers fast. The caps are checked
before anything is looked up, so a refused ask reveals nothing.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import errors
from ..digests import Range
from .owners import Owner
from .tenancy import RATE_WINDOW, AskWindow, Tenancy


@dataclass(frozen=True)
class RequestResponse:
    """What the client needs to answer: which ranges, and until when."""

    request_id: str
    ranges: list[Range]
    expires: float


@dataclass(frozen=True)
class PendingRequest:
    request_id: str
    destination: tuple[bytes, ...]  # path components from the root, namespace included
    digest: bytes
    answer: bytes
    expires: float
    owner: Owner | None  # who asked: owns what the link creates, and must be allowed to write there
    uid: int  # whose caps it counts against


def choose_ranges(length: int, count: int, randbelow: Callable[[int], int]) -> list[Range]:
    if length == 0:
        return []
    shortest = min(512, math.ceil(length / 2))
    longest = min(2048, length)
    ranges = []
    for _ in range(count):
        size = shortest + randbelow(longest - shortest + 1)
        ranges.append((randbelow(length - size + 1), size))
    return ranges


class RequestTable:
    """Open requests by id: expiry on an injected clock, and the caps of ``tenancy`` checked before each ask.

    An ask goes through ``admission(uid)`` before the store looks anything
    up: the caps refuse it (TooManyRequests, EBUSY) or reserve its place
    and count it against the uid's rate, whatever its outcome then. Only a
    challenge (``Admission.open``) keeps the place; a failed ask gives it
    back when its ``with`` block ends.
    """

    def __init__(self, clock: Callable[[], float], ttl: float, max_open: int, tenancy: Tenancy) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_open = max_open
        self.max_per_uid = tenancy.max_requests_per_uid
        self._open: dict[str, PendingRequest] = {}
        self._places: Counter[int] = Counter()  # uid -> open requests and asks in flight
        self._asks = AskWindow(tenancy.request_rate)
        self._lock = threading.Lock()

    @contextmanager
    def admission(self, uid: int) -> Iterator["Admission"]:
        """Admit one ask by ``uid`` (TooManyRequests when a cap refuses it); its place goes unless opened."""
        with self._lock:
            now = self.clock()
            self._purge(now)
            if sum(self._places.values()) >= self.max_open:
                raise errors.TooManyRequests(f"{len(self._open)} proof-of-access requests are open already")
            if self._places[uid] >= self.max_per_uid:
                raise errors.TooManyRequests(f"uid {uid} has {self.max_per_uid} requests open already")
            if not self._asks.allows(uid, now):
                raise errors.TooManyRequests(f"uid {uid} asked {self._asks.limit} times in the last "
                                             f"{RATE_WINDOW:.0f} seconds; wait")
            self._asks.count(uid, now)
            self._places[uid] += 1
        admission = Admission(self, uid)
        try:
            yield admission
        finally:
            if not admission.opened:
                with self._lock:
                    self._give_back(uid)

    def count_ask(self, uid: int) -> None:
        """An ask refused before the store was asked (a malformed line): counted, or TooManyRequests."""
        with self.admission(uid):
            pass

    def _add(self, admission: "Admission", destination: tuple[bytes, ...], digest: bytes, answer: bytes,
             ranges: list[Range], owner: Owner | None) -> RequestResponse:
        with self._lock:
            request_id = secrets.token_hex(16)
            expires = self.clock() + self.ttl
            self._open[request_id] = PendingRequest(request_id, destination, digest, answer, expires, owner,
                                                    admission.uid)
            return RequestResponse(request_id, ranges, expires)

    def take(self, request_id: str, answer_hex: str) -> PendingRequest:
        """Consume a request with its answer: RequestExpired, ResponseMismatch, or the request."""
        with self._lock:
            request = self._open.pop(request_id, None)
            if request is not None:
                self._give_back(request.uid)
        if request is None or self.clock() >= request.expires:
            raise errors.RequestExpired(f"request {request_id!r} is unknown, expired or already answered")
        try:
            answer = bytes.fromhex(answer_hex)
        except (ValueError, TypeError):
            answer = b""
        if not hmac.compare_digest(answer, request.answer):
            raise errors.ResponseMismatch(f"wrong answer to request {request_id}")
        return request

    def drop(self, request_id: str) -> None:
        """Forget a request nobody will answer (its control file was removed); unknown ids are ignored."""
        with self._lock:
            request = self._open.pop(request_id, None)
            if request is not None:
                self._give_back(request.uid)

    def open_for(self, uid: int) -> int:
        """How many requests of ``uid`` are open (challenged, not answered, expired or dropped)."""
        with self._lock:
            self._purge(self.clock())
            return sum(1 for request in self._open.values() if request.uid == uid)

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._open)

    def _give_back(self, uid: int) -> None:
        self._places[uid] -= 1
        if self._places[uid] <= 0:
            del self._places[uid]

    def _purge(self, now: float) -> None:
        # Every request lives for the same ttl, so insertion order is expiry order.
        while self._open:
            request_id, request = next(iter(self._open.items()))
            if now < request.expires:
                return
            del self._open[request_id]
            self._give_back(request.uid)


class Admission:
    """One admitted ask: ``open`` turns it into a request that keeps its place until it ends."""

    def __init__(self, table: RequestTable, uid: int) -> None:
        self.table = table
        self.uid = uid
        self.opened = False

    def open(self, destination: tuple[bytes, ...], digest: bytes, answer: bytes, ranges: list[Range],
             owner: Owner | None) -> RequestResponse:
        if self.opened:
            raise RuntimeError("an admission opens one request")
        response = self.table._add(self, destination, digest, answer, ranges, owner)
        self.opened = True
        return response
