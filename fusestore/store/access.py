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
and nothing stored depends on them. Their number is bounded so that a client
cannot grow the daemon's memory without limit.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .. import errors
from ..digests import Range
from .owners import Owner


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
    """Open requests by id, with expiry on an injected clock and a bound on their number."""

    def __init__(self, clock: Callable[[], float], ttl: float, max_open: int) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_open = max_open
        self._open: dict[str, PendingRequest] = {}
        self._lock = threading.Lock()

    def add(
        self, destination: tuple[bytes, ...], digest: bytes, answer: bytes, ranges: list[Range], owner: Owner | None
    ) -> RequestResponse:
        with self._lock:
            now = self.clock()
            self._purge(now)
            if len(self._open) >= self.max_open:
                raise errors.TooManyRequests(f"{len(self._open)} proof-of-access requests are open already")
            request_id = secrets.token_hex(16)
            expires = now + self.ttl
            self._open[request_id] = PendingRequest(request_id, destination, digest, answer, expires, owner)
            return RequestResponse(request_id, ranges, expires)

    def take(self, request_id: str, answer_hex: str) -> PendingRequest:
        """Consume a request with its answer: RequestExpired, ResponseMismatch, or the request."""
        with self._lock:
            request = self._open.pop(request_id, None)
        if request is None or self.clock() >= request.expires:
            raise errors.RequestExpired(f"request {request_id!r} is unknown, expired or already answered")
        try:
            answer = bytes.fromhex(answer_hex)
        except (ValueError, TypeError):
            answer = b""
        if not hmac.compare_digest(answer, request.answer):
            raise errors.ResponseMismatch(f"wrong answer to request {request_id}")
        return request

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._open)

    def _purge(self, now: float) -> None:
        # Every request lives for the same ttl, so insertion order is expiry order.
        while self._open:
            request_id, request = next(iter(self._open.items()))
            if now < request.expires:
                return
            del self._open[request_id]
